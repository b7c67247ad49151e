"""Keyed agents in one process: activation, state, order per key, retries, dead letters,
and the errors that say what to do (docs/concepts.md#keyed-agents)."""

from __future__ import annotations

import urllib.request
from typing import Any

import attrs
import pytest
import redis
import trio

from ailf import (
    Agent,
    AskTimeout,
    ConfigError,
    Message,
    RedisConfig,
    RedisError,
    RedisServer,
    RemoteError,
    Runtime,
)
from ailf.runtime._partitions import fair_share, partition_of


@attrs.define
class Chat:
    turns: int = 0
    history: list[str] = attrs.Factory(list)


class Assistant(Agent):
    state_type = Chat
    passivate_after = 0.3
    events: list[tuple[str, str | None]] = []

    async def on_start(self) -> None:
        Assistant.events.append(("start", self.key))

    async def on_message(self, message: Message[Any]) -> Any:
        text = message.body["text"]
        if text == "boom":
            self.state.turns += 100  # undone: the handler raises
            raise ValueError("boom")
        self.state.turns += 1
        self.state.history.append(text)
        return {"key": self.key, "turns": self.state.turns}

    async def on_stop(self) -> None:
        Assistant.events.append(("stop", self.key))


def raw(config: RedisConfig) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=config.port, decode_responses=True)


async def test_ask_send_and_state_per_key(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="k") as runtime:
        await runtime.spawn(Assistant, name="assistant", keyed=True, replicas=4, partitions=8)
        assert await runtime.ask("assistant", {"text": "hi"}, key="user-42") == {
            "key": "user-42",
            "turns": 1,
        }
        for text in ("a", "b", "c"):
            await runtime.send("assistant", {"text": text}, key="user-7")
        reply = await runtime.ask("assistant", {"text": "d"}, key="user-7")
        assert reply == {"key": "user-7", "turns": 4}
        await runtime.wait_idle(timeout=10)
        assert await runtime.state("assistant", "user-7") == {
            "turns": 4,
            "history": ["a", "b", "c", "d"],
        }
        assert await runtime.state("assistant", "user-42", Chat) == Chat(1, ["hi"])
        assert await runtime.state("assistant", "nobody") is None


async def test_messages_of_one_key_run_in_order_and_keys_run_side_by_side(
    redis_config: RedisConfig,
) -> None:
    running: dict[str, int] = {}
    most = 0
    seen: dict[str, list[int]] = {}

    class Slow(Agent):
        async def on_message(self, message: Message[Any]) -> None:
            nonlocal most
            assert self.key is not None
            running[self.key] = running.get(self.key, 0) + 1
            assert running[self.key] == 1, "two handlers of one key at once"
            most = max(most, sum(running.values()))
            await trio.sleep(0.002)
            seen.setdefault(self.key, []).append(message.body)
            running[self.key] -= 1

    async with Runtime(redis_config, namespace="k") as runtime:
        await runtime.spawn(Slow, keyed=True, replicas=8, partitions=4)
        for n in range(40):
            for key in ("a", "b", "c", "d", "e", "f"):
                await runtime.send("Slow", n, key=key)
        async with Runtime(redis_config, namespace="k") as onlooker:  # knows no agent
            await onlooker.wait_idle(["Slow"], timeout=20)
        assert seen == {key: list(range(40)) for key in "abcdef"}
    assert most > 1


async def test_keys_are_activated_on_demand_and_passivated_when_idle(
    redis_config: RedisConfig,
) -> None:
    Assistant.events = []
    async with Runtime(redis_config, namespace="k", metrics_port=0) as runtime:
        await runtime.spawn(Assistant, name="assistant", keyed=True)
        await runtime.ask("assistant", {"text": "one"}, key="x")
        await runtime.ask("assistant", {"text": "two"}, key="x")
        assert Assistant.events == [("start", "x")]
        assert runtime.statistics()["assistant"].active_keys == 1
        assert runtime.metrics_url is not None
        page = await trio.to_thread.run_sync(urllib.request.urlopen, runtime.metrics_url)
        assert 'ailf_active_keys{agent="assistant",namespace="k"} 1.0' in page.read().decode()
        with trio.fail_after(5):
            while ("stop", "x") not in Assistant.events:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert runtime.statistics()["assistant"].active_keys == 0
        reply = await runtime.ask("assistant", {"text": "three"}, key="x")
        assert reply["turns"] == 3  # the state came back from Redis
        assert Assistant.events == [("start", "x"), ("stop", "x"), ("start", "x")]
    assert Assistant.events[-1] == ("stop", "x")


async def test_a_failed_handler_is_retried_with_the_state_from_before(
    redis_config: RedisConfig,
) -> None:
    class Flaky(Agent):
        state_type = Chat
        failures = 0

        async def on_message(self, message: Message[Any]) -> None:
            self.state.turns += 1
            self.state.history.append(message.body)
            if message.body == "flaky" and Flaky.failures < 2:
                Flaky.failures += 1
                raise RuntimeError("not yet")

    async with Runtime(redis_config, namespace="k", retry_backoff=0.01) as runtime:
        await runtime.spawn(Flaky, keyed=True)
        for body in ("first", "flaky", "last"):
            await runtime.send("Flaky", body, key="k1")
        await runtime.wait_idle(timeout=10)
        assert await runtime.state("Flaky", "k1") == {
            "turns": 3,
            "history": ["first", "flaky", "last"],
        }
        assert runtime.statistics()["Flaky"].retried == 2


async def test_a_message_failing_every_time_is_dead_lettered_with_its_key(
    redis_config: RedisConfig,
) -> None:
    async with Runtime(redis_config, namespace="k", retry_backoff=0.01) as runtime:
        await runtime.spawn(Assistant, name="assistant", keyed=True)
        await runtime.send("assistant", {"text": "boom"}, key="k2")
        await runtime.send("assistant", {"text": "after"}, key="k2")
        with pytest.raises(RemoteError, match="boom"):
            await runtime.ask("assistant", {"text": "boom"}, key="k3")
        await runtime.wait_idle(timeout=10)
        letters = await runtime.dead_letters("assistant")
        assert [(letter.key, letter.body) for letter in letters] == [("k2", {"text": "boom"})]
        assert "failed on delivery 5 of 5" in letters[0].reason
        assert await runtime.dead_letters("assistant", key="k3") == []
        assert await runtime.state("assistant", "k2") == {"turns": 1, "history": ["after"]}
        assert await runtime.state("assistant", "k3") is None


async def test_state_evolves_with_its_class(redis_config: RedisConfig) -> None:
    r = raw(redis_config)

    @attrs.define
    class Counter:
        count: int = 0
        label: str = "new"

    class Counting(Agent):
        state_type = Counter

        async def on_message(self, message: Message[Any]) -> Any:
            self.state.count += 1
            return attrs.asdict(self.state)

    async with Runtime(redis_config, namespace="k") as runtime:
        await runtime.spawn(Counting, keyed=True, partitions=1)
        r.hset("ailf:k:keyed:{Counting:0}:state", "old", '{"count": 41, "gone": true}')
        assert await runtime.ask("Counting", None, key="old") == {"count": 42, "label": "new"}
        assert await runtime.state("Counting", "old") == {"count": 42, "label": "new"}


async def test_entries_that_do_not_belong_are_dead_lettered(redis_config: RedisConfig) -> None:
    r = raw(redis_config)
    async with Runtime(redis_config, namespace="k") as runtime:
        await runtime.spawn(Assistant, name="assistant", keyed=True, partitions=2)
        stream = "ailf:k:keyed:{assistant:0}:mailbox"
        r.xadd(stream, {"envelope": '{"v": 1, "body": {"text": "no key"}}'})
        wrong = next(k for k in ("a", "b", "c", "d") if partition_of(k, 2) == 1)
        r.xadd(stream, {"envelope": f'{{"v": 1, "body": {{}}, "key": "{wrong}"}}'})
        r.xadd(stream, {"envelope": "not json"})
        assert await runtime.ask("assistant", {"text": "still here"}, key="z")
        await runtime.wait_idle(timeout=10)
        reasons = sorted(letter.reason for letter in await runtime.dead_letters("assistant"))
        assert len(reasons) == 3
        assert any("no 'key'" in reason for reason in reasons)
        assert any("belongs to partition 1 of 2" in reason for reason in reasons)
        assert any("undecodable" in reason for reason in reasons)


async def test_mistakes_get_clear_errors(redis_config: RedisConfig) -> None:
    class Topical(Agent):
        topics = ("news",)

    class Stateful(Agent):
        state_type = Chat

    @attrs.define
    class NoDefault:
        needed: int

    class Bad(Agent):
        state_type = NoDefault

    async with Runtime(redis_config, namespace="k") as runtime:
        await runtime.spawn(Assistant, name="assistant", keyed=True, partitions=8)
        with pytest.raises(ConfigError, match="keyed agent: say which key"):
            await runtime.send("assistant", {"text": "hi"})
        with pytest.raises(ConfigError, match="non-empty string"):
            await runtime.send("assistant", {"text": "hi"}, key="")
        with pytest.raises(ConfigError, match="spawned once per process"):
            await runtime.spawn(Assistant, name="assistant", keyed=True)
        async with Runtime(redis_config, namespace="k") as elsewhere:
            with pytest.raises(ConfigError, match="has 8 partitions"):
                await elsewhere.spawn(Assistant, name="assistant", keyed=True, partitions=3)
        with pytest.raises(ConfigError, match="is a keyed agent"):
            await runtime.spawn(Agent, name="assistant")
        with pytest.raises(ConfigError, match="hears no broadcast"):
            await runtime.spawn(Topical, keyed=True)
        with pytest.raises(ConfigError, match="an agent with state hears no broadcast"):
            await runtime.spawn(Stateful, topics=["news"])
        with pytest.raises(ConfigError, match="give one to needed"):
            await runtime.spawn(Bad, keyed=True)
        with pytest.raises(ConfigError, match="partitions must be"):
            await runtime.spawn(Assistant, name="p0", keyed=True, partitions=0)
        with pytest.raises(ConfigError, match="not a keyed agent"):
            await runtime.state("nobody", "k")


class Tallying(Agent):
    """A named agent with state: one instance at a time, its state saved per message."""

    state_type = Chat

    async def on_message(self, message: Message[Any]) -> Any:
        if message.body == "boom":
            self.state.turns += 100  # undone: the handler raises
            raise ValueError("boom")
        self.state.turns += 1
        self.state.history.append(message.body)
        return {"turns": self.state.turns, "key": self.key}


async def test_a_named_agent_with_state(redis_config: RedisConfig) -> None:
    async with (
        Runtime(redis_config, namespace="k", retry_backoff=0.01) as runtime,
        Runtime(redis_config, namespace="k") as standby,
    ):
        await runtime.spawn(Tallying, name="tally")
        await standby.spawn(Tallying, name="tally")  # stands by: one instance at a time
        for text in ("a", "b", "boom"):
            await runtime.send("tally", text)
        assert await runtime.ask("tally", "c") == {"turns": 3, "key": None}
        await runtime.wait_idle(["tally"], timeout=10)
        assert await runtime.state("tally") == {"turns": 3, "history": ["a", "b", "c"]}
        assert await standby.state("tally", state_type=Chat) == Chat(3, ["a", "b", "c"])
        held = [len(r._keyed["tally"].owned) for r in (runtime, standby)]
        assert sorted(held) == [0, 1]
        (letter,) = await runtime.dead_letters("tally")
        assert letter.body == "boom" and letter.key is None
        with pytest.raises(ConfigError, match="not a keyed agent"):
            await runtime.send("tally", "x", key="k")
        with pytest.raises(ConfigError, match="read without a key"):
            await runtime.state("tally", "k")
    r = raw(redis_config)
    assert r.hget("ailf:k:state:{ailf:k:mailbox:tally}", "tally") is not None


def test_fair_share_is_even_and_moves_little() -> None:
    three = fair_share(64, ["a", "b", "c"])
    assert sorted(len(p) for p in three.values()) == [21, 21, 22]
    assert set().union(*three.values()) == set(range(64))
    four = fair_share(64, ["a", "b", "c", "d"])
    assert all(len(p) == 16 for p in four.values())
    moved = sum(len(three[m] - four[m]) for m in three)
    assert moved <= 24  # about a quarter moves to the newcomer, not everything


async def test_hostile_bytes_in_a_keyed_agents_keys_stop_nothing(redis_config: RedisConfig) -> None:
    """A saved state that is not JSON of the class fails only that key's messages (dead
    letters saying why); a descriptor holding garbage is a ConfigError naming the key;
    anything published on a doorbell only makes a reader look."""
    r = raw(redis_config)
    async with Runtime(redis_config, namespace="k", retry_backoff=0.01) as runtime:
        await runtime.spawn(Assistant, name="assistant", keyed=True, partitions=1)
        state = "ailf:k:keyed:{assistant:0}:state"
        r.hset(state, "broken", "\x00not json")
        r.hset(state, "wrong", '{"turns": "many"}')
        for channel in ("ailf:k:keyed:{assistant:0}:bell", "ailf:k:bell:assistant"):
            r.publish(channel, b"\xff\xfe garbage")
        await runtime.send("assistant", {"text": "x"}, key="broken")
        await runtime.send("assistant", {"text": "y"}, key="wrong")
        assert await runtime.ask("assistant", {"text": "fine"}, key="ok") == {
            "key": "ok",
            "turns": 1,
        }
        await runtime.wait_idle(timeout=10)
        letters = {letter.key: letter for letter in await runtime.dead_letters("assistant")}
        assert set(letters) == {"broken", "wrong"}
        assert letters["broken"].error_type == "DecodeError"
        assert "does not fit Chat" in letters["wrong"].error_message
        r.hset("ailf:k:agent:garbled", "partitions", "lots")
        with pytest.raises(ConfigError, match="ailf:k:agent:garbled field 'partitions'"):
            await runtime.send("garbled", {}, key="k")


async def test_a_keyed_agent_goes_on_after_redis_restarts(fresh_server: RedisServer) -> None:
    """Redis killed and restarted (no persistence: leases, groups and state are gone):
    the hosts take the partitions again and the keys answer, from a new state."""
    async with Runtime(fresh_server.config, namespace="k", grace_period=1) as runtime:
        await runtime.spawn(Assistant, name="assistant", keyed=True, partitions=2, claim_idle=1.0)
        assert (await runtime.ask("assistant", {"text": "a"}, key="x"))["turns"] == 1
        fresh_server.restart(kill=True)
        with trio.fail_after(30):
            while True:
                try:
                    reply = await runtime.ask("assistant", {"text": "b"}, key="x", timeout=2)
                    break
                except (AskTimeout, RedisError):
                    await trio.sleep(0.2)
        assert reply == {"key": "x", "turns": 1}

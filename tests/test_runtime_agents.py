"""Agents in one process against a real Redis: delivery, replies, dead letters, broadcast."""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from typing import Any

import attrs
import pytest
import redis
import trio

from ailf import AskTimeout, MessageTooLarge, RedisConfig, RemoteError
from ailf.runtime import Agent, Message, Runtime
from ailf.runtime._agent import AgentRuntime
from ailf.runtime._keys import GROUP
from ailf.runtime._registry import read_registry


@attrs.frozen
class Order:
    item: str
    qty: int


@attrs.frozen
class Sink:
    """Options that hand an agent a list to record into (not structured: passed as is)."""

    seen: list = attrs.field(factory=list)
    fail_on: tuple = ()
    delay: float = 0.0


class Recorder(Agent):
    Options = Sink

    async def on_message(self, message: Message[Order | Any]) -> Any:  # registers Order
        self.options.seen.append(message)
        if self.options.delay:
            await trio.sleep(self.options.delay)
        if message.body in self.options.fail_on:
            raise ValueError(f"cannot take {message.body!r}")
        if isinstance(message.body, Order):
            return Order(message.body.item.upper(), message.body.qty * 2)
        return {"echo": message.body, "from": self.name}


def raw(config: RedisConfig) -> redis.Redis:
    return redis.Redis(host=config.host, port=config.port, decode_responses=True)


async def wait_for(predicate: Any, interval: float = 0.01) -> None:
    """Poll a condition that may live in Redis (no event to wait on there)."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(interval)


async def test_send_ask_and_wait_idle(redis_config: RedisConfig) -> None:
    sink = Sink()
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Recorder, name="rec", replicas=2, options=sink)
            entry_id = await runtime.send("rec", {"n": 1}, headers={"trace": "x"})
            assert await runtime.ask("rec", {"n": 2}, timeout=5) == {
                "echo": {"n": 2},
                "from": "rec",
            }
            await runtime.wait_idle(timeout=10)
            by_body = {json.dumps(m.body): m for m in sink.seen}
            told = by_body['{"n": 1}']
            assert told.id == entry_id and told.headers == {"trace": "x"}
            assert told.delivery_count == 1 and told.topic is None and not told.is_request
    info = raw(redis_config).xinfo_groups("ailf:t:mailbox:rec")
    assert info[0]["name"] == GROUP and info[0]["pending"] == 0


async def test_client_only_runtime_and_messages_sent_before_spawn(
    redis_config: RedisConfig,
) -> None:
    sink = Sink()
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as client:
            for n in range(5):
                await client.send("later", n)
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Recorder, name="later", options=sink)
            await runtime.wait_idle(timeout=10)
    assert [m.body for m in sink.seen] == [0, 1, 2, 3, 4]


async def test_typed_messages_round_trip(redis_config: RedisConfig) -> None:
    sink = Sink()
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Recorder, name="shop", options=sink)
            reply = await runtime.ask("shop", Order("tea", 2), timeout=5)
    assert reply == Order("TEA", 4)
    assert sink.seen[0].body == Order("tea", 2)


async def test_ask_timeout_names_the_agent_and_late_replies_are_dropped(
    redis_config: RedisConfig,
) -> None:
    sink = Sink(delay=0.5)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Recorder, name="slow", options=sink)
            with pytest.raises(
                AskTimeout, match=r"agent 'slow' in namespace 't' within 0.1 s"
            ) as caught:
                await runtime.ask("slow", "hurry", timeout=0.1)
            assert isinstance(caught.value, TimeoutError)
            assert caught.value.agent == "slow" and caught.value.timeout == 0.1
            # the late reply arrives and is dropped; the next ask works
            assert (await runtime.ask("slow", "again", timeout=5))["echo"] == "again"
            with pytest.raises(AskTimeout, match="nobody"):
                await runtime.ask("nobody", 1, timeout=0.1)


async def test_remote_error_keeps_type_and_message(redis_config: RedisConfig) -> None:
    sink = Sink(fail_on=("bad",))
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Recorder, name="picky", options=sink)
            with pytest.raises(RemoteError) as caught:
                await runtime.ask("picky", "bad", timeout=5)
            assert caught.value.type_name == "ValueError"
            assert caught.value.message == "cannot take 'bad'"
            assert caught.value.agent == "picky"
            assert await runtime.ask("picky", "good", timeout=5)
            await runtime.wait_idle(timeout=5)
    assert raw(redis_config).xlen("ailf:t:dead:picky") == 0


async def test_poison_message_is_dead_lettered_while_others_flow(
    redis_config: RedisConfig,
) -> None:
    class Fragile(Recorder):
        max_deliveries = 3

    sink = Sink(fail_on=("poison",))
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t", retry_backoff=0.05) as runtime:
            await runtime.spawn(Fragile, name="fragile", options=sink)
            await runtime.send("fragile", "poison")
            for n in range(20):
                await runtime.send("fragile", n)
            await runtime.wait_idle(timeout=10)
            letters = await runtime.dead_letters("fragile")
            stats = runtime.statistics()["fragile"]
    bodies = [m.body for m in sink.seen]
    poison_tries = [i for i, b in enumerate(bodies) if b == "poison"]
    assert [m.delivery_count for m in sink.seen if m.body == "poison"] == [1, 2, 3]
    assert max(i for i, b in enumerate(bodies) if b != "poison") < poison_tries[1]
    assert sorted(b for b in bodies if b != "poison") == list(range(20))
    assert len(letters) == 1
    letter = letters[0]
    assert letter.body == "poison" and letter.error_type == "ValueError"
    assert letter.error_message == "cannot take 'poison'" and letter.delivery_count == 3
    assert "failed on delivery 3 of 3" in letter.reason
    assert json.loads(letter.envelope)["body"] == "poison"
    assert (stats.failed, stats.retried, stats.dead_lettered, stats.processed) == (3, 2, 1, 20)


async def test_retries_see_growing_delivery_counts(redis_config: RedisConfig) -> None:
    attempts: list[int] = []

    class Flaky(Agent):
        async def on_message(self, message: Message) -> None:
            attempts.append(message.delivery_count)
            if message.delivery_count < 3:
                raise RuntimeError("not yet")

    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t", retry_backoff=0.02) as runtime:
            await runtime.spawn(Flaky, name="flaky")
            await runtime.send("flaky", 1)
            await runtime.wait_idle(timeout=10)
    assert attempts == [1, 2, 3]


async def test_undecodable_entries_are_dead_lettered(redis_config: RedisConfig) -> None:
    sink = Sink()
    bad = [
        {"foo": "bar"},
        {"envelope": "not json"},
        {"envelope": '{"v": 2, "body": 1}'},
        {"envelope": '{"v": 1}'},
        {"envelope": '{"v":1,"body":{"item":5},"type":"test_runtime_agents:Order"}'},
        {"envelope": "x" * 300},
    ]
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t", max_message_size=200) as runtime:
            await runtime.spawn(Recorder, name="strict", options=sink)
            for fields in bad:
                await runtime.client.xadd("ailf:t:mailbox:strict", fields)
            await runtime.send("strict", "fine")
            with pytest.raises(MessageTooLarge, match="max_message_size=200"):
                await runtime.send("strict", "y" * 300)
            await runtime.wait_idle(timeout=10)
            letters = await runtime.dead_letters("strict")
    assert [m.body for m in sink.seen] == ["fine"]
    reasons = [letter.reason for letter in letters]
    assert len(reasons) == 6
    assert all(r.startswith("undecodable") for r in reasons[:5]), reasons
    assert "no 'envelope' field" in reasons[0] and json.loads(letters[0].envelope) == bad[0]
    assert "not valid JSON" in reasons[1] and letters[1].body == "not json"
    assert "version 2" in reasons[2] and "no 'body'" in reasons[3]
    assert "does not fit test_runtime_agents:Order" in reasons[4]
    assert "larger than max_message_size=200" in reasons[5]


async def test_one_message_at_a_time_in_order_unless_concurrency(
    redis_config: RedisConfig,
) -> None:
    running = {"now": 0, "max": 0}
    order: list[int] = []

    class Careful(Agent):
        async def on_message(self, message: Message) -> None:
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
            await trio.sleep(0.002)
            order.append(message.body)
            running["now"] -= 1

    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Careful, name="careful")
            for n in range(30):
                await runtime.send("careful", n)
            await runtime.wait_idle(timeout=10)
            assert order == list(range(30)) and running["max"] == 1
            running["max"] = 0
            await runtime.spawn(Careful, name="parallel", concurrency=4)
            for n in range(40):
                await runtime.send("parallel", n)
            await runtime.wait_idle(timeout=10)
            assert 1 < running["max"] <= 4


async def test_sync_handler_runs_in_a_worker_thread(redis_config: RedisConfig) -> None:
    class Blocking(Agent):
        def on_message(self, message: Message) -> Any:
            return {"main": threading.current_thread() is threading.main_thread()}

    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Blocking, name="blocking")
            assert await runtime.ask("blocking", 1, timeout=5) == {"main": False}


async def test_broadcast_subscribe_unsubscribe_and_malformed(redis_config: RedisConfig) -> None:
    class Listener(Recorder):
        topics = ("news",)

        async def on_message(self, message: Message) -> Any:
            if message.body == "join sports":
                await self.subscribe("sports")
            elif message.body == "leave news":
                await self.unsubscribe("news")
            return await super().on_message(message)

    a, b = Sink(), Sink()
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Listener, name="a", replicas=2, options=a)
            await runtime.spawn(Listener, name="b", options=b)
            assert await runtime.publish("news", {"n": 1}) == 1
            await wait_for(lambda: len(a.seen) == 2 and len(b.seen) == 1)
            message = a.seen[0]
            assert message.topic == "news" and message.body == {"n": 1} and message.id
            assert a.seen[1].id == message.id  # each replica heard it once
            await runtime.ask("b", "join sports", timeout=5)
            await runtime.ask("b", "leave news", timeout=5)
            await runtime.client.publish("ailf:t:topic:sports", "garbage")
            await runtime.publish("sports", "goal")
            await runtime.publish("news", "late news")
            await wait_for(lambda: len(b.seen) == 4 and len(a.seen) == 4)
            assert [m.body for m in b.seen[2:]] == ["leave news", "goal"]
            assert [m.body for m in a.seen[2:]] == ["late news", "late news"]
            assert runtime.hub.malformed == 1


async def test_statistics_and_registry(redis_config: RedisConfig) -> None:
    sink = Sink(fail_on=("bad",))
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t", heartbeat_interval=0.2) as runtime:
            await runtime.spawn(Recorder, name="counted", replicas=2, options=sink)
            for n in range(10):
                await runtime.ask("counted", n, timeout=5)
            with pytest.raises(RemoteError):
                await runtime.ask("counted", "bad", timeout=5)
            stats = runtime.statistics()["counted"]
            assert (stats.replicas, stats.received, stats.processed, stats.failed) == (2, 11, 10, 1)
            assert 0 < stats.latency_p50 <= stats.latency_p99 and stats.latency_mean > 0
            snapshot = await runtime.registry()
            (process,) = snapshot.processes
            assert process.id == runtime.process_id and process.agents == {"counted": 2}
            assert process.pid == runtime.pid and process.last_heartbeat >= process.started
            assert snapshot.agents["counted"].replicas == 2
            assert (await runtime.cluster_statistics())["counted"].processed == 10
            keys = set(raw(redis_config).keys("ailf:t:*"))
            assert {
                "ailf:t:mailbox:counted",
                "ailf:t:processes",
                f"ailf:t:process:{runtime.process_id}",
            } <= keys
            ttl = raw(redis_config).pttl(f"ailf:t:process:{runtime.process_id}")
            assert 0 < ttl <= 600
    assert raw(redis_config).keys("ailf:t:process:*") == []
    assert runtime.statistics()["counted"].replicas == 2  # as it ran, not 0 after the stop
    # a clean stop leaves no consumers behind (nothing was pending)
    assert raw(redis_config).xinfo_consumers("ailf:t:mailbox:counted", GROUP) == []


class Quitter(Agent):
    """Stops itself for good on its first message."""

    restart = "transient"

    async def on_message(self, message: Message) -> None:
        self.stop()


async def test_spawn_and_stop_reach_the_registry_without_waiting_for_a_heartbeat(
    redis_config: RedisConfig,
) -> None:
    async def seen(runtime: Runtime, expected: dict[str, int]) -> None:
        # Read as another process would (registry() would write a heartbeat first).
        while True:
            snapshot = await read_registry(runtime.client, runtime.keys, 60)
            if {name: info.replicas for name, info in snapshot.agents.items()} == expected:
                return
            await trio.sleep(0.01)

    with trio.fail_after(10):
        async with Runtime(redis_config, namespace="t", heartbeat_interval=60) as runtime:
            await seen(runtime, {})
            await runtime.spawn(Recorder, name="prompt", replicas=2)
            await runtime.spawn(Quitter, name="quitter")
            await seen(runtime, {"prompt": 2, "quitter": 1})
            await runtime.send("quitter", "stop")
            await seen(runtime, {"prompt": 2})


async def test_a_process_is_live_while_its_own_entry_lasts(redis_config: RedisConfig) -> None:
    """Readers (`ailf status` included) need not know a process's heartbeat interval:
    an old heartbeat of a slow-beating process still counts until its entry expires."""
    from ailf._admin import status

    with trio.fail_after(10):
        async with Runtime(redis_config, namespace="t", heartbeat_interval=30) as runtime:
            await runtime.spawn(Recorder, name="slow-beat")
            redis_client = raw(redis_config)
            # 20 s old: past the default TTL (3 x 2 s), within this process's (3 x 30 s)
            redis_client.zadd("ailf:t:processes", {runtime.process_id: time.time() - 20})
            assert redis_client.pttl(f"ailf:t:process:{runtime.process_id}") > 60_000
            report = await trio.to_thread.run_sync(status, redis_config, "t")
            [listed] = report["namespaces"][0]["processes"]
            assert listed["id"] == runtime.process_id
            snapshot = await read_registry(runtime.client, runtime.keys)
            assert snapshot.agents["slow-beat"].replicas == 1
            redis_client.delete(f"ailf:t:process:{runtime.process_id}")  # as if expired
            assert (await read_registry(runtime.client, runtime.keys)).processes == ()


async def test_dead_consumers_entries_are_claimed_then_the_consumer_deleted(
    redis_config: RedisConfig,
) -> None:
    sink = Sink()
    client = raw(redis_config)
    stream = "ailf:t:mailbox:heir"
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as sender:
            for n in range(3):
                await sender.send("heir", n)
        # a consumer that read everything, then died without acking
        client.xreadgroup(GROUP, "ghost", {stream: ">"}, count=10)
        client.xgroup_createconsumer(stream, GROUP, "idle-ghost")
        async with Runtime(redis_config, namespace="t", stale_consumer_after=0.2) as runtime:
            await runtime.spawn(Recorder, name="heir", options=sink, claim_idle=0.2)
            await runtime.wait_idle(timeout=10)
            assert sorted(m.body for m in sink.seen) == [0, 1, 2]
            assert all(m.delivery_count == 2 for m in sink.seen)

            def ghosts() -> set[str]:
                names = {c["name"] for c in client.xinfo_consumers(stream, GROUP)}
                return names & {"ghost", "idle-ghost"}

            await wait_for(lambda: not ghosts(), interval=0.05)


async def test_acknowledged_entries_are_trimmed(redis_config: RedisConfig) -> None:
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t", batch_size=50) as runtime:
            await runtime.spawn(Recorder, name="trimmed", options=Sink(), claim_idle=0.1)
            for n in range(1000):
                await runtime.send("trimmed", n)
            await runtime.wait_idle(timeout=10)
            await wait_for(lambda: raw(redis_config).xlen("ailf:t:mailbox:trimmed") < 1000)


async def test_log_records_carry_agent_and_message_id(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    class Chatty(Agent):
        async def on_message(self, message: Message) -> None:
            self.log.info("handling %s", message.body)

    caplog.set_level(logging.INFO, logger="ailf.agent")
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Chatty, name="chatty")
            entry_id = await runtime.send("chatty", "hello")
            await runtime.wait_idle(timeout=10)
    (record,) = [r for r in caplog.records if "handling" in r.getMessage()]
    assert record.agent == "chatty" and record.replica == 0  # type: ignore[attr-defined]
    assert record.message_id == entry_id  # type: ignore[attr-defined]
    assert record.getMessage() == f"chatty[0] {entry_id}: handling hello"


async def test_wait_idle_times_out_naming_busy_agents(redis_config: RedisConfig) -> None:
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.send("absent", 1)
            with pytest.raises(TimeoutError, match=r"absent \(1 entries, no consumer group"):
                await runtime.wait_idle(["absent"], timeout=0.2)
            await runtime.wait_idle(["never-used"], timeout=5)


async def test_entries_trimmed_unread_are_reported(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t", mailbox_maxlen=10) as runtime:
            for n in range(1000):
                await runtime.send("swamped", n)
            lost = 1000 - raw(redis_config).xlen("ailf:t:mailbox:swamped")
            assert lost > 0
            await runtime.spawn(Recorder, name="swamped", options=Sink())
    assert f"mailbox ailf:t:mailbox:swamped: about {lost} entries were trimmed" in caplog.text
    assert "before any replica read them" in caplog.text


async def test_a_slow_handler_keeps_its_message_from_other_replicas(
    redis_config: RedisConfig,
) -> None:
    seen: list[tuple[int, Any]] = []

    class Slow(Agent):
        async def on_message(self, message: Message) -> None:
            seen.append((id(self.runtime), message.body))
            await trio.sleep(1.0)

    with trio.fail_after(20):
        async with (
            Runtime(redis_config, namespace="t") as one,
            Runtime(redis_config, namespace="t") as two,
        ):
            await one.spawn(Slow, name="slow", claim_idle=0.3)
            await one.send("slow", "long job")
            while not seen:  # noqa: ASYNC110 - filled by the agent
                await trio.sleep(0.01)
            await two.spawn(Slow, name="slow", claim_idle=0.3)
            await one.wait_idle(timeout=10)
    assert seen == [(id(one), "long job")]


async def test_agents_ask_each_other_and_spawn_agents(redis_config: RedisConfig) -> None:
    class Doubler(Agent):
        async def on_message(self, message: Message) -> Any:
            return message.body * 2

    class Front(Agent):
        async def on_message(self, message: Message) -> Any:
            if message.body == "grow":
                await self.runtime.spawn(Doubler, name="doubler")
                return "grown"
            return await self.ask("doubler", message.body, timeout=5) + 1

    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Front, name="front")
            assert await runtime.ask("front", "grow", timeout=5) == "grown"
            assert await runtime.ask("front", 20, timeout=5) == 41


def test_self_runtime_is_typed_with_the_runtimes_own_signatures() -> None:
    """``Agent.runtime`` is typed by AgentRuntime, a protocol beside the Agent class (the
    runtime imports that module, so it may not import the runtime back): the Runtime
    has each of its members, with the same signature or type."""
    runtime = Runtime(RedisConfig())
    for name, member in vars(AgentRuntime).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            wanted = inspect.signature(member.fget).return_annotation
            own = getattr(Runtime, name, None)
            if isinstance(own, property):  # a property of the Runtime too
                assert inspect.signature(own.fget).return_annotation == wanted, name
            else:  # an attribute set by Runtime.__init__
                assert type(vars(runtime)[name]).__name__ == wanted, name
        else:
            assert inspect.signature(getattr(Runtime, name)) == inspect.signature(member), name


async def test_a_message_that_keeps_killing_its_consumer_is_dead_lettered(
    redis_config: RedisConfig,
) -> None:
    """Deliveries that never finished (crashes) count: past max_deliveries the message is
    dead-lettered without running the handler again."""
    sink = Sink()
    client = raw(redis_config)
    stream = "ailf:t:mailbox:careful"
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as sender:
            await sender.send("careful", "killer")
        [[_, [(entry_id, _)]]] = client.xreadgroup(GROUP, "crashed", {stream: ">"})
        # four more deliveries that each took their process down
        client.xclaim(stream, GROUP, "crashed", 0, [entry_id], retrycount=5)
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Recorder, name="careful", options=sink, claim_idle=0.1)
            await runtime.wait_idle(timeout=10)
            (letter,) = await runtime.dead_letters("careful")
    assert sink.seen == []
    assert letter.body == "killer" and letter.delivery_count == 6
    assert "delivered 6 times (max_deliveries=5) without its handler finishing" in letter.reason


async def test_a_deleted_mailbox_is_recreated(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="t") as runtime:
            await runtime.spawn(Recorder, name="gone", options=Sink(), claim_idle=0.1)
            assert (await runtime.ask("gone", 1, timeout=5))["echo"] == 1
            raw(redis_config).delete("ailf:t:mailbox:gone")
            await trio.sleep(0.3)  # claims and reads meet NOGROUP meanwhile
            assert (await runtime.ask("gone", 2, timeout=5))["echo"] == 2
    assert "consumer group missing, re-creating it" in caplog.text

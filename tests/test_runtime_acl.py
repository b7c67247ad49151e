"""The ACL rule documented in docs/operating.md is enough to run agents, and no more."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
import trio
from acl_helpers import documented_acl

from ailf import AskTimeout, RedisConfig, RedisError, ResponseError
from ailf.runtime import Agent, Message, Runtime


class Clerk(Agent):
    topics = ("news",)
    heard: list[Any] = []

    async def on_message(self, message: Message) -> Any:
        if message.topic:
            Clerk.heard.append(message.body)
            return None
        if message.body == "bad":
            raise ValueError("no")
        return message.body


async def test_restricted_user_runs_its_namespace_only(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis.Redis(port=redis_config.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_acl("shop", "acl-test-password"))
    config = attrs.evolve(redis_config, username="shop", password="acl-test-password")
    Clerk.heard = []

    class Fragile(Clerk):
        max_deliveries = 1

    try:
        with trio.fail_after(30):
            async with Runtime(config, namespace="shop", retry_backoff=0.01) as runtime:
                await runtime.spawn(Clerk, name="clerk", replicas=2, claim_idle=0.2)
                await runtime.spawn(Fragile, name="fragile", claim_idle=0.2)
                assert await runtime.ask("clerk", "hi", timeout=5) == "hi"
                await runtime.send("fragile", "bad")
                while not Clerk.heard:
                    await runtime.publish("news", "extra")
                    await trio.sleep(0.05)
                await runtime.wait_idle(timeout=10)
                assert len(await runtime.dead_letters("fragile")) == 1
                assert (await runtime.registry()).agents["clerk"].replicas == 2
                # the first upkeep (XINFO, XTRIM, consumer clean-up) runs 1-2 s after spawn
                await trio.sleep(2.2)
            assert "NOPERM" not in caplog.text
            with pytest.raises(RedisError, match="NOPERM"):
                async with Runtime(config, namespace="other") as other:
                    await other.send("clerk", 1)
    finally:
        admin.execute_command("ACL", "DELUSER", "shop")


def restricted_channels(redis_config: RedisConfig, *channels: str) -> Iterator[RedisConfig]:
    """The documented user of namespace ``shop`` with ``channels`` as its only channel
    patterns (``&``) instead of the whole namespace."""
    admin = redis.Redis(port=redis_config.port, decode_responses=True)
    words = [w for w in documented_acl("shop", "pw") if not w.startswith("&")]
    admin.execute_command("ACL", "SETUSER", *words, *(f"&{channel}" for channel in channels))
    yield attrs.evolve(redis_config, username="shop", password="pw")
    admin.execute_command("ACL", "DELUSER", "shop")
    admin.close()


@pytest.fixture
def no_channels(redis_config: RedisConfig) -> Iterator[RedisConfig]:
    """The documented user of namespace ``shop`` without its channel pattern (``&``)."""
    yield from restricted_channels(redis_config)


@pytest.fixture
def news_only(redis_config: RedisConfig) -> Iterator[RedisConfig]:
    """The documented user of namespace ``shop``, allowed the channel of topic news only."""
    yield from restricted_channels(redis_config, "ailf:shop:topic:news")


async def test_a_user_without_pubsub_rights_can_send(
    redis_config: RedisConfig, no_channels: RedisConfig
) -> None:
    """A runtime that only sends subscribes to nothing (its reply channel waits for the
    first ask), so a user without channel patterns is not refused."""
    with trio.fail_after(10):
        async with Runtime(no_channels, namespace="shop") as runtime:
            entry = await runtime.send("clerk", {"n": 1})
    entries = redis.Redis(port=redis_config.port).xrange("ailf:shop:mailbox:clerk")
    assert [entry_id.decode() for entry_id, _ in entries] == [entry]


async def test_a_reply_refused_by_redis_still_acknowledges_the_request(
    redis_config: RedisConfig, no_channels: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The reply and the ack go in one pipeline: when Redis refuses the PUBLISH (here the
    agent's user may not use channels), the asker times out but the request is not
    left pending to be handled again."""
    with trio.fail_after(20):
        async with Runtime(no_channels, namespace="shop") as host:
            await host.spawn(Agent, name="clerk")  # no topics: it subscribes nothing
            async with Runtime(redis_config, namespace="shop") as asker:
                with pytest.raises(AskTimeout):
                    await asker.ask("clerk", "hi", timeout=1)
                await host.wait_idle(timeout=10)
    pending = redis.Redis(port=redis_config.port).xpending("ailf:shop:mailbox:clerk", "ailf")
    assert pending["pending"] == 0
    assert "could not send the reply" in caplog.text and "NOPERM" in caplog.text


class Recorder(Agent):
    """Subscribes to nothing; records what it is sent."""

    got: list[Any] = []

    async def on_message(self, message: Message) -> None:
        Recorder.got.append(message.body)


async def test_a_refused_topic_fails_that_spawn_and_nothing_else(
    no_channels: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    Recorder.got = []
    with trio.fail_after(20):
        async with Runtime(no_channels, namespace="shop") as runtime:
            await runtime.spawn(Recorder, name="recorder")
            for _ in range(2):  # refused again: the first attempt left nothing to hide it
                with pytest.raises(ResponseError) as refused:
                    await runtime.spawn(Clerk, name="clerk", replicas=2)  # topics = ("news",)
                assert refused.value.code == "NOPERM"
                assert "SUBSCRIBE 'ailf:shop:topic:news'" in str(refused.value)
            assert {cell.spec.name for cell in runtime.cells} == {"recorder"}
            assert set(runtime.statistics()) == {"recorder"}
            assert set((await runtime.registry()).agents) == {"recorder"}
            await runtime.send("recorder", 1)
            await runtime.wait_idle(timeout=10)
            assert Recorder.got == [1]
    assert "Nursery is closed" not in caplog.text


async def test_broadcasts_go_on_after_a_refused_topic(news_only: RedisConfig) -> None:
    Clerk.heard = []
    with trio.fail_after(20):
        async with Runtime(news_only, namespace="shop") as runtime:
            await runtime.spawn(Clerk, name="clerk")
            with pytest.raises(ResponseError, match=r"^NOPERM .*'ailf:shop:topic:secret'"):
                await runtime.spawn(Agent, name="spy", topics=("secret",))
            while not Clerk.heard:
                await runtime.publish("news", "still heard")
                await trio.sleep(0.05)
            assert (await runtime.registry()).agents.keys() == {"clerk"}


async def test_an_ask_without_rights_on_its_reply_channel_raises_and_the_next_tries_again(
    redis_config: RedisConfig, no_channels: RedisConfig
) -> None:
    admin = redis.Redis(port=redis_config.port, decode_responses=True)
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="shop") as host:
            await host.spawn(Clerk, name="clerk")
            async with Runtime(no_channels, namespace="shop") as asker:
                for _ in range(2):
                    with pytest.raises(ResponseError) as refused:
                        await asker.ask("clerk", "hi", timeout=5)
                    assert refused.value.code == "NOPERM"
                    assert asker.keys.reply(asker.process_id) in str(refused.value)
                assert admin.xlen("ailf:shop:mailbox:clerk") == 0  # refused before sending
                admin.execute_command("ACL", "SETUSER", "shop", "&ailf:shop:reply:*")
                assert await asker.ask("clerk", "hi", timeout=5) == "hi"
    admin.close()


class Joiner(Agent):
    """Subscribes to the topic it is sent; records how that went (and nothing of the
    broadcasts it then hears, which may come before or after the runtime stops)."""

    outcomes: list[str] = []

    async def on_message(self, message: Message) -> None:
        if message.topic is not None:
            return
        try:
            await self.subscribe(message.body)
        except ResponseError as refused:
            Joiner.outcomes.append(refused.code)
        else:
            Joiner.outcomes.append("subscribed")


async def test_an_agent_refused_a_topic_may_try_again(news_only: RedisConfig) -> None:
    Joiner.outcomes = []
    with trio.fail_after(20):
        async with Runtime(news_only, namespace="shop") as runtime:
            await runtime.spawn(Joiner, name="joiner")
            for topic in ("secret", "secret", "news"):
                await runtime.send("joiner", topic)
            await runtime.wait_idle(timeout=10)
            assert await runtime.publish("news", "heard") == 1
    assert Joiner.outcomes == ["NOPERM", "NOPERM", "subscribed"]


async def test_the_agent_host_line_covers_timers(redis_config: RedisConfig) -> None:
    """Delayed sends, reminders (set, listed, fired, cancelled) and the timekeeper's
    scripts all run under operating.md's line for the namespace."""
    admin = redis.Redis(port=redis_config.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_acl("shop", "acl-test-password"))
    config = attrs.evolve(redis_config, username="shop", password="acl-test-password")
    try:
        with trio.fail_after(20):
            async with Runtime(config, namespace="shop") as runtime:
                await runtime.spawn(Clerk, name="clerk")
                await runtime.send("clerk", "later", delay=0.05)
                await runtime.set_reminder("clerk", "tick", "tock", every=0.05)
                assert [r.name for r in await runtime.reminders("clerk")] == ["tick"]
                while runtime.statistics()["clerk"].processed < 3:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                assert await runtime.cancel_reminder("clerk", "tick") is True
    finally:
        admin.execute_command("ACL", "DELUSER", "shop")

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


@pytest.fixture
def no_channels(redis_config: RedisConfig) -> Iterator[RedisConfig]:
    """The documented user of namespace ``shop`` without its channel pattern (``&``)."""
    admin = redis.Redis(port=redis_config.port, decode_responses=True)
    words = [w for w in documented_acl("shop", "pw") if not w.startswith("&")]
    admin.execute_command("ACL", "SETUSER", *words)
    yield attrs.evolve(redis_config, username="shop", password="pw")
    admin.execute_command("ACL", "DELUSER", "shop")
    admin.close()


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


async def test_a_refused_subscription_stops_the_runtime_with_the_redis_error(
    no_channels: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20), pytest.raises(ResponseError, match="NOPERM"):
        async with Runtime(no_channels, namespace="shop") as runtime:
            await runtime.spawn(Clerk, name="clerk")  # topics = ("news",)
            await trio.sleep_forever()
    assert "Nursery is closed" not in caplog.text

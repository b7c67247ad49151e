"""A runtime's life as a newcomer meets it: started from asyncio by mistake, what its
logs say at each level, and broadcasts neither stuck behind a mailbox backlog nor lost
at a graceful stop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import trio

from ailf import Agent, Message, RedisConfig, Runtime


class Slow(Agent):
    """Takes ``delay`` seconds per message; records what it handled, in order."""

    topics = ("news",)
    delay = 0.05
    handled: list[Any] = []

    async def on_message(self, message: Message) -> Any:
        await trio.sleep(Slow.delay)
        Slow.handled.append(("broadcast" if message.topic else "mail", message.body))


class Flaky(Agent):
    max_deliveries = 3
    retry_backoff = 0.01

    async def on_message(self, message: Message) -> Any:
        raise ValueError(f"cannot take {message.body!r}")


async def until(predicate: Any, seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - the condition lives in an agent
            await trio.sleep(0.005)


# -- trio, not asyncio -----------------------------------------------------------------


def test_the_runtime_under_asyncio_says_it_runs_on_trio(redis_config: RedisConfig) -> None:
    async def main() -> None:
        async with Runtime(redis_config, namespace="lc"):
            pass

    with pytest.raises(RuntimeError, match=r"runs on trio, not on asyncio.*asyncio.to_thread"):
        asyncio.run(main())


def test_the_documented_way_to_run_it_from_asyncio_works(redis_config: RedisConfig) -> None:
    """docs/concepts.md: a thread of its own, with trio.run."""

    class Echo(Agent):
        async def on_message(self, message: Message) -> Any:
            return message.body

    async def main() -> Any:
        async with Runtime(redis_config, namespace="lc") as runtime:
            await runtime.spawn(Echo, name="echo")
            return await runtime.ask("echo", "from asyncio", timeout=5)

    async def asyncio_app() -> Any:
        return await asyncio.to_thread(trio.run, main)

    assert asyncio.run(asyncio_app()) == "from asyncio"


# -- broadcasts -----------------------------------------------------------------------


async def test_a_broadcast_does_not_wait_behind_a_fetched_mailbox_backlog(
    redis_config: RedisConfig,
) -> None:
    Slow.handled, Slow.delay = [], 0.05
    async with Runtime(redis_config, namespace="lc", grace_period=0.1) as runtime:
        await runtime.spawn(Slow, name="slow")
        for n in range(40):  # two seconds of work, fetched in one read
            await runtime.send("slow", n)
        await until(lambda: Slow.handled)
        await runtime.publish("news", "now")
        await until(lambda: ("broadcast", "now") in Slow.handled)
        # handled after at most the message in flight when it arrived, and the next
        assert Slow.handled.index(("broadcast", "now")) <= 3


async def test_a_graceful_stop_still_handles_the_broadcasts_it_queued(
    redis_config: RedisConfig,
) -> None:
    """A queued mailbox entry is safe in Redis; a queued broadcast exists only in the
    process, so the grace period is spent on it."""
    Slow.handled, Slow.delay = [], 0.1
    async with Runtime(redis_config, namespace="lc", grace_period=5) as runtime:
        await runtime.spawn(Slow, name="slow")
        for n in range(3):
            await runtime.publish("news", n)
        await until(lambda: Slow.handled)  # the other two are queued by now
    assert Slow.handled == [("broadcast", 0), ("broadcast", 1), ("broadcast", 2)]


# -- logs ---------------------------------------------------------------------------------


async def test_a_retry_is_one_line_and_a_dead_letter_carries_the_traceback(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ailf")
    async with Runtime(redis_config, namespace="lc", retry_backoff=0.01) as runtime:
        await runtime.spawn(Flaky, name="flaky")
        entry = await runtime.send("flaky", "poison")
        with trio.fail_after(10):
            while not await runtime.dead_letters("flaky"):  # noqa: ASYNC110
                await trio.sleep(0.01)
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    assert all(r.exc_info is None for r in retries)
    assert all("\n" not in r.getMessage() for r in retries)
    [dead] = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert dead.exc_info is not None and entry in dead.getMessage()


async def test_info_shows_the_lifecycle(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ailf")
    async with Runtime(redis_config, namespace="lc") as runtime:
        await runtime.spawn(Slow, name="slow", replicas=2)
    text = caplog.text
    assert f"runtime {runtime.process_id} started on" in text
    assert "spawned 2 replica(s) of Slow as 'slow', hearing news" in text
    assert f"runtime {runtime.process_id} stopping: 2 instance(s)" in text
    assert f"runtime {runtime.process_id} left the registry" in text

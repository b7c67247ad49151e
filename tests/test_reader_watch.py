"""The watch: a blocking read of a reader's hot mailboxes, beside the doorbells' reads."""

from __future__ import annotations

import statistics
import time
from typing import Any

import attrs
import redis
import trio

from ailf import RedisConfig
from ailf.runtime import Agent, Message, Runtime
from ailf.runtime._message import encode_envelope

NS = "watch"


class Echo(Agent):
    async def on_message(self, message: Message[Any]) -> Any:
        return message.body


@attrs.frozen
class Into:
    seen: list = attrs.field(factory=list)


class Log(Agent):
    """Records bodies in order, into the list its options hold."""

    Options = Into

    async def on_message(self, message: Message[Any]) -> None:
        self.options.seen.append(message.body)


def _raw(config: RedisConfig) -> redis.Redis:
    return redis.Redis(host=config.host, port=config.port, decode_responses=True)


def _slow_sweeps(config: RedisConfig) -> Runtime:
    """A runtime whose readers sweep every minute (``max_block``), not every 2 s, so that
    only a bell or the watch can have an entry read soon."""
    runtime = Runtime(config, namespace=NS)
    runtime.settings = attrs.evolve(runtime.settings, max_block=60.0)
    return runtime


async def test_a_hot_mailbox_is_read_as_entries_arrive_without_a_bell(
    redis_config: RedisConfig,
) -> None:
    """A mailbox just read from is watched: an entry added without ringing its bell is
    handled at once, not at the next sweep (``max_block``, a minute here)."""
    seen: list[Any] = []
    with trio.fail_after(20):
        async with _slow_sweeps(redis_config) as runtime:
            await runtime.spawn(Log, name="log", options=Into(seen))
            await runtime.send("log", 0)  # rung: read by the loop, hot from then on
            while not seen:  # noqa: ASYNC110
                await trio.sleep(0.01)
            client = _raw(redis_config)
            for n in range(1, 4):
                client.xadd(runtime.keys.mailbox("log"), {"envelope": encode_envelope(n)})
                with trio.fail_after(5):
                    while len(seen) <= n:  # noqa: ASYNC110
                        await trio.sleep(0.01)
            client.close()
    assert seen == [0, 1, 2, 3]


async def test_quiet_mailboxes_bells_do_not_wait_behind_the_watch(
    redis_config: RedisConfig,
) -> None:
    """While the watch blocks on a hot mailbox, an ask to a mailbox it does not name is
    read at its bell, in well under Redis's cron tick (100 ms), which is what ends an
    idle BLOCK."""
    with trio.fail_after(30):
        async with _slow_sweeps(redis_config) as runtime:
            await runtime.spawn(Echo, name="hot")
            for n in range(20):
                await runtime.spawn(Echo, name=f"quiet-{n}")
                assert await runtime.ask("hot", n) == n
            await trio.sleep(0.2)  # the watch is blocked on "hot" now
            times = []
            for n in range(20):  # each asked once: never watched before it answers
                started = time.perf_counter()
                assert await runtime.ask(f"quiet-{n}", n) == n
                times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.05, times


async def test_a_watched_mailbox_keeps_its_order_when_busy(redis_config: RedisConfig) -> None:
    """Entries of a hot mailbox arriving faster than one handler takes them, by the
    watch and the loop in turn, are handled in stream order."""
    seen: list[Any] = []
    with trio.fail_after(60):
        async with Runtime(redis_config, namespace=NS, batch_size=16) as runtime:
            await runtime.spawn(Log, name="log", options=Into(seen))
            for n in range(3):
                await runtime.send("log", n)
                await trio.sleep(0.05)  # read one at a time: hot, then watched
            async with trio.open_nursery() as nursery:
                for sender in range(4):

                    async def send(sender: int = sender) -> None:
                        for n in range(100):
                            await runtime.send("log", 1000 * (sender + 1) + n)

                    nursery.start_soon(send)
            await runtime.wait_idle(timeout=30)
    assert seen[:3] == [0, 1, 2]
    assert len(seen) == 403
    for sender in range(4):
        mine = [body for body in seen if 1000 * (sender + 1) <= body < 1000 * (sender + 2)]
        assert mine == sorted(mine)


async def test_bytes_that_are_not_text_in_a_watched_mailbox_are_dead_lettered(
    redis_config: RedisConfig,
) -> None:
    """An entry that is not UTF-8 fails the watch's read after Redis delivered it: the
    mailbox is read again from its pending entries, where the loop dead-letters it, and
    the messages after it are handled."""
    seen: list[Any] = []
    with trio.fail_after(20):
        async with _slow_sweeps(redis_config) as runtime:
            await runtime.spawn(Log, name="log", options=Into(seen))
            await runtime.send("log", "before")
            while not seen:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await trio.sleep(0.1)  # watched by now
            client = redis.Redis(host=redis_config.host, port=redis_config.port)
            client.xadd(runtime.keys.mailbox("log"), {b"envelope": b"\xff\xfe pickled"})
            client.close()
            await runtime.send("log", "after")
            await runtime.wait_idle(timeout=10)
            letters = await runtime.dead_letters("log")
    assert seen == ["before", "after"]
    assert [letter.reason.split(":")[0] for letter in letters] == ["undecodable"]

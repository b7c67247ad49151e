"""Overload: producers much faster than their consumers.

With ``mailbox_limit`` the senders wait for room (backpressure) and give up with
MailboxFull after ``send_timeout``; without it, ``mailbox_maxlen`` caps the stream (and
the runtime warns about what it trimmed unread). Either way memory stays bounded,
nothing crashes, and the backlog drains afterwards. docs/reliability.md quotes these.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from ailf import Agent, MailboxFull, Message, RedisConfig, Runtime
from ailf.runtime._admission import MailboxGate
from ailf.runtime._mailbox import mailbox_backlog


def rss_bytes() -> int:
    """This process's resident memory (Linux), or 0 where /proc is missing."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return 0
    import os

    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def used_memory(config: RedisConfig) -> int:
    client = redis.Redis(host="127.0.0.1", port=config.port)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


class Slow(Agent):
    """A consumer about ten times slower than the producers below."""

    handled: set[int] = set()
    delay = 0.002

    async def on_message(self, message: Message) -> Any:
        await trio.sleep(Slow.delay)
        Slow.handled.add(message.body)
        return None


def test_gate_settings_are_validated() -> None:
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="mailbox_limit"):
            MailboxGate(bad, 1.0)  # type: ignore[arg-type]
    for bad in (0, -1, None, True):
        with pytest.raises(ValueError, match="send_timeout"):
            MailboxGate(10, bad)  # type: ignore[arg-type]


async def test_a_full_mailbox_makes_send_wait_then_raise(redis_config: RedisConfig) -> None:
    with trio.fail_after(30):
        async with Runtime(
            redis_config, namespace="o", mailbox_limit=20, send_timeout=0.3
        ) as runtime:
            for n in range(20):  # no agent runs: the mailbox only fills
                await runtime.send("nobody", n)
            started = time.monotonic()
            with pytest.raises(MailboxFull, match="mailbox_limit=20") as caught:
                await runtime.send("nobody", 20)
            assert time.monotonic() - started >= 0.3
            assert caught.value.mailbox == "ailf:o:mailbox:nobody"
            assert caught.value.backlog == 20 and caught.value.limit == 20
            with pytest.raises(MailboxFull):  # ask waits for room the same way
                await runtime.ask("nobody", "?", timeout=5)
            assert await runtime.client.xlen("ailf:o:mailbox:nobody") == 20

            # A consumer arrives: a waiting sender gets through as soon as there is room.
            Slow.handled = set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.send, "nobody", 20)
                await trio.sleep(0.1)
                await runtime.spawn(Slow, name="nobody")
            await runtime.wait_idle(timeout=10)
    assert Slow.handled == set(range(21))


async def test_acknowledged_entries_do_not_count_against_the_limit(
    redis_config: RedisConfig,
) -> None:
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="o", mailbox_limit=10) as runtime:
            Slow.handled = set()
            await runtime.spawn(Slow, name="quick")
            for n in range(100):  # ten times the limit, through an agent that keeps up
                await runtime.send("quick", n)
            await runtime.wait_idle(timeout=10)
            assert await mailbox_backlog(runtime.client, "ailf:o:mailbox:quick") == 0
    assert Slow.handled == set(range(100))


@pytest.mark.slow
async def test_producers_ten_times_faster_stay_bounded_and_drain(
    redis_config: RedisConfig,
) -> None:
    """Four producers flood one slow agent for a few seconds (bench/chaos.py overload
    runs the same for a minute): the backlog never passes the limit, the senders are
    slowed to the consumer's pace, and everything sent is handled once it drains."""
    limit, seconds = 500, 4.0
    Slow.handled = set()
    sent: list[int] = []
    backlog_max = 0
    memory_before = used_memory(redis_config)
    rss_before = rss_bytes()
    with trio.fail_after(90):
        async with Runtime(
            redis_config, namespace="o", mailbox_limit=limit, send_timeout=30
        ) as runtime:
            await runtime.spawn(Slow, name="slow")
            counter = iter(range(10**9))
            deadline = trio.current_time() + seconds

            async def produce() -> None:
                while trio.current_time() < deadline:
                    n = next(counter)
                    await runtime.send("slow", n)
                    sent.append(n)

            async def watch() -> None:
                nonlocal backlog_max
                while trio.current_time() < deadline:
                    backlog = await mailbox_backlog(runtime.client, "ailf:o:mailbox:slow")
                    backlog_max = max(backlog_max, backlog)
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(produce)
                nursery.start_soon(watch)
            handled_at_deadline = len(Slow.handled)
            memory_peak = used_memory(redis_config)
            await runtime.wait_idle(timeout=60)
    rss_growth = rss_bytes() - rss_before
    assert Slow.handled == set(sent)
    assert backlog_max <= limit
    # Producers were held to the consumer's pace: what was sent during the flood is at
    # most what was handled plus the limit.
    assert len(sent) <= handled_at_deadline + limit + 4
    assert memory_peak - memory_before < 20 * 2**20
    assert rss_growth < 100 * 2**20
    logging.getLogger("ailf.test").warning(
        "overload: %d sent in %.0f s, backlog max %d (limit %d), redis used_memory +%d KiB,"
        " rss +%d KiB",
        len(sent),
        seconds,
        backlog_max,
        limit,
        (memory_peak - memory_before) // 1024,
        rss_growth // 1024,
    )


@pytest.mark.slow
async def test_without_a_limit_maxlen_caps_the_stream_and_says_so(
    redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The default: no mailbox_limit, so a flood is capped by mailbox_maxlen — memory
    stays bounded, the oldest unread entries are trimmed, and the runtime warns."""
    maxlen = 1000
    memory_before = used_memory(redis_config)
    with trio.fail_after(60):
        async with Runtime(redis_config, namespace="o", mailbox_maxlen=maxlen) as runtime:
            pipe_size = 200
            for start in range(0, 20_000, pipe_size):
                async with trio.open_nursery() as nursery:
                    for n in range(start, start + pipe_size):
                        nursery.start_soon(runtime.send, "flooded", n)
            length = await runtime.client.xlen("ailf:o:mailbox:flooded")
            memory_peak = used_memory(redis_config)
            Slow.handled = set()
            Slow.delay = 0.0
            try:
                await runtime.spawn(Slow, name="flooded")
                await runtime.wait_idle(timeout=30)
            finally:
                Slow.delay = 0.002
    assert length <= maxlen + 200  # MAXLEN ~ trims whole stream nodes (100 entries)
    assert memory_peak - memory_before < 10 * 2**20
    assert len(Slow.handled) == length and max(Slow.handled) == 19_999
    assert "trimmed or deleted before any replica read them" in caplog.text


async def test_a_full_redis_refuses_sends_and_a_fresh_process_can_still_drain_it() -> None:
    """maxmemory with noeviction (what docs/operating.md recommends): once Redis is full,
    ``send`` fails with Redis's OOM error, and a runtime started then can still spawn
    the agent — the mailbox's group exists, reading and acknowledging need no memory —
    so the backlog drains and sends work again."""
    from ailf import RedisError, RedisServer

    Slow.handled, Slow.delay = set(), 0.0
    args = ("--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    try:
        with RedisServer(args=args) as server, trio.fail_after(60):
            async with Runtime(server.config, namespace="oom") as runtime:
                await runtime.spawn(Slow, name="drain")  # the group exists from now on
            sent = 0
            async with Runtime(server.config, namespace="oom") as runtime:
                with pytest.raises(RedisError, match="OOM"):
                    while True:
                        await runtime.send("drain", sent)
                        sent += 1
            async with Runtime(server.config, namespace="oom") as runtime:  # a fresh process
                await runtime.spawn(Slow, name="drain")
                while len(Slow.handled) < sent:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await runtime.client.xtrim("ailf:oom:mailbox:drain", maxlen=0)
                await runtime.send("drain", "room again")
                await runtime.wait_idle(timeout=20)
    finally:
        Slow.delay = 0.002
    assert sent > 1000 and Slow.handled == {*range(sent), "room again"}

"""Durable time with real processes: a sender SIGKILLed right after scheduling, a worker
SIGKILLed, Redis SIGKILLed and restarted from its AOF, reminders under several replicas.

Each timed message must enter its mailbox exactly once (one stream entry per message:
a handler may see an entry twice after a crash, as any message, but never two entries
for one timer) and never before it is due.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from runtime_helpers import child_process, ready

from ailf import RedisServer, Runtime

CHILD = Path(__file__).with_name("timers_child.py")


def arrivals(server: RedisServer) -> list[list[Any]]:
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    return [json.loads(line) for line in client.lrange("arrived", 0, -1)]


async def wait_arrived(server: RedisServer, count: int, seconds: float = 30) -> list[list[Any]]:
    with trio.fail_after(seconds):
        while True:
            lines = await trio.to_thread.run_sync(arrivals, server)
            if len({line[0]["n"] for line in lines if line[4] is None}) >= count:
                return lines
            await trio.sleep(0.1)


def check_once_and_never_early(lines: list[list[Any]], count: int) -> None:
    entries: dict[int, set[str]] = defaultdict(set)
    for body, entry_id, _pid, handled, _reminder in lines:
        entries[body["n"]].add(entry_id)
        assert handled >= body["due"], f"message {body['n']} arrived before it was due"
    assert sorted(entries) == list(range(count))
    twice = {n: ids for n, ids in entries.items() if len(ids) != 1}
    assert not twice, f"timers that entered their mailbox more than once: {twice}"


async def schedule(runtime: Runtime, count: int, low: float, high: float) -> None:
    for n in range(count):
        delay = random.uniform(low, high)
        due = time.time() + delay
        if n % 2:
            await runtime.send("clocks", {"n": n, "due": due}, key=f"k{n % 7}", delay=delay)
        else:
            await runtime.send("clock", {"n": n, "due": due}, delay=delay)


async def test_a_sender_killed_right_after_scheduling_loses_nothing(
    fresh_server: RedisServer,
) -> None:
    with child_process(CHILD, fresh_server.url, "p", "worker") as worker:
        await ready(worker)
        with child_process(CHILD, fresh_server.url, "p", "sender", "200") as sender:
            assert sender.stdout is not None
            line = await trio.to_thread.run_sync(sender.stdout.readline)
            assert line.strip() == "sent"
            sender.send_signal(signal.SIGKILL)
        check_once_and_never_early(await wait_arrived(fresh_server, 200), 200)


async def test_a_worker_killed_while_timers_fall_due(fresh_server: RedisServer) -> None:
    with ExitStack() as stack:
        workers = [
            stack.enter_context(child_process(CHILD, fresh_server.url, "p", "worker"))
            for _ in range(2)
        ]
        for worker in workers:
            await ready(worker)
        async with Runtime(fresh_server.config, namespace="p") as runtime:
            await schedule(runtime, 300, 0.2, 2.0)
        await trio.sleep(0.8)
        workers[0].send_signal(signal.SIGKILL)
        check_once_and_never_early(await wait_arrived(fresh_server, 300), 300)


@pytest.mark.slow
async def test_redis_killed_and_restarted_from_its_aof_keeps_every_timer() -> None:
    with (
        RedisServer(persistent=True) as server,
        trio.fail_after(90),
        child_process(CHILD, server.url, "p", "worker") as worker,
    ):
        await ready(worker)
        async with Runtime(server.config, namespace="p") as runtime:
            await schedule(runtime, 200, 0.5, 3.0)
        await trio.sleep(0.4)  # some have moved, most wait
        await trio.to_thread.run_sync(server.kill)
        await trio.sleep(1.0)  # timers fall due while Redis is down
        await trio.to_thread.run_sync(server.start)
        check_once_and_never_early(await wait_arrived(server, 200, seconds=60), 200)


@pytest.mark.slow
async def test_reminders_fire_once_per_period_under_replicas_kills_and_restarts() -> None:
    """Three processes host the agent and watch its reminders; one is SIGKILLed, then
    Redis is SIGKILLed and restarted from its AOF: each reminder still fires at most
    once per period (never once per process), and keeps firing."""
    period = 0.4
    with RedisServer(persistent=True) as server, ExitStack() as stack, trio.fail_after(90):
        workers = [
            stack.enter_context(child_process(CHILD, server.url, "p", "worker")) for _ in range(3)
        ]
        for worker in workers:
            await ready(worker)
        async with Runtime(server.config, namespace="p") as runtime:
            set_at = time.time()
            await runtime.set_reminder("clock", "tick", "named", every=period)
            await runtime.set_reminder("clocks", "tick", "keyed", key="k1", every=period)
        await trio.sleep(2.0)
        workers[0].send_signal(signal.SIGKILL)
        await trio.sleep(1.5)
        await trio.to_thread.run_sync(server.kill)
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(server.start)
        await trio.sleep(3.0)
        ended = time.time()
        lines = await trio.to_thread.run_sync(arrivals, server)
    for which in ("named", "keyed"):
        fired = [line for line in lines if line[0] == which]
        assert all(line[4] == "tick" for line in fired)
        ids = {line[1] for line in fired}
        most = int((ended - set_at) / period) + 1
        # Down for ~1 s (three periods): fired once for them, so at least a few fewer.
        assert 8 <= len(ids) <= most, (which, len(ids), most)
        assert max(line[3] for line in fired) > ended - 1.0  # still firing at the end

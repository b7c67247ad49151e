"""Durable time: how late timed messages arrive at 10,000 a second, and what waiting costs.

Two ways to deliver messages "in one second", measured in one run on one throwaway
redis-server:

* ``ailf``: ``runtime.send(agent, body, delay=...)`` from 50 tasks paced to ``--rate``
  messages a second; a worker process's agent records, per message, how late it was
  handled against the due time the sender computed before sending (so the figure
  includes the move into the mailbox, the read and the dispatch).
* ``ZADD + poll``: the loop people write by hand — producers ``ZADD`` the payload scored
  by its due time; a poller (redis-py asyncio, in its own process) takes what is due
  every 10 ms with a script (ZRANGEBYSCORE + ZREM) and records how late each was.

Then, with 10,000 timers pending an hour ahead and nothing due, the commands per second
each side sends to Redis while waiting (INFO commandstats over 3 s, the ailf worker's
heartbeats and claims included).

``python -m bench.time [--rate 10000] [--seconds 5] [--delay 1.0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import trio

from ailf import Agent, AsyncRedisClient, Message, RedisConfig, RedisServer, Runtime
from bench.machine import describe, machine

ROOT = Path(__file__).resolve().parent.parent
SENDERS = 50
POLL_INTERVAL = 0.01
BASELINE_KEY = "bench:timers"
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


class Late(Agent):
    """Records how late each timed message came; answers ``"count"`` with how many came
    and ``"report"`` with them all (once, at the end: encoding 50,000 figures takes
    long enough to make the messages behind it late)."""

    lateness: list[float] = []

    async def on_message(self, message: Message[Any]) -> Any:
        if message.body == "count":
            return len(Late.lateness)
        if message.body == "report":
            return Late.lateness
        Late.lateness.append(time.time() - message.body["due"])
        return None


async def role_ailf(config: RedisConfig) -> None:
    async with Runtime(config, namespace="bench-time") as runtime:
        await runtime.spawn(Late, "late")
        print("ready", flush=True)
        await runtime.run_forever()


async def role_poller(config: RedisConfig) -> None:
    client = redis.asyncio.Redis(**config.redis_py_kwargs())
    take = client.register_script(TAKE_DUE)
    lateness: list[float] = []
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    while not stop.is_set():
        now = time.time()
        for payload in await take(keys=[BASELINE_KEY], args=[now]):
            lateness.append(time.time() - json.loads(payload)["due"])
        await asyncio.sleep(POLL_INTERVAL)
    print(json.dumps(lateness), flush=True)
    await client.aclose()


class Role:
    """A role of this module in a process of its own."""

    def __init__(self, name: str, config: RedisConfig) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.time", "--role", name, "--url", config.url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def finish(self) -> str:
        """Tell the role to stop (its stdin closes); what it printed last."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        out = self.process.stdout.read()
        self.process.wait()
        return out

    def kill(self) -> None:
        self.process.terminate()
        self.process.wait()


async def paced(
    rate: float, seconds: float, send: Callable[[int], Awaitable[Any]]
) -> tuple[int, float]:
    """Call ``send(n)`` ``rate`` times a second for ``seconds`` from 50 tasks; returns
    how many were sent and the rate reached."""
    total = int(rate * seconds)
    start = trio.current_time() + 0.1

    async def sender(first: int) -> None:
        for n in range(first, total, SENDERS):
            await trio.sleep_until(start + n / rate)
            await send(n)

    async with trio.open_nursery() as nursery:
        for first in range(SENDERS):
            nursery.start_soon(sender, first)
    return total, total / (trio.current_time() - start)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1] * 1000, "n": len(ordered)}


def commands_per_second(config: RedisConfig, seconds: float = 3.0) -> float:
    client = redis.Redis(**config.redis_py_kwargs())

    def total() -> int:
        return sum(stats["calls"] for stats in client.info("commandstats").values())

    before = total()
    time.sleep(seconds)
    return (total() - before - 1) / seconds  # less the INFO reading it


async def ailf_side(
    config: RedisConfig, rate: float, seconds: float, delay: float
) -> dict[str, Any]:
    worker = Role("ailf", config)
    try:
        async with Runtime(config, namespace="bench-time") as runtime:

            async def send(n: int) -> None:
                await runtime.send("late", {"n": n, "due": time.time() + delay}, delay=delay)

            total, reached = await paced(rate, seconds, send)
            with trio.fail_after(60):
                # The worker is another process: asking again is the only way to know.
                while await runtime.ask("late", "count") < total:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            report = await runtime.ask("late", "report")
            figures = {**percentiles(report), "rate": reached}
            for n in range(10_000):
                await runtime.send("late", {"n": n, "due": 0}, delay=3600)
        figures["idle_commands_per_s"] = await trio.to_thread.run_sync(commands_per_second, config)
        return figures
    finally:
        worker.kill()


async def baseline_side(
    config: RedisConfig, rate: float, seconds: float, delay: float
) -> dict[str, Any]:
    poller = Role("poller", config)
    try:
        async with AsyncRedisClient(config) as client:

            async def send(n: int) -> None:
                due = time.time() + delay
                payload = json.dumps({"n": n, "due": due})
                await client.execute_command("ZADD", BASELINE_KEY, due, payload)

            total, reached = await paced(rate, seconds, send)
            await trio.sleep(delay + 0.5)
            await client.delete(BASELINE_KEY)
            later = time.time() + 3600
            pending = [part for n in range(10_000) for part in (later, json.dumps({"n": n}))]
            await client.execute_command("ZADD", BASELINE_KEY, *pending)
        idle = await trio.to_thread.run_sync(commands_per_second, config)
        report = json.loads(await trio.to_thread.run_sync(poller.finish))
        assert len(report) == total, (len(report), total)
        return {**percentiles(report), "rate": reached, "idle_commands_per_s": idle}
    finally:
        poller.kill()


def table(ailf: dict[str, Any], baseline: dict[str, Any]) -> str:
    rows = [
        "| delivery | messages | lateness p50 | p99 | max | Redis commands/s while 10,000 wait |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, figures in (
        ("ailf `send(delay=…)`", ailf),
        ("hand-written ZADD + 10 ms poll", baseline),
    ):
        rows.append(
            f"| {name} | {figures['n']:,} at {figures['rate']:,.0f}/s | {figures['p50']:.1f} ms"
            f" | {figures['p99']:.1f} ms | {figures['max']:.1f} ms"
            f" | {figures['idle_commands_per_s']:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.time", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rate", type=float, default=10_000, help="timed messages a second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to send")
    parser.add_argument("--delay", type=float, default=1.0, help="each message's delay")
    parser.add_argument("--role", choices=["ailf", "poller"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.role == "ailf":
        trio.run(role_ailf, RedisConfig.from_url(arguments.url))
        return
    if arguments.role == "poller":
        asyncio.run(role_poller(RedisConfig.from_url(arguments.url)))
        return
    with RedisServer() as server:
        config = server.config
        ailf = trio.run(ailf_side, config, arguments.rate, arguments.seconds, arguments.delay)
        redis.Redis(**config.redis_py_kwargs()).flushall()
        baseline = trio.run(
            baseline_side, config, arguments.rate, arguments.seconds, arguments.delay
        )
        print(describe(machine(config)))
    print(table(ailf, baseline))
    print(f"ailf p99 vs the poll loop's: {ailf['p99'] / baseline['p99']:.2f}x")


if __name__ == "__main__":
    main()

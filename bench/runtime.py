"""Benchmark the actor runtime against hand-written redis-py code, on a throwaway server.

Workloads, each with its baseline measured in the same run where there is one:

* tell, consumed: a no-op agent drains a mailbox pre-filled with N envelopes (its own
  process), against a hand-written redis-py loop in its own process (XREADGROUP COUNT
  = the same batch size, one ``json.loads`` per entry, one XACK per batch);
* tell, end to end: a producer process sends N messages from 50 concurrent senders
  while the agent's process consumes them;
* sending: 50 concurrent ``runtime.send`` tasks in one process;
* ask: sequential ``runtime.ask`` round trips to an echo agent in another process,
  against a hand-written redis-py asyncio ask (request stream read by a consumer group
  in another process, reply over one pub/sub subscription);
* 10,000 agents in one process: spawn time, time until every one answered an ask,
  Redis connections, RSS.

``python -m bench.runtime`` prints the figures; ``--write-docs`` also replaces the
Runtime section of docs/performance.md. The machine is assumed to be shared: compare
ratios within a run rather than absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import redis
import redis.asyncio
import trio

from ailf import Agent, Message, RedisConfig, RedisServer, Runtime
from ailf.runtime._message import encode_envelope
from bench.machine import describe, machine
from bench.process import ROOT

BATCH = 128
SENDERS = 50
NAMESPACE = "bench"
MAILBOX = f"ailf:{NAMESPACE}:mailbox:sink"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BODY = {"order": 12345, "item": "tea", "qty": 2, "note": "x" * 40}


def _emit(**figures: Any) -> None:
    print(json.dumps(figures), flush=True)


# -- roles: each runs in a process of its own ---------------------------------------


class Sink(Agent):
    """Counts messages; stops the runtime after the expected number."""

    expected = 0
    count = 0
    first = 0.0

    async def on_message(self, message: Message) -> None:
        if not Sink.count:
            Sink.first = time.perf_counter()
        Sink.count += 1
        if Sink.count == Sink.expected:
            _emit(seconds=time.perf_counter() - Sink.first, count=Sink.count)
            self.runtime.stop()


class Echo(Agent):
    async def on_message(self, message: Message) -> Any:
        return message.body


@attrs.define
class Tally:
    count: int = 0


class KeyedEcho(Agent):
    """A keyed agent whose state counts its key's messages: each one is a state commit."""

    state_type = Tally

    async def on_message(self, message: Message) -> Any:
        self.state.count += 1
        return self.state.count


async def role_consumer(config: RedisConfig, count: int) -> None:
    Sink.expected = count
    async with Runtime(config, namespace=NAMESPACE, batch_size=BATCH) as runtime:
        await runtime.spawn(Sink, name="sink")
        _emit(ready=True)
        await runtime.run_forever()


def role_baseline_consumer(config: RedisConfig, count: int) -> None:
    client = redis.Redis(**config.redis_py_kwargs())
    group, seen, first = "baseline", 0, 0.0
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(MAILBOX, group, id="0", mkstream=True)
    _emit(ready=True)
    while seen < count:
        reply = client.xreadgroup(group, "c1", {MAILBOX: ">"}, count=BATCH, block=1000)
        for _, entries in reply or ():
            if not seen:
                first = time.perf_counter()
            for _, fields in entries:
                json.loads(fields["envelope"])
            seen += len(entries)
            client.xack(MAILBOX, group, *[entry_id for entry_id, _ in entries])
    _emit(seconds=time.perf_counter() - first, count=seen)


async def role_sender(config: RedisConfig, count: int) -> None:
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        per_task = count // SENDERS

        async def sender() -> None:
            for _ in range(per_task):
                await runtime.send("sink", BODY)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(SENDERS):
                nursery.start_soon(sender)
        _emit(seconds=time.perf_counter() - started, count=per_task * SENDERS)


async def role_responder(config: RedisConfig, count: int) -> None:
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        await runtime.spawn(Echo, name="echo")
        _emit(ready=True)
        await runtime.run_forever()


async def role_keyed_responder(config: RedisConfig, count: int) -> None:
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        await runtime.spawn(KeyedEcho, name="keyed", keyed=True, replicas=64)
        _emit(ready=True)
        await runtime.run_forever()


async def role_baseline_responder(config: RedisConfig, count: int) -> None:
    client = redis.asyncio.Redis(**config.redis_py_kwargs())
    try:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: an earlier run's
            await client.xgroup_create("bench:requests", "g", id="$", mkstream=True)
        _emit(ready=True)
        while True:
            reply = await client.xreadgroup("g", "r", {"bench:requests": ">"}, 100, 0)
            for _, entries in reply:
                for _, fields in entries:
                    request = json.loads(fields["r"])
                    answer = json.dumps({"c": request["c"], "body": request["body"]})
                    await client.publish(request["reply_to"], answer)
                await client.xack("bench:requests", "g", *[e for e, _ in entries])
    finally:
        await client.aclose()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def spawn_and_ask(runtime: Runtime, count: int) -> dict[str, float]:
    """Spawn ``count`` echo agents from 50 concurrent spawners, asking each one as soon
    as it is spawned: seconds to spawn them all, until the last answer, and the slowest
    spawn-to-answer (the figure that matters)."""
    started = time.perf_counter()
    names = iter(range(count))
    slowest = last_answer = 0.0

    async def ask(name: str, spawned: float) -> None:
        nonlocal slowest, last_answer
        assert await runtime.ask(name, name, timeout=120) == name
        last_answer = time.perf_counter()
        slowest = max(slowest, last_answer - spawned)

    async with trio.open_nursery() as asks:

        async def spawner() -> None:
            for n in names:
                await runtime.spawn(Echo, name=f"many-{n}")
                asks.start_soon(ask, f"many-{n}", time.perf_counter())

        async with trio.open_nursery() as spawners:
            for _ in range(SENDERS):
                spawners.start_soon(spawner)
        spawned = time.perf_counter() - started
    return {
        "spawn_seconds": spawned,
        "all_answered_seconds": last_answer - started,
        "slowest_answer_seconds": slowest,
    }


async def role_many(config: RedisConfig, count: int) -> None:
    """:func:`spawn_and_ask` in a process of its own, with its connections and memory."""
    probe = redis.Redis(**config.redis_py_kwargs())
    config = config.replace(client_name="bench-many")  # to count this process's connections
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        figures = await spawn_and_ask(runtime, count)
        connections = sum(c["name"] == "bench-many" for c in probe.client_list())
        _emit(agents=count, **figures, connections=connections, rss_mb=_rss_mb())
    probe.close()


ROLES = {
    "consumer": role_consumer,
    "baseline_consumer": role_baseline_consumer,
    "sender": role_sender,
    "responder": role_responder,
    "baseline_responder": role_baseline_responder,
    "keyed_responder": role_keyed_responder,
    "many": role_many,
}


def run_role(name: str, url: str, count: int) -> None:
    config = RedisConfig.from_url(url)
    role = ROLES[name]
    if name == "baseline_responder":
        asyncio.run(role(config, count))
    elif name == "baseline_consumer":
        role(config, count)
    else:
        trio.run(role, config, count)


# -- the driver ---------------------------------------------------------------------


class Child:
    """A role in a subprocess; its stdout lines are JSON figures."""

    def __init__(self, role: str, config: RedisConfig, count: int) -> None:
        url = f"redis://{config.host}:{config.port}/0"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.runtime",
                "--role",
                role,
                "--url",
                url,
                "--count",
                f"{count}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench role exited with {self.process.wait()}")
        return json.loads(line)

    def close(self, wait: float = 0.0) -> None:
        """Wait up to ``wait`` seconds for the role to end by itself, then SIGTERM it."""
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait()


def prefill(config: RedisConfig, count: int) -> None:
    client = redis.Redis(**config.redis_py_kwargs())
    client.delete(MAILBOX)
    envelope = {"envelope": encode_envelope(BODY, sender="bench")}
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(MAILBOX, envelope)
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()


def _clear(config: RedisConfig) -> None:
    with redis.Redis(**config.redis_py_kwargs()) as client:
        client.delete(MAILBOX)


def consume(role: str, config: RedisConfig, count: int) -> float:
    prefill(config, count)
    consumer = Child(role, config, count)
    try:
        consumer.read()
        figures = consumer.read()
        return figures["count"] / figures["seconds"]
    finally:
        consumer.close(wait=10)


def end_to_end(config: RedisConfig, count: int) -> tuple[float, float]:
    _clear(config)
    consumer = Child("consumer", config, count)
    try:
        consumer.read()
        started = time.perf_counter()
        sender = Child("sender", config, count)
        sent = sender.read()
        sender.close(wait=10)
        consumer.read()
        return count / (time.perf_counter() - started), sent["count"] / sent["seconds"]
    finally:
        consumer.close(wait=10)


def sending(config: RedisConfig, count: int) -> float:
    _clear(config)
    sender = Child("sender", config, count)
    try:
        figures = sender.read()
        return figures["count"] / figures["seconds"]
    finally:
        sender.close(wait=10)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000


async def ailf_asks(config: RedisConfig, count: int) -> list[float]:
    """Seconds each of ``count`` sequential asks to the echo agent (after 200 to warm up)."""
    samples = []
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        for n in range(count + 200):
            started = time.perf_counter()
            await runtime.ask("echo", BODY, timeout=10)
            if n >= 200:
                samples.append(time.perf_counter() - started)
    return samples


async def baseline_asks(config: RedisConfig, count: int) -> list[float]:
    """The same with hand-written redis-py asyncio code, against ``baseline_responder``."""
    client = redis.asyncio.Redis(**config.redis_py_kwargs())
    pubsub = client.pubsub()
    channel = f"bench:reply:{uuid.uuid4().hex}"
    await pubsub.subscribe(channel)
    waiting: dict[str, asyncio.Future[Any]] = {}

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                reply = json.loads(message["data"])
                future = waiting.pop(reply["c"], None)
                if future is not None:
                    future.set_result(reply["body"])

    listener = asyncio.create_task(listen())
    samples = []
    try:
        for n in range(count + 200):
            started = time.perf_counter()
            correlation = str(n)
            future = asyncio.get_running_loop().create_future()
            waiting[correlation] = future
            request = json.dumps({"c": correlation, "reply_to": channel, "body": BODY})
            await client.xadd("bench:requests", {"r": request})
            await asyncio.wait_for(future, 10)
            if n >= 200:
                samples.append(time.perf_counter() - started)
    finally:
        listener.cancel()
        await pubsub.aclose()
        await client.aclose()
    return samples


@contextlib.contextmanager
def _responding(role: str, config: RedisConfig) -> Iterator[None]:
    responder = Child(role, config, 0)
    try:
        responder.read()
        yield
    finally:
        responder.close()


async def keyed_figures(
    config: RedisConfig, count: int, asks: int = 2000
) -> tuple[float, list[float]]:
    """Tell through a keyed agent (50 senders over 1,000 keys; done once an ask to each
    key, which queues behind its tells, is answered), msg/s; then sequential asks' times."""
    keys = [f"user-{n}" for n in range(1000)]
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        for key in keys[:50]:  # warm up: the agent's partitions are held, keys activated
            await runtime.ask("keyed", BODY, key=key, timeout=30)
        numbers = iter(range(count))

        async def sender() -> None:
            for n in numbers:
                await runtime.send("keyed", BODY, key=keys[n % len(keys)])

        async def last(key: str) -> None:
            await runtime.ask("keyed", BODY, key=key, timeout=60)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(SENDERS):
                nursery.start_soon(sender)
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(last, key)
        rate = (count + len(keys)) / (time.perf_counter() - started)
        samples = []
        for n in range(asks):
            asked = time.perf_counter()
            await runtime.ask("keyed", BODY, key=keys[n % len(keys)], timeout=10)
            samples.append(time.perf_counter() - asked)
    return rate, samples


def keyed_samples(config: RedisConfig, count: int, asks: int) -> tuple[float, list[float]]:
    """(tell msg/s, each ask's seconds) through a keyed agent in a process of its own."""
    with redis.Redis(**config.redis_py_kwargs()) as client:
        client.flushdb()  # a run starts with no state, leases or hosts of an earlier one
    with _responding("keyed_responder", config):
        return trio.run(keyed_figures, config, count, asks)


def keyed(config: RedisConfig, count: int) -> tuple[float, tuple[float, float]]:
    """(tell msg/s, (ask p50, p99) ms) through a keyed agent in a process of its own."""
    rate, samples = keyed_samples(config, count, 2000)
    return rate, _percentiles(samples)


def ailf_ask_samples(config: RedisConfig, count: int) -> list[float]:
    """:func:`ailf_asks` against an echo agent in a process of its own."""
    with _responding("responder", config):
        return trio.run(ailf_asks, config, count)


def baseline_ask_samples(config: RedisConfig, count: int) -> list[float]:
    """:func:`baseline_asks` against the hand-written responder in a process of its own."""
    with _responding("baseline_responder", config):
        return asyncio.run(baseline_asks(config, count))


def asks(config: RedisConfig, count: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(p50, p99) in ms of ailf's asks and of the hand-written baseline's."""
    ours = _percentiles(ailf_ask_samples(config, count))
    return ours, _percentiles(baseline_ask_samples(config, count))


def many(config: RedisConfig, count: int) -> dict[str, Any]:
    child = Child("many", config, count)
    try:
        return child.read()
    finally:
        child.close(wait=30)


def report(arguments: argparse.Namespace, config: RedisConfig) -> str:
    runs = arguments.runs
    count = int(200_000 * arguments.scale)
    ours = [consume("consumer", config, count) for _ in range(runs)]
    base = [consume("baseline_consumer", config, count) for _ in range(runs)]
    ends = [end_to_end(config, count) for _ in range(runs)]
    sends = [sending(config, count) for _ in range(runs)]
    (ask50, ask99), (base50, base99) = asks(config, int(5000 * arguments.scale))
    crowd = many(config, arguments.agents)
    keyed_tells = [keyed(config, count // 4) for _ in range(runs)]
    (k50, k99) = keyed_tells[-1][1]
    ratio = statistics.median(ours) / statistics.median(base)

    def rate(values: list[float]) -> str:
        return f"{max(values):,.0f} / {statistics.median(values):,.0f}"

    return "\n".join(
        [
            f"Measured by `python -m bench.runtime` on {describe(machine(config))}; {runs} runs"
            f" (best / median), {count:,} messages of ~150-byte envelopes, batch size"
            f" {BATCH}. Absolute figures move with whatever else the machine runs;"
            " ratios within a run are the fairer comparison.",
            "",
            "| workload | ailf | baseline (same run) | ailf / baseline (medians) | target |",
            "| --- | --- | --- | --- | --- |",
            f"| tell, consumed by a no-op agent (own process), msg/s | {rate(ours)}"
            f" | hand-written redis-py XREADGROUP/json.loads/XACK loop: {rate(base)}"
            f" | {ratio:.2f}x (higher is faster) | >= 20,000 msg/s |",
            f"| tell, end to end: producer process (50 senders) -> agent process, msg/s"
            f" | {rate([e[0] for e in ends])} | — | — | >= 20,000 msg/s |",
            f"| sending, 50 concurrent `runtime.send` in one process, msg/s | {rate(sends)}"
            f" | — | — | >= 20,000 msg/s |",
            f"| ask round trip, p50 / p99, ms | {ask50:.2f} / {ask99:.2f}"
            f" | hand-written redis-py asyncio ask: {base50:.2f} / {base99:.2f}"
            f" | {ask50 / base50:.2f}x / {ask99 / base99:.2f}x (lower is faster)"
            " | <= 0.6 / 1.5 ms |",
            f"| tell to a keyed agent with state (own process; 50 senders, 1,000 keys;"
            f" a state commit per message), msg/s | {rate([k[0] for k in keyed_tells])}"
            " | — | — | — |",
            f"| ask a keyed agent with state, p50 / p99, ms | {k50:.2f} / {k99:.2f} | — | — | — |",
            f"| {crowd['agents']:,} agents in one process (50 concurrent spawners, each"
            f" agent asked once spawned) | all spawned in {crowd['spawn_seconds']:.1f} s;"
            f" slowest spawn-to-answer {crowd['slowest_answer_seconds']:.1f} s; all"
            f" answered {crowd['all_answered_seconds']:.1f} s after the first spawn;"
            f" {crowd['connections']} Redis connections; RSS {crowd['rss_mb']:.0f} MB"
            " | — | — | <= 8 connections, <= 500 MB, answers within 10 s |",
        ]
    )


MARK_START = "<!-- bench/runtime.py: start -->"
MARK_END = "<!-- bench/runtime.py: end -->"


def write_docs(section: str) -> None:
    """Replace the generated part of the Runtime section (between the markers)."""
    text = DOCS.read_text() if DOCS.exists() else "# Performance\n"
    block = f"{MARK_START}\n{section}\n{MARK_END}"
    if MARK_START in text:
        pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + f"\n\n## Runtime\n\n{block}\n"
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.runtime", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--agents", type=int, default=10_000, help="agents in one process")
    parser.add_argument("--write-docs", action="store_true", help="update docs/performance.md")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.role:
        run_role(arguments.role, arguments.url, arguments.count)
        return
    with RedisServer() as server:
        section = report(arguments, server.config)
    print(section)
    if arguments.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()

"""Benchmark AsyncRedisClient against redis-py, on a throwaway local redis-server.

Three workloads, each with its baseline measured in the same run:

* 50 tasks sharing one AsyncRedisClient (trio), GET/SET mixed, against redis-py
  asyncio with a pool and 50 tasks;
* one task, one command at a time, against redis-py sync;
* XADD in pipelines of 100 (no MULTI/EXEC), against redis-py sync pipelines;
* the same two on the sync ``RedisClient``, against the same baselines: it runs the
  same command surface as the async client, over redis-py's connection pool.

Run ``python -m bench.client`` (``--runs 5`` to repeat; the table reports the best and
the median of the runs). Each run alternates four short segments of ailf and of its
baseline and adds up their times, so that load from other processes falls on both
sides; compare ratios within a run rather than absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
import trio

from ailf import AsyncRedisClient, RedisClient, RedisConfig, RedisServer
from bench.machine import describe, machine

TASKS = 50
BATCH = 100
SEGMENTS = 4  # each run alternates this many short segments of ailf and its baseline


def _ops_per_second(operations: int, started: float) -> float:
    return operations / (time.perf_counter() - started)


# -- 50 tasks --------------------------------------------------------------------------


async def ailf_tasks(config: RedisConfig, operations: int) -> float:
    async with AsyncRedisClient(config) as client:
        await client.set("bench:key", "x" * 64)
        per_task = operations // TASKS

        async def worker(n: int) -> None:
            key = f"bench:{n}"
            for _ in range(per_task // 2):
                await client.set(key, "value")
                await client.get(key)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(TASKS):
                nursery.start_soon(worker, n)
        return _ops_per_second(per_task // 2 * 2 * TASKS, started)


async def redis_py_asyncio_tasks(config: RedisConfig, operations: int) -> float:
    return await redis_py_tasks_on(redis.asyncio.Redis(**config.redis_py_kwargs()), operations)


async def redis_py_tasks_on(client: Any, operations: int) -> float:
    """50 asyncio tasks doing SET/GET on a redis-py asyncio client (closed after)."""
    try:
        per_task = operations // TASKS

        async def worker(n: int) -> None:
            key = f"bench:{n}"
            for _ in range(per_task // 2):
                await client.set(key, "value")
                await client.get(key)

        await asyncio.gather(*(worker(n) for n in range(TASKS)))  # warm the pool
        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(TASKS)))
        return _ops_per_second(per_task // 2 * 2 * TASKS, started)
    finally:
        await client.aclose()


# -- one task, one command at a time ---------------------------------------------------


async def ailf_sequential(config: RedisConfig, operations: int) -> float:
    async with AsyncRedisClient(config) as client:
        started = time.perf_counter()
        for _ in range(operations // 2):
            await client.set("bench:seq", "value")
            await client.get("bench:seq")
        return _ops_per_second(operations // 2 * 2, started)


def ailf_sync_sequential(config: RedisConfig, operations: int) -> float:
    with RedisClient(config) as client:
        client.get("bench:seq")  # connects
        started = time.perf_counter()
        for _ in range(operations // 2):
            client.set("bench:seq", "value")
            client.get("bench:seq")
        return _ops_per_second(operations // 2 * 2, started)


def redis_py_sequential(config: RedisConfig, operations: int) -> float:
    client = redis.Redis(**config.redis_py_kwargs())
    try:
        client.ping()
        started = time.perf_counter()
        for _ in range(operations // 2):
            client.set("bench:seq", "value")
            client.get("bench:seq")
        return _ops_per_second(operations // 2 * 2, started)
    finally:
        client.close()


# -- XADD in pipelines of 100 ----------------------------------------------------------

FIELDS = {"type": "bench", "body": '{"n": 1, "text": "a hundred-byte JSON message body"}'}


async def ailf_xadd_pipelines(config: RedisConfig, operations: int) -> float:
    async with AsyncRedisClient(config) as client:
        await client.delete("bench:stream")
        started = time.perf_counter()
        for _ in range(operations // BATCH):
            pipe = client.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.xadd("bench:stream", FIELDS, maxlen=100_000)
            await pipe.execute()
        return _ops_per_second(operations // BATCH * BATCH, started)


def ailf_sync_xadd_pipelines(config: RedisConfig, operations: int) -> float:
    with RedisClient(config) as client:
        client.delete("bench:stream")
        started = time.perf_counter()
        for _ in range(operations // BATCH):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(BATCH):
                    pipe.xadd("bench:stream", FIELDS, maxlen=100_000)
        return _ops_per_second(operations // BATCH * BATCH, started)


def redis_py_xadd_pipelines(config: RedisConfig, operations: int) -> float:
    client = redis.Redis(**config.redis_py_kwargs())
    try:
        client.delete("bench:stream")
        started = time.perf_counter()
        for _ in range(operations // BATCH):
            pipe = client.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.xadd("bench:stream", FIELDS, maxlen=100_000)
            pipe.execute()
        return _ops_per_second(operations // BATCH * BATCH, started)
    finally:
        client.close()


# -- running ---------------------------------------------------------------------------


def _measure(kind: str, function: Callable, config: RedisConfig, operations: int) -> float:
    if kind == "trio" and inspect.iscoroutinefunction(function):
        return trio.run(function, config, operations)
    if kind == "asyncio":
        return asyncio.run(function(config, operations))
    return function(config, operations)


def alternate(
    ours: Callable,
    base: Callable,
    base_kind: str,
    config: RedisConfig,
    count: int,
    segments: int = SEGMENTS,
) -> tuple[float, float]:
    """Run ``base`` and ``ours`` (a trio function, or a plain one for the sync client) in
    ``segments`` short segments of ``count`` operations each, taking turns, so that a
    burst of load from elsewhere falls on both sides; (ailf ops/s, baseline ops/s) over
    all the segments."""
    base_time = our_time = 0.0
    for _ in range(segments):
        base_time += count / _measure(base_kind, base, config, count)
        our_time += count / _measure("trio", ours, config, count)
    return count * segments / our_time, count * segments / base_time


WORKLOADS = [
    # (name, ailf function, baseline name, baseline function, baseline kind, operations, target)
    ("50 tasks, shared client", ailf_tasks, "redis-py asyncio, pool, 50 tasks",
     redis_py_asyncio_tasks, "asyncio", 200_000, 5.0),
    ("1 task, 1 command at a time", ailf_sequential, "redis-py sync",
     redis_py_sequential, "sync", 40_000, 1.1),
    ("XADD, pipelines of 100", ailf_xadd_pipelines, "redis-py sync pipelines",
     redis_py_xadd_pipelines, "sync", 200_000, 2.0),
]  # fmt: skip

#: The sync RedisClient against the same baselines (not in ``python -m bench``'s suite).
SYNC_WORKLOADS = [
    ("sync RedisClient, 1 command at a time", ailf_sync_sequential, "redis-py sync",
     redis_py_sequential, "sync", 40_000, 1.0),
    ("sync RedisClient, XADD pipelines of 100", ailf_sync_xadd_pipelines,
     "redis-py sync pipelines", redis_py_xadd_pipelines, "sync", 200_000, 1.0),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    parser.add_argument("--unix", action="store_true", help="use a unix socket, not TCP")
    arguments = parser.parse_args()

    with RedisServer(unix_socket=arguments.unix) as server:
        config = server.config
        print(describe(machine(config)))
        rows = []
        for name, ours, base_name, base, base_kind, operations, target in (
            WORKLOADS + SYNC_WORKLOADS
        ):
            count = int(operations * arguments.scale) // SEGMENTS
            ratios, ours_rates, base_rates = [], [], []
            for _ in range(arguments.runs):
                our_rate, base_rate = alternate(ours, base, base_kind, config, count)
                base_rates.append(base_rate)
                ours_rates.append(our_rate)
                ratios.append(our_rate / base_rate)
            rows.append((name, ours_rates, base_name, base_rates, ratios, target))

    print()
    print(
        "| workload | ailf ops/s (best / median) | baseline | baseline ops/s (best / median)"
        " | ratio (best / median) | target |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, ours_rates, base_name, base_rates, ratios, target in rows:
        print(
            f"| {name} | {max(ours_rates):,.0f} / {statistics.median(ours_rates):,.0f}"
            f" | {base_name} | {max(base_rates):,.0f} / {statistics.median(base_rates):,.0f}"
            f" | {max(ratios):.2f}x / {statistics.median(ratios):.2f}x | >= {target}x |"
        )


if __name__ == "__main__":
    main()

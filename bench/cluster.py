"""Benchmark AsyncRedisClient on a Redis Cluster (3 primaries on loopback).

Two comparisons, each measured in the same run, in alternating segments:

* 50 tasks sharing one AsyncRedisClient on the cluster (trio), GET/SET mixed over keys
  of every slot, against redis-py's asyncio ``RedisCluster`` with 50 tasks (target at least 5x,
  as on one node);
* the same ailf workload on the cluster against ailf on one server: what routing by
  slot and spreading the work over three servers cost together (target at least 0.8x);
* the workload on a cluster of one primary against one server: what routing alone
  costs, with the same one server doing the work (three servers and the client share
  this machine's cores in the row above).

Run ``python -m bench.cluster`` (``--runs 5`` to repeat). The figures go in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics

import redis.asyncio.cluster

from ailf import RedisClusterServer, RedisConfig, RedisServer
from bench.client import SEGMENTS, _measure, ailf_tasks, redis_py_tasks_on
from bench.machine import describe, machine


async def redis_py_cluster_tasks(config: RedisConfig, operations: int) -> float:
    client = redis.asyncio.cluster.RedisCluster(host=config.host, port=config.port)
    return await redis_py_tasks_on(client, operations)


def compare(
    ours: tuple[RedisConfig, str], base: tuple[RedisConfig, str, object], count: int
) -> tuple[float, float]:
    """(ailf ops/s, baseline ops/s), over ``SEGMENTS`` alternating segments."""
    our_config, _ = ours
    base_config, base_kind, base_function = base
    our_time = base_time = 0.0
    for _ in range(SEGMENTS):
        base_time += count / _measure(base_kind, base_function, base_config, count)  # type: ignore[arg-type]
        our_time += count / _measure("trio", ailf_tasks, our_config, count)
    return count * SEGMENTS / our_time, count * SEGMENTS / base_time


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    arguments = parser.parse_args()
    count = int(200_000 * arguments.scale) // SEGMENTS

    with (
        RedisClusterServer(primaries=3, replicas=0) as cluster,
        RedisClusterServer(primaries=1, replicas=0) as lone,
        RedisServer() as single,
    ):
        on_cluster = RedisConfig.from_url(cluster.url)
        print(describe(machine(single.config)))
        print(f"cluster: 3 primaries on loopback, {cluster.url}")
        rows = [
            (
                "50 tasks, shared client, on the cluster",
                "redis-py asyncio RedisCluster, 50 tasks",
                (on_cluster, "trio"),
                (on_cluster, "asyncio", redis_py_cluster_tasks),
                5.0,
            ),
            (
                "50 tasks, shared client, on the cluster",
                "ailf, 50 tasks, on one server",
                (on_cluster, "trio"),
                (single.config, "trio", ailf_tasks),
                0.8,
            ),
            (
                "50 tasks, shared client, on a 1-primary cluster",
                "ailf, 50 tasks, on one server",
                (RedisConfig.from_url(lone.url), "trio"),
                (single.config, "trio", ailf_tasks),
                0.8,
            ),
        ]
        results = []
        for name, base_name, ours, base, target in rows:
            ours_rates, base_rates, ratios = [], [], []
            for _ in range(arguments.runs):
                our_rate, base_rate = compare(ours, base, count)
                ours_rates.append(our_rate)
                base_rates.append(base_rate)
                ratios.append(our_rate / base_rate)
            results.append((name, ours_rates, base_name, base_rates, ratios, target))

    print()
    print(
        "| workload | ailf ops/s (best / median) | baseline | baseline ops/s (best / median)"
        " | ratio (best / median) | target |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, ours_rates, base_name, base_rates, ratios, target in results:
        print(
            f"| {name} | {max(ours_rates):,.0f} / {statistics.median(ours_rates):,.0f}"
            f" | {base_name} | {max(base_rates):,.0f} / {statistics.median(base_rates):,.0f}"
            f" | {max(ratios):.2f}x / {statistics.median(ratios):.2f}x | >= {target}x |"
        )


if __name__ == "__main__":
    main()

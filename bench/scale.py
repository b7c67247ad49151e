"""Scale in one process: many named agents, many keys, and what they cost Redis.

Two workloads, each on a throwaway ``redis-server`` of its own, in this process:

* **named**: ``--agents`` echo agents (100,000) spawned by 50 concurrent spawners, each
  asked once as soon as it is spawned;
* **keyed**: one keyed agent (64 partitions, 64 keys at once) sent ``--keys`` messages
  (200,000), each to a key of its own, by 50 concurrent senders.

For each: the time it took, Redis's mean time per XREADGROUP and how many took over
1 ms (Redis's SLOWLOG), the process's Redis connections and memory, and then what the
idle process costs Redis over ``--idle`` seconds: commands per second and Redis CPU.

Run ``python -m bench.scale``; the figures go in docs/performance.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import attrs
import redis
import trio

from ailf import Agent, Message, RedisServer, Runtime
from bench.machine import describe, machine
from bench.runtime import spawn_and_ask

SENDERS = 50
NAME = "bench-scale"


@attrs.define
class Seen:
    count: int = 0


class Keyed(Agent):
    state_type = Seen

    async def on_message(self, message: Message[Any]) -> None:
        self.state.count += 1


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RedisProbe:
    """What Redis says about itself: command statistics, slow commands, CPU."""

    def __init__(self, server: RedisServer) -> None:
        self.client = redis.Redis(port=server.port, decode_responses=True)
        self.client.config_set("slowlog-log-slower-than", 1000)
        self.client.config_set("slowlog-max-len", 100_000)

    def reset(self) -> None:
        self.client.config_resetstat()
        self.client.slowlog_reset()

    def xreadgroup(self) -> tuple[int, float, int]:
        """(calls, mean µs per call, calls over 1 ms) since the last reset."""
        stats = self.client.info("commandstats").get("cmdstat_xreadgroup", {})
        slow = sum(
            1
            for entry in self.client.slowlog_get(100_000)
            if str(entry["command"]).upper().startswith("XREADGROUP")
        )
        return int(stats.get("calls", 0)), float(stats.get("usec_per_call", 0.0)), slow

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def connections(self) -> int:
        return sum(c["name"] == NAME for c in self.client.client_list())

    def calls(self) -> dict[str, int]:
        return {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in self.client.info("commandstats").items()
        }

    async def idle(self, seconds: float) -> tuple[float, float, str]:
        """(commands per second, % of one core, the commonest commands) Redis spends on
        an idle process."""
        calls, cpu, started = self.calls(), self.cpu(), time.perf_counter()
        await trio.sleep(seconds)
        elapsed = time.perf_counter() - started
        after = self.calls()
        rates = {
            name: (count - calls.get(name, 0)) / elapsed
            for name, count in after.items()
            if name != "info" and count > calls.get(name, 0)
        }
        top = sorted(rates.items(), key=lambda item: -item[1])[:4]
        return (
            sum(rates.values()),
            100 * (self.cpu() - cpu) / elapsed,
            ", ".join(f"{name} {rate:.0f}/s" for name, rate in top),
        )


async def named(server: RedisServer, count: int, idle: float) -> dict[str, Any]:
    probe = RedisProbe(server)
    probe.reset()
    config = server.config.replace(client_name=NAME)
    async with Runtime(config, namespace="scale") as runtime:
        figures = await spawn_and_ask(runtime, count)
        reads = probe.xreadgroup()
        connections = probe.connections()
        await trio.sleep(5)  # the first claims and sweeps of the new mailboxes settle
        idle_commands, idle_cpu, idle_top = await probe.idle(idle)
        return {
            "count": count,
            "idle_top": idle_top,
            **figures,
            "reads": reads,
            "connections": connections,
            "rss": _rss_mb(),
            "idle_commands": idle_commands,
            "idle_cpu": idle_cpu,
        }


async def keyed(server: RedisServer, count: int, idle: float) -> dict[str, Any]:
    probe = RedisProbe(server)
    probe.reset()
    config = server.config.replace(client_name=NAME)
    async with Runtime(config, namespace="scale") as runtime:
        await runtime.spawn(Keyed, name="keyed", keyed=True, replicas=64, partitions=64)
        started = time.perf_counter()
        keys = iter(range(count))

        async def sender() -> None:
            for n in keys:
                await runtime.send("keyed", None, key=f"key-{n}")

        async with trio.open_nursery() as senders:
            for _ in range(SENDERS):
                senders.start_soon(sender)
        sent = time.perf_counter() - started
        while runtime.statistics()["keyed"].processed < count:  # noqa: ASYNC110 - a counter
            await trio.sleep(0.05)
        handled = time.perf_counter() - started
        reads = probe.xreadgroup()
        connections = probe.connections()
        rss = _rss_mb()
        await trio.sleep(5)
        idle_commands, idle_cpu, idle_top = await probe.idle(idle)
        saved = await runtime.client.execute_command(
            "HLEN", runtime.keys.partition("keyed", 0).state
        )
        return {
            "count": count,
            "sent": sent,
            "handled": handled,
            "reads": reads,
            "connections": connections,
            "rss": rss,
            "idle_commands": idle_commands,
            "idle_cpu": idle_cpu,
            "saved_in_partition_0": saved,
            "idle_top": idle_top,
        }


def report(arguments: argparse.Namespace) -> str:
    # Keyed first: a process keeps the memory it once used, so the named workload's
    # 100,000 agents would show in the keyed one's RSS.
    with RedisServer() as server:
        header = describe(machine(server.config))
        keys = trio.run(keyed, server, arguments.keys, arguments.idle)
    with RedisServer() as server:
        many = trio.run(named, server, arguments.agents, arguments.idle)
    calls, mean, slow = many["reads"]
    kcalls, kmean, kslow = keys["reads"]
    return "\n".join(
        [
            f"Measured by `python -m bench.scale` on {header}; idle cost over"
            f" {arguments.idle:.0f} s.",
            "",
            "| workload | time | XREADGROUP (calls, mean, over 1 ms) | connections | RSS |"
            " idle: commands/s, Redis CPU |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {many['count']:,} named agents spawned (50 spawners), each asked once"
            f" | spawned in {many['spawn_seconds']:.1f} s,"
            f" all answered at {many['all_answered_seconds']:.1f} s,"
            f" slowest spawn-to-answer {many['slowest_answer_seconds']:.1f} s"
            f" | {calls:,}, {mean:.0f} µs, {slow} | {many['connections']}"
            f" | {many['rss']:.0f} MB | {many['idle_commands']:.0f}, {many['idle_cpu']:.1f} % |",
            f"| {keys['count']:,} keys of one keyed agent messaged once each (50 senders,"
            f" state saved per message) | sent in {keys['sent']:.1f} s, all handled at"
            f" {keys['handled']:.1f} s ({keys['count'] / keys['handled']:,.0f} msg/s)"
            f" | {kcalls:,}, {kmean:.0f} µs, {kslow} | {keys['connections']}"
            f" | {keys['rss']:.0f} MB | {keys['idle_commands']:.0f}, {keys['idle_cpu']:.1f} % |",
            "",
            f"Idle commands, named: {many['idle_top']}; keyed: {keys['idle_top']}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--agents", type=int, default=100_000, help="named agents")
    parser.add_argument("--keys", type=int, default=200_000, help="keys messaged once")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    print(report(parser.parse_args()))


if __name__ == "__main__":
    main()

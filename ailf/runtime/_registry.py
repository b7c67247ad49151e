"""The registry of live processes and their agents, kept in Redis by heartbeats.

Every runtime writes, every ``heartbeat_interval`` seconds, one hash
``ailf:{ns}:process:{id}`` (host, pid, start time, last heartbeat, its agents and their
replica counts, its per-agent counters as JSON) with a TTL of three intervals, and
scores its id with the heartbeat time in the sorted set ``ailf:{ns}:processes``. A
process that dies stops refreshing both: its hash expires and readers skip and prune
ids whose score is older than the TTL. Anyone can read the registry, a process that
hosts no agent included: a process is live while its hash exists, so a reader need not
know the writers' heartbeat intervals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ailf.codec import dumps, loads
from ailf.runtime._statistics import AgentStatistics

if TYPE_CHECKING:
    from ailf.clients._async_client import AsyncRedisClient
    from ailf.runtime._keys import Keys

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TTL_INTERVALS",
    "AgentInfo",
    "Heartbeat",
    "ProcessInfo",
    "RegistrySnapshot",
    "read_registry",
    "write_heartbeat",
]

log = logging.getLogger("ailf.runtime")

#: Seconds between a runtime's heartbeats, unless ``Runtime(heartbeat_interval=...)``.
HEARTBEAT_INTERVAL = 2.0
#: A process's registry entry expires this many heartbeat intervals after its last one.
HEARTBEAT_TTL_INTERVALS = 3


@attrs.frozen
class ProcessInfo:
    """One live runtime process, as of its last heartbeat."""

    id: str
    host: str
    pid: int
    started: float
    last_heartbeat: float
    agents: dict[str, int]
    statistics: dict[str, AgentStatistics]
    #: Agent name -> why its mailbox is not being read here (its key is not a stream).
    problems: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class AgentInfo:
    """One agent name across the namespace: its replicas and where they run."""

    name: str
    replicas: int
    processes: tuple[str, ...]


@attrs.frozen
class RegistrySnapshot:
    """Every live process and agent in a namespace, with counters summed over processes."""

    processes: tuple[ProcessInfo, ...]
    agents: dict[str, AgentInfo]
    statistics: dict[str, AgentStatistics]


async def write_heartbeat(
    client: AsyncRedisClient,
    keys: Keys,
    process: str,
    fields: dict[str, Any],
    ttl: float,
) -> None:
    """Publish one heartbeat: the process hash, its TTL and its score, in one round trip."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.process(process), mapping={**fields, "heartbeat": repr(now)})
    ttl_ms = int(ttl * 1000)
    pipe.pexpire(keys.process(process), ttl_ms)
    pipe.execute_command("ZADD", keys.processes, now, process)
    pipe.execute_command("ZREMRANGEBYSCORE", keys.processes, "-inf", now - ttl)
    await pipe.execute(raise_on_error=False)


class Heartbeat:
    """Keeps one process's registry entry fresh by calling ``beat``.

    Every ``interval`` seconds, whatever the last beat cost, and soon after
    :meth:`announce` (a spawn, a replica's end), so that other processes (``ailf
    status``) see the change at once. Those extra beats wait ten times as long as the
    last one took, so that spawning 10,000 agents (a beat then takes milliseconds) costs
    a handful of beats, not one each; the regular ones never wait for that, so that a
    beat slowed by a stalled Redis does not make the process look gone.
    """

    def __init__(self, interval: float, beat: Callable[[], Awaitable[None]]) -> None:
        self.interval = interval
        self._beat = beat
        self._announced = trio.Event()
        self._stopped = False

    def announce(self) -> None:
        """Beat soon: something other processes should see has changed."""
        self._announced.set()

    def stop(self) -> None:
        """Beat no more: the process is leaving the registry."""
        self._stopped = True

    async def run(self) -> None:
        due = trio.current_time() + self.interval
        calm_until = 0.0
        while True:
            with trio.move_on_at(due):
                await self._announced.wait()
                await trio.sleep_until(calm_until)
            self._announced = trio.Event()
            if self._stopped:
                return
            started = trio.current_time()
            try:
                await self._beat()
            except Exception as exc:
                log.warning("registry heartbeat failed: %s", exc)
            now = trio.current_time()
            due = started + self.interval
            calm_until = now + 10 * (now - started)


def heartbeat_fields(
    host: str,
    pid: int,
    started: float,
    agents: dict[str, int],
    stats: list[AgentStatistics],
    problems: dict[str, str],
) -> dict[str, str]:
    return {
        "host": host,
        "pid": str(pid),
        "started": repr(started),
        "agents": dumps(agents),
        # Agents that have received nothing are left out (readers fill in zeros), so that
        # a process hosting thousands of idle agents publishes a small heartbeat.
        "statistics": dumps([s.to_json() for s in stats if s.received]),
        "problems": dumps(problems),
    }


def _process_info(process: str, data: dict[str, str]) -> ProcessInfo | None:
    try:
        stats = [AgentStatistics.from_json(s) for s in loads(data.get("statistics", "[]"))]
        agents = {str(k): int(v) for k, v in loads(data.get("agents", "{}")).items()}
        by_name = {name: AgentStatistics(name, replicas) for name, replicas in agents.items()}
        by_name.update((s.name, s) for s in stats)
        problems = {str(k): str(v) for k, v in loads(data.get("problems", "{}")).items()}
        return ProcessInfo(
            id=process,
            host=data.get("host", ""),
            pid=int(data.get("pid", 0)),
            started=float(data.get("started", 0.0)),
            last_heartbeat=float(data.get("heartbeat", 0.0)),
            agents=agents,
            statistics=by_name,
            problems=problems,
        )
    except (ValueError, TypeError, AttributeError):
        return None


async def read_registry(
    client: AsyncRedisClient, keys: Keys, ttl: float | None = None
) -> RegistrySnapshot:
    """Read every live process: its entry has not expired (each process's expires
    :data:`HEARTBEAT_TTL_INTERVALS` of its own heartbeat intervals after its last one)
    and, if ``ttl`` is given, its last heartbeat is younger than ``ttl`` seconds."""
    low = "-inf" if ttl is None else time.time() - ttl
    ids = await client.execute_command("ZRANGEBYSCORE", keys.processes, low, "+inf")
    processes: list[ProcessInfo] = []
    if ids:
        pipe = client.pipeline(transaction=False)
        for process in ids:
            pipe.hgetall(keys.process(process))
        for process, data in zip(ids, await pipe.execute(raise_on_error=False), strict=True):
            info = _process_info(process, data) if isinstance(data, dict) and data else None
            if info is not None:
                processes.append(info)
    agents: dict[str, list[tuple[str, int]]] = {}
    parts: dict[str, list[AgentStatistics]] = {}
    for info in processes:
        for name, replicas in info.agents.items():
            agents.setdefault(name, []).append((info.id, replicas))
        for name, stats in info.statistics.items():
            parts.setdefault(name, []).append(stats)
    return RegistrySnapshot(
        processes=tuple(processes),
        agents={
            name: AgentInfo(name, sum(r for _, r in where), tuple(p for p, _ in where))
            for name, where in sorted(agents.items())
        },
        statistics={
            name: AgentStatistics.combine(name, found) for name, found in sorted(parts.items())
        },
    )

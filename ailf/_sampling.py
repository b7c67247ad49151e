"""A namespace watched over time: what ``ailf top`` and ``ailf dashboard`` show.

Everything comes from Redis, as ``ailf status --json`` reads it
(:func:`ailf._admin.namespace_status`): the registry of live processes with their
counters (as of each one's last heartbeat, every 2 s by default), and per agent its
mailbox's backlog, lag and pending entries and its dead letters. Rates are what Redis
cannot say at one instant: :class:`History` keeps the counters of the last minutes and
turns them into messages per second.

A process that leaves takes its counters out of the sums; a drop is read as a new
start, not as a negative rate.
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any

import attrs

from ailf._admin import namespace_status
from ailf.clients._async_client import AsyncRedisClient

__all__ = ["AgentView", "History", "NamespaceView", "sample"]

#: Seconds of counters the rate of "now" is computed over: a few heartbeats, so that
#: counters reported every 2 s read as a steady rate, not as bursts.
RATE_WINDOW = 10.0
#: Seconds of history kept (the dashboard's chart).
HISTORY = 300.0


@attrs.frozen
class AgentView:
    """One agent's row: what runs it, what it did, what waits for it."""

    name: str
    replicas: int
    processes: int
    #: Handlers finished per second over the last RATE_WINDOW seconds (None: not yet known).
    rate: float | None
    handled: int
    failed: int
    retried: int
    dead_lettered: int
    #: Unread plus pending entries of the mailbox.
    backlog: int
    lag: int | None
    #: Delivered to a consumer and not yet acknowledged: being handled, or queued for it.
    pending: int | None
    dead_letters: int
    problem: str | None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class NamespaceView:
    """A namespace at one moment, with its agents' rates."""

    namespace: str
    taken_at: float
    processes: tuple[dict[str, Any], ...]
    agents: tuple[AgentView, ...]
    #: False when this Redis user may not SCAN: only live processes' agents are listed.
    complete: bool

    @property
    def hosts(self) -> list[str]:
        return sorted({process["host"] for process in self.processes})

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "taken_at": self.taken_at,
            "processes": list(self.processes),
            "hosts": self.hosts,
            "agents": [agent.to_json() for agent in self.agents],
            "complete": self.complete,
        }


class History:
    """The handled counters of each agent over the last :data:`HISTORY` seconds."""

    def __init__(self) -> None:
        self._points: dict[str, collections.deque[tuple[float, int]]] = {}

    def add(self, at: float, handled: dict[str, int]) -> None:
        for name, count in handled.items():
            points = self._points.setdefault(name, collections.deque())
            points.append((at, count))
            while points and at - points[0][0] > HISTORY:
                points.popleft()

    def rate(
        self, name: str, until: float | None = None, window: float = RATE_WINDOW
    ) -> float | None:
        """Messages per second over ``window`` seconds up to ``until`` (default: the last
        point); None until two points span some time."""
        points = list(self._points.get(name, ()))
        if until is not None:
            points = [point for point in points if point[0] <= until]
        if len(points) < 2:
            return None
        end = points[-1][0]
        inside = [point for point in points if end - point[0] <= window]
        if len(inside) < 2:
            inside = points[-2:]
        span = inside[-1][0] - inside[0][0]
        if span <= 0:
            return None
        done = sum(max(0, b[1] - a[1]) for a, b in itertools.pairwise(inside))
        return done / span

    def series(self, name: str) -> list[tuple[float, float]]:
        """(time, rate) at each point of the history that has a rate: the chart's line."""
        found = []
        for at, _ in self._points.get(name, ()):
            rate = self.rate(name, until=at)
            if rate is not None:
                found.append((at, rate))
        return found


async def sample(client: AsyncRedisClient, namespace: str, history: History) -> NamespaceView:
    """The namespace now, its counters added to ``history`` and its rates from it."""
    status = await namespace_status(client, namespace)
    now = time.time()
    handled = {
        name: (agent["statistics"] or {}).get("processed", 0)
        for name, agent in status["agents"].items()
    }
    history.add(now, handled)
    agents = []
    for name, agent in status["agents"].items():
        stats = agent["statistics"] or {}
        agents.append(
            AgentView(
                name=name,
                replicas=agent["replicas"],
                processes=agent["processes"],
                rate=history.rate(name),
                handled=stats.get("processed", 0),
                failed=stats.get("failed", 0),
                retried=stats.get("retried", 0),
                dead_lettered=stats.get("dead_lettered", 0),
                backlog=agent["backlog"],
                lag=agent["lag"],
                pending=agent["pending"],
                dead_letters=agent["dead_letters"],
                problem=agent["problem"],
            )
        )
    return NamespaceView(
        namespace=namespace,
        taken_at=now,
        processes=tuple(status["processes"]),
        agents=tuple(agents),
        complete=status["complete"],
    )

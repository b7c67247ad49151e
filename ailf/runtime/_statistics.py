"""Per-agent counters, and the frozen records ``Runtime.statistics()`` returns.

Counting is plain integer arithmetic on the hot path; percentiles are computed only when
someone asks, from the last :data:`SAMPLES` handler durations.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import attrs

__all__ = ["AgentStatistics", "Counters"]

#: How many recent handler durations each agent keeps for its latency percentiles.
SAMPLES = 2048


@attrs.frozen
class AgentStatistics:
    """What one agent did, in this process (``statistics()``) or summed over every
    process (``cluster_statistics()``). Latencies are handler durations in seconds.

    ``received`` counts mailbox messages and broadcasts handed to a handler (or found
    undecodable), ``processed`` handlers that returned — for mailbox messages and
    broadcasts alike; ``mailbox_processed`` counts the mailbox messages among them —
    ``failed`` handlers that raised, ``retried`` redeliveries scheduled after a failure,
    ``dead_lettered`` messages given up on. In cluster figures the percentiles are the
    worst process's.

    ``replicas`` counts the instances running; once the runtime has stopped, those that
    ran when it began to stop (so a final snapshot still says how the agent was run).
    ``active_keys`` counts a keyed agent's keys active now (0 for other agents).
    """

    name: str
    replicas: int = 0
    received: int = 0
    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    mailbox_processed: int = 0
    active_keys: int = 0
    latency_p50: float = 0.0
    latency_p99: float = 0.0
    latency_mean: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in _FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentStatistics:
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})

    @classmethod
    def combine(cls, name: str, parts: list[AgentStatistics]) -> AgentStatistics:
        """Sum counters over processes; the mean weighted by processed, percentiles the max."""
        processed = sum(p.processed for p in parts)
        mean = sum(p.latency_mean * p.processed for p in parts) / processed if processed else 0.0
        return cls(
            name=name,
            **{count: sum(getattr(p, count) for p in parts) for count in COUNTS},
            latency_p50=max((p.latency_p50 for p in parts), default=0.0),
            latency_p99=max((p.latency_p99 for p in parts), default=0.0),
            latency_mean=mean,
        )


_FIELDS = tuple(field.name for field in attrs.fields(AgentStatistics))
#: The plain counters: kept by :class:`Counters`, summed across processes as they are.
COUNTS = (
    "replicas",
    "received",
    "processed",
    "failed",
    "retried",
    "dead_lettered",
    "mailbox_processed",
    "active_keys",
)


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@attrs.define
class Counters:
    """The mutable counters of one agent name in one process (shared by its replicas)."""

    name: str
    replicas: int = 0
    received: int = 0
    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    mailbox_processed: int = 0
    active_keys: int = 0
    total_latency: float = 0.0
    handled: int = 0
    samples: deque[float] = attrs.field(factory=lambda: deque(maxlen=SAMPLES))
    _snapshot: AgentStatistics | None = None
    _snapshot_of: tuple[int, ...] = ()

    def handler_finished(self, seconds: float) -> None:
        self.handled += 1
        self.total_latency += seconds
        self.samples.append(seconds)

    def snapshot(self) -> AgentStatistics:
        """The counters as a frozen record (cached until a counter changes)."""
        counts = {count: getattr(self, count) for count in COUNTS}
        state = (*counts.values(), self.handled)
        if self._snapshot is not None and state == self._snapshot_of:
            return self._snapshot
        ordered = sorted(self.samples)
        self._snapshot_of = state
        self._snapshot = AgentStatistics(
            name=self.name,
            **counts,
            latency_p50=_percentile(ordered, 0.50),
            latency_p99=_percentile(ordered, 0.99),
            latency_mean=self.total_latency / self.handled if self.handled else 0.0,
        )
        return self._snapshot

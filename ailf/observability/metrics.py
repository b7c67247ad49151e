"""Prometheus metrics of a runtime: what its agents did, and what their mailboxes hold.

Needs ``prometheus-client`` (``pip install 'ailf[metrics]'``). A ``Runtime`` made with
``metrics_port=`` serves them over HTTP at ``/metrics`` for as long as it runs, from a
registry of its own (two runtimes in one process serve two endpoints, not one mixed).

Most figures cost nothing per message: the message counters are the runtime's own
(``Runtime.statistics()``), read when Prometheus scrapes; the mailbox gauges are read
from Redis every few seconds (one round trip per agent). Only the two histograms —
handler and ``ask()`` durations — observe each message. docs/observability.md lists
every metric with its labels and unit.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import attrs

from ailf.errors import ConfigError

__all__ = ["AgentCounts", "Histogram", "MailboxState", "Metrics", "available"]

try:
    import prometheus_client as _prometheus
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError:  # the extra is not installed: Metrics() says what to install
    _prometheus = None  # type: ignore[assignment]
    Collector = object  # type: ignore[assignment,misc]

#: Histogram buckets in seconds, for handlers and asks: 0.5 ms to 30 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: The message counters: (metric name without ``_total``, counter attribute, help).
COUNTERS = (
    ("ailf_messages_received", "received", "Messages handed to a handler (or found undecodable)"),
    ("ailf_messages_handled", "processed", "Handlers that returned (mailbox and broadcasts)"),
    ("ailf_messages_failed", "failed", "Handlers that raised"),
    ("ailf_messages_retried", "retried", "Redeliveries scheduled after a handler raised"),
    ("ailf_messages_dead_lettered", "dead_lettered", "Messages moved to the dead letters"),
)

#: The mailbox gauges: (metric name, MailboxState attribute, help).
GAUGES = (
    ("ailf_mailbox_backlog", "backlog", "Entries not yet handled: unread plus pending"),
    ("ailf_mailbox_lag", "lag", "Entries not yet delivered to any consumer"),
    ("ailf_mailbox_pending", "pending", "Entries delivered and not yet acknowledged"),
    ("ailf_dead_letters", "dead_letters", "Entries in the agent's dead-letter stream"),
)


def available() -> bool:
    """True when ``prometheus-client`` is installed."""
    return _prometheus is not None


class AgentCounts(Protocol):
    """One agent's counters in this process, as the metrics read them."""

    @property
    def name(self) -> str: ...
    @property
    def replicas(self) -> int: ...
    @property
    def active_keys(self) -> int: ...
    @property
    def received(self) -> int: ...
    @property
    def processed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def retried(self) -> int: ...
    @property
    def dead_lettered(self) -> int: ...


@attrs.frozen
class MailboxState:
    """One agent's mailbox as Redis holds it (None: no consumer group yet)."""

    backlog: int
    lag: int | None
    pending: int | None
    dead_letters: int


class Metrics:
    """The metrics of one runtime; :meth:`serve` exposes them over HTTP.

    ``counts`` returns the agents' counters (read at scrape time, from the scraping
    thread: plain integers, read without a lock); ``reconnects`` how often the
    runtime's Redis connections were made again after breaking.
    """

    def __init__(
        self,
        namespace: str,
        counts: Callable[[], Iterable[AgentCounts]],
        reconnects: Callable[[], int],
    ) -> None:
        if _prometheus is None:
            raise ImportError(
                "metrics need prometheus-client: pip install 'ailf[metrics]'"
                " (or 'ailf[observability]' for metrics, tracing, ailf top and the dashboard)"
            )
        self.namespace = namespace
        self.registry = _prometheus.CollectorRegistry()
        #: Handler durations by agent; ask durations by (agent asked, outcome).
        self.handlers: dict[str, Histogram] = {}
        self.asks: dict[tuple[str, str], Histogram] = {}
        self.mailboxes: dict[str, MailboxState] = {}
        self.registry.register(_RuntimeCollector(self, counts, reconnects))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def handler_finished(self, agent: str, seconds: float) -> None:
        histogram = self.handlers.get(agent)
        if histogram is None:
            histogram = self.handlers[agent] = Histogram()
        histogram.observe(seconds)

    def ask_finished(self, agent: str, seconds: float, outcome: str) -> None:
        histogram = self.asks.get((agent, outcome))
        if histogram is None:
            histogram = self.asks[(agent, outcome)] = Histogram()
        histogram.observe(seconds)

    def text(self) -> str:
        """The metrics in Prometheus's text format (what ``/metrics`` serves)."""
        return _prometheus.generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` from a thread (port 0: a free one); the
        port. ConfigError when it cannot listen there (the port is taken, say)."""
        try:
            self._server, self._thread = _prometheus.start_http_server(
                port, addr=host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose"
                " another metrics_port (each process on a host needs its own)"
            ) from None
        bound: int = self._server.server_address[1]
        return bound

    def close(self) -> None:
        """Stop serving (if serving)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class Histogram:
    """Counts of durations by bucket (``le`` :data:`BUCKETS`, then +Inf) and their sum.

    Plain integers in a list, not prometheus-client's Histogram: an observation on the
    handler path is a bisection and two additions, without a lock. The scraping thread
    reads the counts as they are; the count it reports is their sum, so a scrape is
    always consistent with itself.
    """

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, as a Prometheus histogram has them."""
        found, total = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), list(self.counts), strict=True):
            total += count
            found.append((bound, float(total)))
        return found


class _RuntimeCollector(Collector):
    """Reads the counters, instances and mailbox gauges when Prometheus scrapes."""

    def __init__(
        self,
        metrics: Metrics,
        counts: Callable[[], Iterable[AgentCounts]],
        reconnects: Callable[[], int],
    ) -> None:
        self._metrics = metrics
        self._counts = counts
        self._reconnects = reconnects

    def collect(self) -> Iterator[Metric]:
        namespace = self._metrics.namespace
        labels = ["namespace", "agent"]
        agents = list(self._counts())
        for name, field, text in COUNTERS:
            family = CounterMetricFamily(name, text, labels=labels)
            for agent in agents:
                family.add_metric([namespace, agent.name], getattr(agent, field))
            yield family
        instances = GaugeMetricFamily(
            "ailf_instances", "Agent instances running in this process", labels=labels
        )
        for agent in agents:
            instances.add_metric([namespace, agent.name], agent.replicas)
        yield instances
        keys = GaugeMetricFamily(
            "ailf_active_keys", "A keyed agent's keys active in this process", labels=labels
        )
        for agent in agents:
            if agent.active_keys:
                keys.add_metric([namespace, agent.name], agent.active_keys)
        yield keys
        mailboxes = list(self._metrics.mailboxes.items())
        for name, field, text in GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=labels)
            for agent_name, state in mailboxes:
                value = getattr(state, field)
                if value is not None:
                    gauge.add_metric([namespace, agent_name], value)
            yield gauge
        handlers = HistogramMetricFamily(
            "ailf_handler_duration_seconds",
            "Seconds from a handler's start to its outcome settled (an ask's reply sent)",
            labels=labels,
        )
        for agent_name, histogram in list(self._metrics.handlers.items()):
            handlers.add_metric([namespace, agent_name], histogram.buckets(), histogram.sum)
        yield handlers
        asks = HistogramMetricFamily(
            "ailf_ask_duration_seconds",
            "Seconds from an ask() to its reply, by the agent asked and the outcome",
            labels=[*labels, "outcome"],
        )
        for (agent_name, outcome), histogram in list(self._metrics.asks.items()):
            asks.add_metric([namespace, agent_name, outcome], histogram.buckets(), histogram.sum)
        yield asks
        reconnects = CounterMetricFamily(
            "ailf_redis_reconnects",
            "Times the runtime's Redis connection was made again after it broke",
            labels=["namespace"],
        )
        reconnects.add_metric([namespace], self._reconnects())
        yield reconnects

"""A runtime's tracing and metrics: making its observer, serving and feeding its metrics.

The runtime asks for either with keyword arguments (``tracing``, ``metrics_port``; see
:class:`~ailf.observability.ObservabilitySettings`); this module turns them into the
one :class:`~ailf.observability.Observer` every part of the runtime calls, and keeps
the metrics' mailbox gauges current from Redis while the runtime runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.errors import RedisError
from ailf.observability import (
    NO_OBSERVER,
    Instrumented,
    MailboxState,
    Metrics,
    ObservabilitySettings,
    Observer,
)
from ailf.observability import tracing as _tracing
from ailf.observability.metrics import AgentCounts
from ailf.runtime._keys import Keys
from ailf.runtime._mailbox import mailbox_report

__all__ = ["make_observer", "serve_metrics", "stop_metrics", "watch_mailboxes"]

log = logging.getLogger("ailf.runtime")


def make_observer(
    settings: ObservabilitySettings,
    namespace: str,
    counts: Callable[[], Iterable[AgentCounts]],
    reconnects: Callable[[], int],
) -> Observer:
    """The observer the settings ask for: :data:`NO_OBSERVER` when neither tracing nor
    metrics are on. Raises ImportError naming the extra a setting needs."""
    tracing = settings.tracing
    if tracing is None:
        tracing = _tracing.configured()
    tracer = _tracing.tracer() if tracing else None
    metrics = None
    if settings.metrics_port is not None:
        metrics = Metrics(namespace, counts, reconnects)
    if tracer is None and metrics is None:
        return NO_OBSERVER
    return Instrumented(namespace, tracer, metrics)


async def watch_mailboxes(
    client: AsyncRedisClient,
    keys: Keys,
    agents: Callable[[], Iterable[str]],
    metrics: Metrics,
    interval: float,
) -> None:
    """Read the mailbox gauges of ``agents()`` from Redis every ``interval`` seconds,
    one round trip per agent, until cancelled. A failed reading keeps the last one."""
    while True:
        for name in list(agents()):
            try:
                report = await mailbox_report(client, keys, name)
            except RedisError as exc:
                log.debug("metrics: could not read the mailbox of %s: %s", name, exc)
                continue
            metrics.mailboxes[name] = MailboxState(
                backlog=report.waiting,
                lag=report.lag,
                pending=report.pending,
                dead_letters=report.dead_letters,
            )
        await trio.sleep(interval)


def serve_metrics(
    observer: Observer,
    settings: ObservabilitySettings,
    client: AsyncRedisClient,
    keys: Keys,
    agents: Callable[[], Iterable[str]],
    services: trio.Nursery,
) -> str | None:
    """Serve the observer's metrics, if it has any, and keep their mailbox gauges of
    ``agents()`` current in ``services``; the metrics' URL (None: no metrics)."""
    metrics = observer.metrics if isinstance(observer, Instrumented) else None
    if metrics is None:
        return None
    assert settings.metrics_port is not None
    port = metrics.serve(settings.metrics_host, settings.metrics_port)
    url = f"http://{settings.metrics_host}:{port}/metrics"
    log.info("serving metrics at %s", url)
    services.start_soon(watch_mailboxes, client, keys, agents, metrics, settings.metrics_interval)
    return url


def stop_metrics(observer: Observer) -> None:
    """Stop serving the observer's metrics (if it served any)."""
    if isinstance(observer, Instrumented) and observer.metrics is not None:
        observer.metrics.close()

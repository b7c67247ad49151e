"""The observer of a runtime with tracing, metrics or both: the hooks made to do things.

One class does both, so that a message passes one context, not a stack of them. The
tracing half is described in :mod:`ailf.observability.tracing`, the metrics in
:mod:`ailf.observability.metrics`.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from ailf.observability._hooks import Handled, Handling, Observer, Producing
from ailf.observability.metrics import Metrics

__all__ = ["Instrumented"]

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # Instrumented is then made without a tracer
    pass

#: ``messaging.system``: not one of the conventions' well-known values, which allow others.
SYSTEM = "redis"


def _fail(span: Any, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class _Producing(Producing):
    __slots__ = ("_destination", "_metrics", "_operation", "_span", "_started")

    def __init__(
        self, tracer: Any, metrics: Metrics | None, operation: str, destination: str, ns: str
    ) -> None:
        self._metrics = metrics
        self._operation = operation
        self._destination = destination
        self._started = time.perf_counter()
        self._span: Any = None
        if tracer is not None:
            self._span = tracer.start_span(
                f"{operation} {destination}",
                kind=SpanKind.CLIENT if operation == "ask" else SpanKind.PRODUCER,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": operation,
                    "messaging.destination.name": destination,
                    "ailf.namespace": ns,
                },
            )

    def inject(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        if self._span is None:
            return headers
        carrier = dict(headers) if headers else {}
        _propagate.inject(carrier, context=_trace.set_span_in_context(self._span))
        return carrier

    def sent(self, message_id: str) -> None:
        if self._span is not None:
            self._span.set_attribute("messaging.message.id", message_id)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._metrics is not None and self._operation == "ask":
            outcome = "ok" if error is None else type(error).__name__
            self._metrics.ask_finished(
                self._destination, time.perf_counter() - self._started, outcome
            )
        if self._span is not None:
            if error is not None:
                _fail(self._span, error)
            self._span.end()


class _Handling(Handling):
    __slots__ = ("_agent", "_metrics", "_span", "_started", "_token")

    def __init__(
        self, tracer: Any, metrics: Metrics | None, agent: str, message: Handled, ns: str
    ) -> None:
        self._agent = agent
        self._metrics = metrics
        self._span: Any = None
        self._token: Any = None
        if tracer is not None:
            attributes: dict[str, Any] = {
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": message.topic or agent,
                "messaging.consumer.group.name": agent,
                "messaging.message.id": message.id,
                "ailf.namespace": ns,
                "ailf.delivery_count": message.delivery_count,
            }
            if message.correlation is not None:
                attributes["messaging.message.conversation_id"] = message.correlation
            if message.key is not None:
                attributes["ailf.key"] = message.key
            self._span = tracer.start_span(
                f"process {message.topic or agent}",
                # Never the worker task's own context: a message's parent is its sender.
                context=_propagate.extract(message.headers, context=_context.Context()),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
        self._started = 0.0

    def __enter__(self) -> Handling:
        if self._span is not None:
            self._token = _context.attach(_trace.set_span_in_context(self._span))
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._metrics is not None:
            self._metrics.handler_finished(self._agent, time.perf_counter() - self._started)
        if self._span is not None:
            if error is not None:  # cancelled (a shutdown past the grace period, a crash)
                _fail(self._span, error)
            _context.detach(self._token)
            self._span.end()

    def failed(self, error: BaseException) -> None:
        if self._span is not None:
            _fail(self._span, error)


class Instrumented(Observer):
    """Traces with ``tracer`` (an OpenTelemetry tracer, or None) and records ``metrics``
    (or None) for namespace ``namespace``."""

    enabled = True

    def __init__(self, namespace: str, tracer: Any, metrics: Metrics | None) -> None:
        self.namespace = namespace
        self.tracer = tracer
        self.metrics = metrics

    def producing(self, operation: str, destination: str) -> Producing:
        return _Producing(self.tracer, self.metrics, operation, destination, self.namespace)

    def handling(self, agent: str, message: Handled) -> Handling:
        return _Handling(self.tracer, self.metrics, agent, message, self.namespace)

    def retried(self, agent: str, delivery_count: int, delay: float) -> None:
        if self.tracer is not None:
            _trace.get_current_span().add_event(
                "ailf.retry", {"ailf.delivery_count": delivery_count, "ailf.retry.delay": delay}
            )

    def dead_lettered(self, agent: str, reason: str) -> None:
        if self.tracer is not None:
            _trace.get_current_span().add_event(
                "ailf.dead_letter", {"ailf.dead_letter.reason": reason}
            )

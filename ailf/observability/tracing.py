"""OpenTelemetry traces of what agents do: spans for send, ask, publish and handling.

ailf depends on ``opentelemetry-api`` only, and only when installed (``pip install
'ailf[otel]'``). As a library should, it uses the global tracer provider and sets up no
exporter: the application configures the SDK (an OTLP exporter, say) and ailf's spans go
wherever the application's do. Without the API installed, or with no tracer provider
configured when a ``Runtime`` starts, tracing is off and costs nothing: the import is
tried once, here, and the runtime keeps its do-nothing observer.

Spans follow the OpenTelemetry messaging semantic conventions:

- ``send AGENT`` (kind PRODUCER) around a ``send()``'s XADD;
- ``ask AGENT`` (kind CLIENT) around an ``ask()``, from the request to the reply;
- ``publish TOPIC`` (kind PRODUCER) around a ``publish()``;
- ``process AGENT`` (kind CONSUMER) around a handler and the settling of its outcome,
  the child of the span that sent the message: the sender's trace context travels in the
  envelope's ``headers`` as W3C ``traceparent``/``tracestate`` (docs/wire-format.md), so
  that an ask to agent A whose handler asks agent B in another process is one trace.

A handler that raised sets its span's status to ERROR with the exception recorded; a
retry and a dead letter are events on the span (``ailf.retry``, ``ailf.dead_letter``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ATTRIBUTES", "available", "configured", "tracer"]

try:
    from opentelemetry import trace as _trace
except ImportError:  # the extra is not installed: tracing stays off
    _trace = None  # type: ignore[assignment]

#: The span attributes ailf sets, beyond the semantic conventions' ``messaging.*``.
ATTRIBUTES = {
    "ailf.namespace": "the runtime's namespace",
    "ailf.delivery_count": "Redis's count of deliveries of the entry (1 on the first)",
    "ailf.key": "the key (entity) a keyed agent's message is for",
    "ailf.retry.delay": "seconds until a failed message is delivered again (event ailf.retry)",
    "ailf.dead_letter.reason": "why the message was given up (event ailf.dead_letter)",
}


def available() -> bool:
    """True when ``opentelemetry-api`` is installed."""
    return _trace is not None


def configured() -> bool:
    """True when the application has set a tracer provider (the SDK's, say): the API's
    own placeholder records nothing, so tracing with it would cost without showing."""
    if _trace is None:
        return False
    provider = _trace.get_tracer_provider()
    return not isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))


def tracer() -> Any:
    """ailf's tracer from the global provider; ImportError naming the extra when
    ``opentelemetry-api`` is missing."""
    if _trace is None:
        raise ImportError(
            "tracing needs the OpenTelemetry API: pip install 'ailf[otel]'"
            " (and the SDK with an exporter, configured by the application)"
        )
    return _trace.get_tracer("ailf")

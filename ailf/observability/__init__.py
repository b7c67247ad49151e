"""Seeing inside a running namespace: OpenTelemetry traces and Prometheus metrics.

Both are optional extras — ``ailf[otel]`` (the OpenTelemetry API) and ``ailf[metrics]``
(prometheus-client), or ``ailf[observability]`` for everything including ``ailf top``
and ``ailf dashboard`` — and both are off until asked for: tracing when the application
has configured an OpenTelemetry tracer provider (or passes ``Runtime(tracing=True)``),
metrics with ``Runtime(metrics_port=...)``. docs/observability.md is the guide.

The runtime reaches them through one narrow interface, :class:`Observer`, whose default
does nothing; this layer sits below the runtime and knows nothing of it.
"""

from ailf.observability._hooks import NO_OBSERVER as NO_OBSERVER
from ailf.observability._hooks import Handled as Handled
from ailf.observability._hooks import Handling as Handling
from ailf.observability._hooks import Observer as Observer
from ailf.observability._hooks import Producing as Producing
from ailf.observability._instrumented import Instrumented as Instrumented
from ailf.observability._settings import ObservabilitySettings as ObservabilitySettings
from ailf.observability.metrics import MailboxState as MailboxState
from ailf.observability.metrics import Metrics as Metrics

__all__ = [
    "NO_OBSERVER",
    "Handled",
    "Handling",
    "Instrumented",
    "MailboxState",
    "Metrics",
    "ObservabilitySettings",
    "Observer",
    "Producing",
]

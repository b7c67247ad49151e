"""What a ``Runtime`` is asked to observe: its ``tracing``, ``metrics_*`` keyword arguments.

Validated on construction, like the mailbox settings (``ailf/runtime/_settings.py``), so
that a bad port fails at ``Runtime(...)``, not when the metrics server starts.
"""

from __future__ import annotations

from typing import Any

import attrs

from ailf.errors import ConfigError

__all__ = ["ObservabilitySettings"]


def _port(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(
            f"Runtime {attribute.name}: expected a port from 0 to 65535 (0: any free one)"
            f" or None, got {value!r}"
        )


def _tracing(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"Runtime tracing: expected True, False or None, got {value!r}")


def _interval(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"Runtime {attribute.name}: expected seconds > 0, got {value!r}")


@attrs.frozen
class ObservabilitySettings:
    """Tracing and metrics of one runtime (``Runtime`` keyword arguments of the same names).

    - ``tracing``: None (the default) traces when ``opentelemetry-api`` is installed and
      the application has set a tracer provider by the time the runtime starts; True
      traces with the global provider whatever it is (ImportError without the API);
      False never traces.
    - ``metrics_port``: serve Prometheus metrics on this port (0: a free one, see
      ``Runtime.metrics_url``); None (the default): no metrics.
    - ``metrics_host``: the address the metrics server listens on; loopback by
      default, ``0.0.0.0`` for a Prometheus on another host.
    - ``metrics_interval``: seconds between two readings of the mailbox gauges.
    """

    tracing: bool | None = attrs.field(default=None, validator=_tracing)
    metrics_port: int | None = attrs.field(default=None, validator=_port)
    metrics_host: str = "127.0.0.1"
    metrics_interval: float = attrs.field(default=5.0, validator=_interval)

"""The runtime's observation hooks, and the observer that does nothing.

The runtime calls an :class:`Observer` at the few points a message passes — sent,
published or asked (client side), about to be handled, failed, retried, dead-lettered —
and never looks at what the observer does. The default is :data:`NO_OBSERVER`, whose
every hook returns at once and whose contexts are two shared do-nothing objects: with
tracing and metrics off, a message costs a method call and a ``with`` on a constant
(docs/performance.md measures it). Tracing and metrics are one observer
(:class:`~ailf.observability._instrumented.Instrumented`) made when a ``Runtime`` asks
for either.

The hooks take plain values and a :class:`Handled` (what the runtime's ``Message`` is,
as far as an observer reads it), so that this layer stays below the runtime.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

__all__ = ["NO_OBSERVER", "Handled", "Handling", "Observer", "Producing"]


class Handled(Protocol):
    """What an observer reads of a message about to be handled."""

    @property
    def id(self) -> str: ...
    @property
    def delivery_count(self) -> int: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def topic(self) -> str | None: ...
    @property
    def correlation(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...


class Producing:
    """One send, ask or publish, client side: a context around the write (and, for an
    ask, the wait for the reply). This base does nothing."""

    __slots__ = ()

    def __enter__(self) -> Producing:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def inject(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        """The envelope headers to send: ``headers`` plus whatever the observer carries
        to the receiver (the W3C trace context); here ``headers`` unchanged."""
        return headers

    def sent(self, message_id: str) -> None:
        """The message was written with this id (a mailbox entry id)."""


class Handling:
    """One handler run: a context around the handler and the settling of its outcome
    (so that a retry or a dead letter is seen inside it). This base does nothing."""

    __slots__ = ()

    def __enter__(self) -> Handling:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def failed(self, error: BaseException) -> None:
        """The handler raised ``error`` (the runtime caught it and settles it)."""


_NO_PRODUCING = Producing()
_NO_HANDLING = Handling()


class Observer:
    """The hooks the runtime calls; this base class does nothing at each of them."""

    #: False for the observer that does nothing (the runtime then skips its upkeep).
    enabled = False

    def producing(self, operation: str, destination: str) -> Producing:
        """A send, ask or publish (``operation``) to an agent or a topic (``destination``)."""
        return _NO_PRODUCING

    def handling(self, agent: str, message: Handled) -> Handling:
        """Agent ``agent`` is about to handle ``message`` (a mailbox entry or a broadcast)."""
        return _NO_HANDLING

    def retried(self, agent: str, delivery_count: int, delay: float) -> None:
        """The message being handled failed and will be delivered again in ``delay`` s."""

    def dead_lettered(self, agent: str, reason: str) -> None:
        """The message being handled (or refused) was moved to the dead letters."""


#: The observer of a runtime without tracing or metrics.
NO_OBSERVER = Observer()

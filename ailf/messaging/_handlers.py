"""The pure half of pub/sub: payloads, which handler serves which name, reconnect pacing.

:class:`~ailf.messaging._pubsub.RedisPubSub` and its async twin share everything here,
which does no I/O: :func:`decode_payload` (what a handler receives),
:class:`HandlerTable` (channel or pattern → handler, over
:class:`~ailf.messaging._router.ChannelRouter`; it turns an incoming message into a
:class:`PubSubDelivery`), and :class:`ListenerBackoff` (how a listener paces its
reconnects and what it logs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from ailf.codec import loads
from ailf.config import RetryPolicy
from ailf.errors import DecodeError
from ailf.messaging._router import ChannelRouter

__all__ = ["Handler", "HandlerTable", "ListenerBackoff", "PubSubDelivery", "decode_payload"]

log = logging.getLogger("ailf.pubsub")

#: A handler receives the decoded payload: a dict or list for JSON, else the string.
Handler = Callable[[Any], Any]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_payload(data: str | bytes) -> Any:
    """A payload as handlers see it: JSON objects and arrays decoded, anything else as is.

    Only objects and arrays are decoded, so that a string payload such as ``"42"`` or
    ``"true"`` reaches the handler as the string that was published.
    """
    text = data
    if isinstance(data, bytes):
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return data
    if text[:1] in ("{", "["):
        try:
            return loads(text)
        except DecodeError:
            pass
    return text


@attrs.frozen
class PubSubDelivery:
    """One pub/sub message on its way to one of its handlers."""

    handler: Handler
    channel: str
    payload: Any
    pattern: str | None = None

    def log_failure(self) -> None:
        """Log the exception being handled as this handler's failure (call in ``except``)."""
        via = f" (pattern {self.pattern!r})" if self.pattern else ""
        log.exception("handler for channel %r%s raised; still listening", self.channel, via)


class HandlerTable(Mapping[str, Handler]):
    """Which handler serves which channel and pattern: the state a reconnect restores.

    It reads as a mapping of channel to handler — what the upstream library's
    ``RedisPubSub.subscriptions`` dict was, so ``"news" in pubsub.subscriptions`` and
    ``pubsub.subscriptions["news"]`` keep working; :attr:`channels` and :attr:`patterns`
    are dicts of each. It is read-only to its users: they change it through
    ``subscribe``, ``psubscribe`` and ``unsubscribe``, which also tell Redis. Underneath,
    one :class:`~ailf.messaging._router.ChannelRouter` for channels and one for patterns
    say when a name becomes wanted or unwanted, and who hears a message.
    """

    def __init__(
        self,
        channels: Mapping[str, Handler] | None = None,
        patterns: Mapping[str, Handler] | None = None,
    ) -> None:
        self._routers: dict[bool, ChannelRouter[Handler]] = {
            False: ChannelRouter(),
            True: ChannelRouter(),
        }
        for name, handler in (channels or {}).items():
            self.add(name, handler)
        for name, handler in (patterns or {}).items():
            self.add(name, handler, pattern=True)

    def _table(self, pattern: bool) -> dict[str, Handler]:
        router = self._routers[pattern]
        return {name: router.dispatch(name)[0] for name in router}

    @property
    def channels(self) -> dict[str, Handler]:
        """Channel → handler (a copy)."""
        return self._table(False)

    @property
    def patterns(self) -> dict[str, Handler]:
        """Pattern → handler (a copy)."""
        return self._table(True)

    def __getitem__(self, channel: str) -> Handler:
        handlers = self._routers[False].dispatch(channel)
        if not handlers:
            raise KeyError(channel)
        return handlers[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._routers[False])

    def __len__(self) -> int:
        return len(self._routers[False])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HandlerTable):
            return NotImplemented
        return (self.channels, self.patterns) == (other.channels, other.patterns)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"HandlerTable(channels={self.channels!r}, patterns={self.patterns!r})"

    def handler(self, name: str, *, pattern: bool = False) -> Handler | None:
        """The handler serving ``name``, or None."""
        handlers = self._routers[pattern].dispatch(name)
        return handlers[0] if handlers else None

    def add(self, name: str, handler: Handler, *, pattern: bool = False) -> bool:
        """Serve ``name`` with ``handler`` (in place of any before); True when ``name``
        was not served before, so that Redis must be told.

        Checked now: a wrong one would otherwise only show up as a logged failure per
        message, in the listener.
        """
        kind = "pattern" if pattern else "channel"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{kind}: expected a non-empty string, got {name!r}")
        if not callable(handler):
            raise TypeError(f"handler for {kind} {name!r}: expected a callable, got {handler!r}")
        router = self._routers[pattern]
        before = self.handler(name, pattern=pattern)
        wanted = router.add(name, handler)  # added first, so that name stays wanted
        if before is not None and before != handler:
            router.remove(name, before)
        return wanted

    def remove(self, name: str, *, pattern: bool = False) -> bool:
        """Stop serving ``name``; True when it was served (Redis must be told)."""
        handler = self.handler(name, pattern=pattern)
        return handler is not None and self._routers[pattern].remove(name, handler)

    def route(
        self, kind: str | bytes, channel: str | bytes, data: Any, pattern: str | bytes | None = None
    ) -> PubSubDelivery | None:
        """The delivery for a ``message``/``pmessage``, or None (confirmations, strays)."""
        kind, channel = _text(kind), _text(channel)
        if kind == "message":
            handlers = self._routers[False].dispatch(channel)
            pattern = None
        elif kind == "pmessage" and pattern is not None:
            pattern = _text(pattern)
            handlers = self._routers[True].dispatch(pattern)
        else:
            return None
        if not handlers:
            return None
        return PubSubDelivery(handlers[0], channel, decode_payload(data), pattern)


@attrs.define
class ListenerBackoff:
    """How a listener paces its reconnects, and what it logs: shared by both listeners.

    :meth:`lost` after a failed round returns the pause before the next attempt (the
    policy's growing delays, without end: a listener exists to listen); :meth:`listening`
    after a good one. A loss is logged once as a warning, the retries at debug level,
    and the recovery once.
    """

    listener: str
    policy: RetryPolicy
    failures: int = 0

    def lost(self, exc: Exception) -> float:
        delay = self.policy.delay(self.failures)
        if not self.failures:
            log.warning("%s lost its connection (%s); reconnecting", self.listener, exc)
        else:
            log.debug("reconnect attempt %d failed (%s); next in %.2fs", self.failures, exc, delay)
        self.failures += 1
        return delay

    def listening(self) -> None:
        if self.failures:
            log.info(
                "%s reconnected and re-subscribed after %d attempts", self.listener, self.failures
            )
            self.failures = 0

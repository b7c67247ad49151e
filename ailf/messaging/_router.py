"""Which listeners hear a channel: :class:`ChannelRouter`, for every pub/sub dispatcher.

A pub/sub connection delivers each message once, and the process fans it out to
whoever listens on that channel. Two places do that — the messaging pub/sub
(:class:`~ailf.messaging.RedisPubSub` and its async twin: a handler per channel or
pattern) and the runtime's broadcast hub (agent instances per topic) — and both must
also know when a channel gains its first listener (subscribe on Redis) and loses its
last (unsubscribe). The router keeps that book, and nothing else: it does no I/O, so
each user subscribes and unsubscribes with its own session, in its own way.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["ChannelRouter"]

L = TypeVar("L", bound=Hashable)


class ChannelRouter(Generic[L]):
    """Channel → the set of its listeners (any hashable: a handler, an agent instance).

    ::

        router = ChannelRouter[Handler]()
        if router.add("news", handler):       # True: "news" is now wanted
            session.subscribe("news")
        for listener in router.dispatch("news"):
            listener(payload)
        if router.remove("news", handler):    # True: nobody listens any more
            session.unsubscribe("news")

    :meth:`add` and :meth:`remove` say whether the channel became wanted or unwanted, so
    the caller subscribes only on the first listener and unsubscribes only after the
    last. :meth:`dispatch` returns the listeners in the order they were added, as a
    snapshot: a listener may add or remove listeners while it is being called. Adding a
    listener twice, or removing one that is not there, changes nothing (and returns
    False). Channel names are compared as given: a ``bytes`` and a ``str`` name are two
    channels.
    """

    def __init__(self) -> None:
        # dict as an ordered set: dispatch order is the order listeners were added.
        self._listeners: dict[str, dict[L, None]] = {}

    def add(self, channel: str, listener: L) -> bool:
        """Let ``listener`` hear ``channel``; True when the channel was not wanted before."""
        listeners = self._listeners.get(channel)
        if listeners is None:
            self._listeners[channel] = {listener: None}
            return True
        listeners[listener] = None
        return False

    def remove(self, channel: str, listener: L) -> bool:
        """Stop ``listener`` hearing ``channel``; True when that was its last listener."""
        listeners = self._listeners.get(channel)
        if listeners is None or listener not in listeners:
            return False
        del listeners[listener]
        if listeners:
            return False
        del self._listeners[channel]
        return True

    def dispatch(self, channel: str) -> tuple[L, ...]:
        """Who hears a message on ``channel``: its listeners, oldest first (none: ``()``)."""
        listeners = self._listeners.get(channel)
        return tuple(listeners) if listeners else ()

    def __contains__(self, channel: object) -> bool:
        """Whether ``channel`` is wanted: at least one listener hears it."""
        return channel in self._listeners

    def __iter__(self) -> Iterator[str]:
        """The wanted channels, in the order they became wanted."""
        return iter(self._listeners)

    def __len__(self) -> int:
        """How many channels are wanted."""
        return len(self._listeners)

    def __repr__(self) -> str:
        return f"<ChannelRouter {len(self)} channel(s)>"

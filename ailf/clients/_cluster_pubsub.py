"""Pub/sub on a Redis Cluster: classic channels on one node, sharded channels on
the node that owns each channel's slot, and all of it moved when the cluster changes.

A classic ``PUBLISH`` reaches every node of a cluster, so one session on any node hears
every classic channel: :class:`ClusterPubSub` keeps one, on a primary, and when its
node goes away, opens another on a live node and subscribes everything again.

A sharded channel (``SSUBSCRIBE``, ``SPUBLISH``, Redis ≥ 7) lives in the shard that owns
its slot, so it is subscribed on that slot's primary, one slot per command. When the
slot moves (a resharding) or its primary stops being one (a failover), the server
*pushes* a ``sunsubscribe`` for the channel; when the node dies, its connection breaks.
Either way the channel is subscribed again wherever the refreshed map says it lives
now. A ``MOVED`` answering an SSUBSCRIBE (a map that was behind) does the same.

What can be lost: messages published while a channel is between two nodes — between
the server dropping it (or the connection breaking) and the new owner confirming the
subscription. For a resharding that is a refresh and a round trip (milliseconds); for a
crashed primary, the time the cluster takes to promote its replica (about two node
timeouts) plus a refresh. Pub/sub never stores messages; use a stream (a mailbox) when
none may be lost.

Messages of every session arrive in one iterator, as one session's would:
``{"type": "message" | "pmessage" | "smessage", "pattern", "channel", "data"}``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, Self

from ailf.clients._async_tools import AsyncTools, Closed, Handle
from ailf.clients._backend import PubSubSession
from ailf.clients._cluster_router import ClusterRouter, redirect_of
from ailf.clients._slots import key_slot
from ailf.clients._topology import Node, split_address
from ailf.errors import RedisConnectionError, RedisError, ResponseError

__all__ = ["ClusterHost", "ClusterPubSub"]


class ClusterHost(Protocol):
    """What :class:`ClusterPubSub` needs of its engine
    (:class:`~ailf.clients._cluster.ClusterBackend`)."""

    router: ClusterRouter
    tools: AsyncTools

    def session(self, node: Node) -> PubSubSession: ...

    def want_refresh(self) -> None: ...

    async def refresh(self) -> None: ...

    async def await_newer_map(self, seen: int, timeout: float) -> None: ...  # noqa: ASYNC109


log = logging.getLogger("ailf.clients")

_BUFFER = 4096
#: Redirects followed while placing one slot's channels.
_MAX_HOPS = 16


class ClusterPubSub:
    """``async with client.pubsub() as ps`` on a cluster; see the module docstring."""

    def __init__(self, backend: ClusterHost) -> None:
        self._backend = backend
        self._router = backend.router
        self._channels: set[Any] = set()
        self._patterns: set[Any] = set()
        self._shard_channels: dict[Any, int] = {}
        self._tools = backend.tools
        self._classic: PubSubSession | None = None
        self._shards: dict[Node, PubSubSession] = {}
        #: Each session runs in a task of its own (under trio a nursery's block must
        #: begin and end in one task); cancelling the task closes it.
        self._tasks: dict[PubSubSession, Handle] = {}
        self._placed: dict[Any, Node] = {}
        self._lock = self._tools.lock()
        self._repair = self._tools.event()
        self._messages = self._tools.queue(_BUFFER)
        self._repairing: Handle | None = None
        self._handler: Callable[[dict[str, Any]], None] | None = None
        self.reconnects = 0

    # -- lifetime ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._repairing = self._tools.spawn(self._repair_forever)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every session (each in its own task, as it ends) and stop repairing."""
        repairing, self._repairing = self._repairing, None
        if repairing is None:
            return
        repairing.cancel()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self._shards.clear()
        self._classic = None
        self._messages.close()

    # -- what is subscribed -----------------------------------------------------------

    @property
    def channels(self) -> set[Any]:
        return self._channels

    @property
    def patterns(self) -> set[Any]:
        return self._patterns

    @property
    def shard_channels(self) -> set[Any]:
        return set(self._shard_channels)

    # -- classic channels: one session, on any node -------------------------------------

    async def subscribe(self, *channels: Any) -> None:
        self._channels.update(channels)
        await self._on_classic(lambda session: session.subscribe(*channels))

    async def psubscribe(self, *patterns: Any) -> None:
        self._patterns.update(patterns)
        await self._on_classic(lambda session: session.psubscribe(*patterns))

    async def unsubscribe(self, *channels: Any) -> None:
        channels = channels or tuple(self._channels)
        self._channels.difference_update(channels)
        await self._on_classic(lambda session: session.unsubscribe(*channels))

    async def punsubscribe(self, *patterns: Any) -> None:
        patterns = patterns or tuple(self._patterns)
        self._patterns.difference_update(patterns)
        await self._on_classic(lambda session: session.punsubscribe(*patterns))

    async def _on_classic(self, call: Any) -> None:
        """``call(session)`` on the classic session; once more on a new one if its node
        went away meanwhile (the new one has been told everything wanted by then)."""
        for attempt in range(2):
            async with self._lock:
                session = await self._classic_session()
            try:
                await call(session)
                return
            except RedisConnectionError:
                if attempt:
                    raise
                await self._lose_classic(session)

    async def _classic_session(self) -> PubSubSession:
        """The classic session, opened (on a live primary) and told every wanted channel
        and pattern if there is none; call it holding the lock."""
        if self._classic is not None:
            return self._classic
        session = await self._open(self._router.any_primary(), classic=True)
        if self._channels:
            await session.subscribe(*self._channels)
        if self._patterns:
            await session.psubscribe(*self._patterns)
        self._classic = session
        return session

    async def _lose_classic(self, session: PubSubSession) -> None:
        if self._classic is session:
            self._classic = None
            self.reconnects += 1
            self._close(session)

    # -- sharded channels: on each slot's primary ---------------------------------------

    async def ssubscribe(self, *channels: Any) -> None:
        """Subscribe sharded channels on the primaries of their slots; returns once each
        one confirmed."""
        for channel in channels:
            self._shard_channels[channel] = key_slot(channel)
        async with self._lock:
            await self._place([c for c in channels if c not in self._placed])

    async def sunsubscribe(self, *channels: Any) -> None:
        channels = channels or tuple(self._shard_channels)
        async with self._lock:
            by_node: dict[Node, list[Any]] = {}
            for channel in channels:
                self._shard_channels.pop(channel, None)
                node = self._placed.pop(channel, None)
                if node is not None:
                    by_node.setdefault(node, []).append(channel)
            for node, names in by_node.items():
                session = self._shards.get(node)
                if session is not None:
                    with contextlib.suppress(RedisError):  # its node went: nothing to undo
                        await session.sunsubscribe(*names)
                    await self._close_if_idle(node)

    async def _place(self, channels: list[Any]) -> None:
        """SSUBSCRIBE ``channels`` where their slots live, one slot per command, following
        MOVED; call it holding the lock."""
        by_slot: dict[int, list[Any]] = {}
        for channel in channels:
            by_slot.setdefault(self._shard_channels[channel], []).append(channel)
        for slot, names in by_slot.items():
            for _ in range(_MAX_HOPS):
                node = self._router.owner(slot)
                if node is None:
                    await self._backend.refresh()
                    continue
                session = await self._shard_session(node)
                try:
                    await session.ssubscribe(*names)
                except ResponseError as exc:
                    redirect = redirect_of(exc)
                    if redirect is None:
                        raise
                    host, port = split_address(redirect[2], node.host)
                    self._router.map.move(redirect[1], Node(host, port))
                    self._router.generation += 1
                    await self._close_if_idle(node)
                    continue
                for name in names:
                    self._placed[name] = node
                break
            else:
                raise ResponseError(f"could not SSUBSCRIBE slot {slot}: it kept moving")

    async def _shard_session(self, node: Node) -> PubSubSession:
        session = self._shards.get(node)
        if session is None:
            session = self._shards[node] = await self._open(node, classic=False)
        return session

    async def _close_if_idle(self, node: Node) -> None:
        if node not in self._placed.values():
            session = self._shards.pop(node, None)
            if session is not None:
                self._close(session)

    # -- sessions, their messages, and what they say about the cluster ------------------

    async def _open(self, node: Node, *, classic: bool) -> PubSubSession:
        """A session to ``node``, served by a task of its own until :meth:`_close`."""
        if self._repairing is None:
            raise RuntimeError("use the pubsub inside `async with client.pubsub() as ps:`")
        session = self._backend.session(node)
        where = None if classic else node

        async def serve(started: Any) -> None:
            try:
                async with session:
                    started()
                    await self._forward(session, where)
            finally:
                self._tasks.pop(session, None)

        self._tasks[session] = await self._tools.start(serve)
        return session

    def _close(self, session: PubSubSession) -> None:
        task = self._tasks.pop(session, None)
        if task is not None:
            task.cancel()

    async def _forward(self, session: PubSubSession, node: Node | None) -> None:
        """Hand ``session``'s messages on; notice what needs repairing: a channel the
        server dropped (a slot moved), or the session's node gone."""
        try:
            async for message in session:
                if message["type"] == "sunsubscribe":
                    if self._placed.get(message["channel"]) == node:
                        del self._placed[message["channel"]]
                    log.info(
                        "pub/sub: %s dropped sharded channel %r (its slot moved);"
                        " subscribing it where it lives now",
                        node.address if node else "?",
                        message["channel"],
                    )
                    self._want_repair()
                    continue
                if self._handler is not None:
                    self._handler(message)
                else:
                    await self._messages.put(message)
        except RedisConnectionError as exc:
            where = node.address if node is not None else "the classic channels' node"
            log.warning("pub/sub session to %s ended (%s); moving its channels", where, exc)
        if node is None:
            if self._classic is not session:
                return  # closed on purpose
            await self._lose_classic(session)
        else:
            if self._shards.get(node) is not session:
                return  # closed on purpose
            del self._shards[node]
            for channel, placed_on in list(self._placed.items()):
                if placed_on == node:
                    del self._placed[channel]
            self._close(session)
        self._want_repair()

    def _want_repair(self) -> None:
        self._backend.want_refresh()
        self._repair.set()

    async def _repair_forever(self) -> None:
        """Subscribe again whatever is wanted and not placed, once the map has changed
        (or after a backoff), until it holds."""
        backoff = 0.05
        while True:
            await self._repair.wait()
            self._repair = self._tools.event()
            await self._backend.await_newer_map(self._router.generation, backoff)
            try:
                async with self._lock:
                    if self._classic is None and (self._channels or self._patterns):
                        await self._classic_session()
                    homeless = [c for c in self._shard_channels if c not in self._placed]
                    if homeless:
                        await self._place(homeless)
                        self.reconnects += 1
                backoff = 0.05
            except RedisError as exc:
                log.warning("pub/sub: could not subscribe again yet (%s); retrying", exc)
                backoff = min(backoff * 2, 2.0)
                self._repair.set()

    # -- receiving ----------------------------------------------------------------------

    def deliver_to(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Hand each message to ``handler`` in the task forwarding its session's
        messages, instead of through the queue to the iterating task."""
        self._handler = handler

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            message: dict[str, Any] = await self._messages.get()
        except Closed:
            raise StopAsyncIteration from None
        return message

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:  # noqa: ASYNC109 - redis-py's signature
        """The next message, or None if none arrived within ``timeout`` seconds."""
        try:
            return await self._tools.within(
                math.inf if timeout is None else timeout, self._messages.get
            )
        except Closed:
            return None

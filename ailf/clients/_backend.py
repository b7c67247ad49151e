"""What a client asks of the engine that runs its commands: the contracts, as Protocols.

Both faces run one command surface (:class:`~ailf.clients._commands.Commands`) and leave
the wire to an engine: the sync :class:`~ailf.clients._sync.RedisClient` to
:class:`~ailf.clients._sync_backend.RedisPyBackend` (redis-py's blocking pool), the
:class:`~ailf.clients._async_client.AsyncRedisClient` to
:class:`~ailf.clients._trio_backend.TrioBackend` or
:class:`~ailf.clients._asyncio_backend.AsyncioBackend`, whichever async library runs it.
The clients and pipelines know engines only through these Protocols, so an engine can
be swapped (a cluster engine is the next one) without touching a face.

Every engine keeps the same promises:

- replies are raw RESP2 values (the surface converts them, once, for every engine);
- an error reply is *returned* as a :class:`~ailf.errors.ResponseError` instance, not
  raised, so that one bad command in a pipeline does not hide the replies after it;
- every other failure is raised as one of ailf's errors (:mod:`ailf.clients._errors`);
- a blocking command (``blocking=True``) runs on a connection of its own, its reply
  held to its own wait plus ``socket_timeout``;
- a connection on which anything failed, cancellation included, is closed, never
  reused: its place in the reply stream is unknown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

__all__ = ["AsyncBackend", "AsyncReserved", "PubSubSession", "SyncBackend", "SyncReserved"]

Command = tuple[Any, ...]


class SyncReserved(Protocol):
    """One connection held by a watching pipeline from WATCH to EXEC (or reset)."""

    @property
    def closed(self) -> bool:
        """True once released, or closed by a failed request."""
        ...

    def request(self, commands: Sequence[Command], blocking: bool = False) -> list[Any]:
        """Send commands in one write; their raw replies, in order."""
        ...

    def release(self) -> None:
        """Give the connection back (closed if a request failed on it); idempotent."""
        ...


class AsyncReserved(Protocol):
    """:class:`SyncReserved`, awaited."""

    @property
    def closed(self) -> bool: ...

    async def request(self, commands: Sequence[Command], blocking: bool = False) -> list[Any]: ...

    async def release(self) -> None: ...


class SyncBackend(Protocol):
    """The engine under :class:`~ailf.clients._sync.RedisClient`."""

    def execute(self, args: Command, blocking: bool) -> Any:
        """One command's raw reply."""
        ...

    def execute_many(self, commands: Sequence[Command], blocking: bool) -> list[Any]:
        """Raw replies of commands sent in one write (MULTI/EXEC are the caller's)."""
        ...

    def reserve(self) -> SyncReserved:
        """A connection of the caller's own, for a pipeline's WATCH … EXEC."""
        ...

    def probe(self) -> None:
        """Connect afresh, outside the pool, PING and hang up; raise what failed."""
        ...

    def close(self) -> None:
        """Close every idle connection; busy ones close when given back."""
        ...


class PubSubSession(Protocol):
    """A pub/sub session on a dedicated connection, as both async engines give it
    (:class:`~ailf.clients._pubsub.PubSub` under trio, its asyncio twin):
    ``async with client.pubsub() as ps:``; see ``docs/clients.md``."""

    reconnects: int

    @property
    def channels(self) -> set[Any]: ...

    @property
    def patterns(self) -> set[Any]: ...

    async def subscribe(self, *channels: Any) -> None: ...

    async def psubscribe(self, *patterns: Any) -> None: ...

    async def unsubscribe(self, *channels: Any) -> None: ...

    async def punsubscribe(self, *patterns: Any) -> None: ...

    @property
    def shard_channels(self) -> set[Any]: ...

    async def ssubscribe(self, *channels: Any) -> None: ...

    async def sunsubscribe(self, *channels: Any) -> None: ...

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None: ...  # noqa: ASYNC109

    def deliver_to(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Hand each message to ``handler`` as soon as it is read, instead of keeping it
        for iteration; ``handler`` must not block. Iterating still ends (or raises)
        when the session does."""
        ...

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None: ...


class AsyncBackend(Protocol):
    """The engine under :class:`~ailf.clients._async_client.AsyncRedisClient`."""

    def execute(self, args: Command, blocking: bool) -> Awaitable[Any]:
        """An awaitable of one command's raw reply."""
        ...

    async def execute_many(self, commands: Sequence[Command], blocking: bool) -> list[Any]:
        """Raw replies of commands sent in one write (MULTI/EXEC are the caller's)."""
        ...

    async def recover(self, args: Command, reply: Exception, blocking: bool) -> Any:
        """What to make of an error reply to :meth:`execute`: the reply itself on one
        server; on a cluster, after a redirect, the reply of the node it was sent on to.
        (Asked only when there is an error reply, so the common case costs nothing.)"""
        ...

    async def reserve(self) -> AsyncReserved:
        """A connection of the caller's own, for a pipeline's WATCH … EXEC."""
        ...

    def pubsub(self, *, reconnect: bool = True) -> PubSubSession:
        """A pub/sub session on a dedicated connection (``async with``). With
        ``reconnect=False`` a lost connection ends it (iterating raises) instead of
        reconnecting to the same node: for a cluster's sessions, moved elsewhere."""
        ...

    async def sleep(self, seconds: float) -> None:
        """The running library's sleep (backoff between retries)."""
        ...

    @property
    def reconnects(self) -> int:
        """How often a connection that had broken was made again (the metric
        ``ailf_redis_reconnects_total``); 0 where the library reconnects unseen."""
        ...

    async def open(self) -> None:
        """Connect now, so that a wrong address or password fails at ``async with``."""
        ...

    async def aclose(self) -> None:
        """Close every connection; commands in flight fail."""
        ...

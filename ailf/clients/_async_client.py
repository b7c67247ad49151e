"""``AsyncRedisClient``: one async Redis client for trio (native) and asyncio (delegated).

Under trio, ``async with AsyncRedisClient(config) as client:`` opens a nursery that owns
every background task of the client (the shared connection's reader and writer); nothing
outlives the block, and leaving it closes every connection at once. Under asyncio the
same class runs on ``redis.asyncio``. Which one is decided when the client is entered
(or first used), from the running async library.

The command methods come from :class:`~ailf.clients._commands.Commands`, which the sync
:class:`~ailf.clients._sync.RedisClient` runs too, and return redis-py's shapes; see
``docs/clients.md`` for the cancellation contract, pipelining, blocking commands and
reconnection.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import sniffio

from ailf.clients._backend import AsyncBackend, AsyncReserved, PubSubSession
from ailf.clients._command_kinds import is_idempotent
from ailf.clients._commands import Commands, Convert
from ailf.clients._errors import raise_reply_error
from ailf.clients._pipeline import AsyncPipeline
from ailf.config import RedisConfig, given_or_from_env
from ailf.errors import (
    AuthenticationError,
    RedisConnectionError,
    RedisTimeoutError,
    WatchError,
)
from ailf.server import resolve_embedded

if TYPE_CHECKING:
    import trio

__all__ = ["AsyncRedisClient"]


class _BackendClass(Protocol):
    """What :func:`_backend_class` returns: TrioBackend or AsyncioBackend, the class."""

    def __call__(self, config: RedisConfig, nursery: trio.Nursery | None) -> AsyncBackend: ...

    async def probe(self, config: RedisConfig) -> None: ...


def _backend_class(config: RedisConfig) -> _BackendClass:
    """The engine for the running async library and the config (imported on first use)."""
    library = sniffio.current_async_library()
    if config.cluster and library in ("trio", "asyncio"):
        from ailf.clients._cluster import ClusterBackend

        return ClusterBackend
    if library == "trio":
        from ailf.clients._trio_backend import TrioBackend

        return TrioBackend
    if library == "asyncio":
        from ailf.clients._asyncio_backend import AsyncioBackend

        return AsyncioBackend
    raise RuntimeError(f"AsyncRedisClient runs under trio or asyncio, not {library}")


async def _resolved(config: RedisConfig) -> RedisConfig:
    """:func:`~ailf.server.resolve_embedded`, in a worker thread when it may start the
    shared server, so that the event loop goes on meanwhile."""
    if not config.embedded:
        return config
    if sniffio.current_async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(resolve_embedded, config)
    import asyncio

    return await asyncio.to_thread(resolve_embedded, config)


class AsyncRedisClient(Commands):
    """An async Redis client; use it as ``async with AsyncRedisClient(config) as client:``.

    ``config`` defaults to :meth:`RedisConfig.from_env`. Under trio every task in the
    block may use the client at once: ordinary commands share one connection and are
    pipelined on the wire automatically; blocking commands (``xreadgroup(block=…)``,
    ``blpop``) run on dedicated connections from a pool of at most
    ``config.max_connections``.

    ``retry_idempotent=True`` retries commands that are safe to repeat (reads, SET
    without NX/XX/GET, DEL, HSET, XACK…, see
    :func:`~ailf.clients._command_kinds.is_idempotent`) when the connection fails under them,
    with ``config.retry``'s backoff. Other commands, and all commands by default, fail
    with :class:`~ailf.errors.RedisConnectionError`: they may or may not have run.

    Cancellation: a command cancelled before it was queued did not run; one cancelled
    after may still run on the server, and its reply is discarded, never handed to
    another caller. See ``docs/clients.md`` for the whole contract.

    Optimistic transactions (WATCH) need connection state, which cannot live on the
    shared connection: ``pipe.watch()`` reserves a pooled connection for the pipeline
    until it executes or resets; :meth:`transaction` wraps the retry loop.

    Used without ``async with`` (under trio), the client has no nursery to run
    background tasks in, so each command borrows a dedicated connection from the pool;
    call :meth:`aclose` when done. Pub/sub always needs ``async with client.pubsub()``.
    """

    def __init__(
        self, config: RedisConfig | None = None, *, retry_idempotent: bool = False
    ) -> None:
        self.config = given_or_from_env(config, type(self).__name__)
        self.retry_idempotent = retry_idempotent
        self._connect_to: RedisConfig | None = None  # the config resolved, once connecting
        self._backend: AsyncBackend | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncRedisClient {self.config.url}>"

    @property
    def reconnects(self) -> int:
        """How often the connection broke and was made again, since ``async with``."""
        return 0 if self._backend is None else self._backend.reconnects

    @property
    def address(self) -> str:
        """Where the client connects (``host:port`` or the socket path): what its errors
        name. For an embedded config, the shared server's, once connected."""
        return (self._connect_to or self.config).address

    # -- lifetime -------------------------------------------------------------------

    async def __aenter__(self) -> AsyncRedisClient:
        if self._stack is not None or self._closed:
            raise RuntimeError("an AsyncRedisClient can be entered once; create a new one")
        if self._connect_to is None:
            self._connect_to = await _resolved(self.config)
        stack = contextlib.AsyncExitStack()
        nursery = None
        if sniffio.current_async_library() == "trio":
            import trio

            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
        backend = _backend_class(self._connect_to)(self._connect_to, nursery)
        stack.push_async_callback(backend.aclose)
        try:
            await backend.open()
        except BaseException:
            await stack.aclose()
            raise
        self._backend = backend
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; commands in flight fail with RedisConnectionError.

        Under trio, when the client was entered with ``async with``, only the task that
        entered it may close it (leaving the block does).
        """
        self._closed = True
        stack, self._stack = self._stack, None
        backend, self._backend = self._backend, None
        if stack is not None:
            await stack.aclose()
        elif backend is not None:
            await backend.aclose()

    async def close(self) -> None:
        """:meth:`aclose` under the name the upstream library's async client used."""
        await self.aclose()

    async def health_check(self) -> bool:
        """True when the server answers PING, False when it cannot be reached in time.

        As :meth:`RedisClient.health_check <ailf.clients._sync.RedisClient.health_check>`:
        the probe is a fresh connection of its own, outside the client's connections (a
        busy or closed client cannot fail it), not retried, and connecting and the reply
        get ``socket_connect_timeout`` each, so a hung server reads as down instead of
        hanging the probe. A server that refuses the credentials is a misconfiguration,
        not an outage: that raises :class:`~ailf.errors.AuthenticationError`.
        """
        try:
            await _backend_class(self.config).probe(await _resolved(self.config))
        except AuthenticationError:
            raise
        except (RedisConnectionError, RedisTimeoutError):
            return False
        return True

    def _lazy_backend(self) -> AsyncBackend:
        """The engine of a client used without ``async with``: no nursery, so every
        command borrows a pool connection. An embedded config is resolved here, in the
        event loop's thread: this is the one path that may start the shared server
        without handing that to a worker thread (``async with`` does)."""
        if self._closed:
            raise RedisConnectionError(
                f"this AsyncRedisClient for Redis at {self.address} is closed; create a new one"
            )
        if self._connect_to is None:
            self._connect_to = resolve_embedded(self.config)
        self._backend = _backend_class(self._connect_to)(self._connect_to, None)
        return self._backend

    # -- running commands -----------------------------------------------------------

    async def _command(
        self, args: tuple[Any, ...] | None, convert: Convert = None, blocking: bool = False
    ) -> Any:
        if args is None:
            return convert(None) if convert is not None else None
        backend = self._backend or self._lazy_backend()
        try:
            reply = await backend.execute(args, blocking)
        except AuthenticationError:
            raise
        except RedisConnectionError as exc:
            if not self.retry_idempotent or not is_idempotent(args):
                raise
            reply = await self._retry(backend, args, blocking, exc)
        if isinstance(reply, Exception):
            reply = await backend.recover(args, reply, blocking)
            if isinstance(reply, Exception):
                raise_reply_error(reply, self.address)
        return reply if convert is None else convert(reply)

    async def _retry(
        self,
        backend: AsyncBackend,
        args: tuple[Any, ...],
        blocking: bool,
        error: RedisConnectionError,
    ) -> Any:
        """Send an idempotent command again, with backoff; the last error if all fail."""
        policy = self.config.retry
        for attempt in range(policy.attempts):
            await backend.sleep(policy.delay(attempt))
            try:
                return await backend.execute(args, blocking)
            except AuthenticationError:
                raise
            except RedisConnectionError as exc:
                error = exc
        raise error

    async def _execute_many(self, commands: Sequence[tuple[Any, ...]], blocking: bool) -> list[Any]:
        backend = self._backend or self._lazy_backend()
        return await backend.execute_many(commands, blocking)

    async def _reserve(self) -> AsyncReserved:
        """A pool connection of a pipeline's own, for its WATCH … EXEC."""
        backend = self._backend or self._lazy_backend()
        return await backend.reserve()

    def pipeline(self, transaction: bool = True) -> AsyncPipeline:
        """An :class:`~ailf.clients._pipeline.AsyncPipeline` on this client (MULTI/EXEC if
        asked): ``async with client.pipeline() as pipe:``."""
        return AsyncPipeline(self, transaction)

    async def transaction(
        self,
        func: Callable[[AsyncPipeline], Any],
        *watches: Any,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """Run ``func(pipe)`` as a check-and-set transaction until no watched key changed.

        Each attempt WATCHes ``watches`` on a fresh pipeline state, calls ``func`` (sync
        or async; it reads through ``pipe`` at once, then calls ``pipe.multi()`` and
        queues its writes) and executes; on :class:`~ailf.errors.WatchError` it sleeps
        ``watch_delay`` seconds, if given, and tries again, as redis-py's does. Returns
        the transaction's replies, or what ``func`` returned if ``value_from_callable``.
        """
        async with self.pipeline() as pipe:
            while True:
                try:
                    if watches:
                        await pipe.watch(*watches)
                    value = func(pipe)
                    if inspect.isawaitable(value):
                        value = await value
                    results = await pipe.execute()
                    return value if value_from_callable else results
                except WatchError:
                    if watch_delay is not None and watch_delay > 0:
                        await (self._backend or self._lazy_backend()).sleep(watch_delay)

    def pubsub(self) -> PubSubSession:
        """A pub/sub session on a dedicated connection: ``async with client.pubsub() as ps``."""
        backend = self._backend or self._lazy_backend()
        return backend.pubsub()

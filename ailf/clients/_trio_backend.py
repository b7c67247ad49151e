"""The trio engine behind :class:`~ailf.clients._async_client.AsyncRedisClient`.

With a nursery (``async with AsyncRedisClient(...)``), ordinary commands share one
:class:`~ailf.clients._multiplex.SharedConnection` whose reader and writer tasks live in
that nursery; blocking commands borrow dedicated connections from a bounded
:class:`~ailf.clients._pool.ConnectionPool`. When the shared connection breaks, the
commands in flight fail and the next command opens a new one, with backoff.

Without a nursery (a client used without ``async with``) there can be no background
task, so every command borrows a dedicated connection from the pool: correct, but with
no automatic pipelining across tasks. ``aclose()`` closes the idle ones.

A pipeline that WATCHes keys reserves a pool connection (:meth:`TrioBackend.reserve`)
for its WATCH … MULTI/EXEC, since connection state cannot live on the shared one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import trio

from ailf.clients._command_kinds import blocking_reply_timeout
from ailf.clients._connection import open_connection
from ailf.clients._errors import not_connected
from ailf.clients._multiplex import SharedConnection
from ailf.clients._pool import ConnectionPool, ReservedConnection, connect_with_retry
from ailf.clients._pubsub import PubSub
from ailf.clients._resp import pack_command, pack_commands
from ailf.config import RedisConfig
from ailf.errors import RedisConnectionError

__all__ = ["TrioBackend"]


class TrioBackend:
    """Runs commands on trio; see the module docstring for which connection each uses."""

    def __init__(self, config: RedisConfig, nursery: trio.Nursery | None) -> None:
        self._config = config
        self._nursery = nursery
        self._pool = ConnectionPool(config, config.max_connections)
        self._shared: SharedConnection | None = None
        self._connect_lock = trio.Lock()
        self._connect_attempts = 0
        self._connect_failure: RedisConnectionError | None = None
        self._closed = False
        self.reconnects = 0

    @staticmethod
    async def probe(config: RedisConfig) -> None:
        """Connect afresh, outside the pool and without retrying, then hang up.

        Connecting is held to ``socket_connect_timeout`` and so is the handshake, which
        ends with a PING: a server that answers it is up.
        """
        connection = await open_connection(config)
        await connection.aclose()

    async def open(self) -> None:
        """Connect the shared connection now, so a wrong address fails at ``async with``."""
        if self._nursery is not None:
            await self._reconnect(None)

    def ready(self) -> SharedConnection | None:
        """The shared connection if it is connected and usable now, else None."""
        shared = self._shared
        return shared if shared is not None and shared.usable() else None

    async def connected(self) -> SharedConnection:
        """The shared connection, connected (with backoff) if it was not: what this
        raises, it raised while connecting, before anything was sent. Needs a nursery."""
        shared = self._shared
        if shared is not None and shared.usable():
            return shared
        return await self._reconnect(shared)

    def execute(self, args: tuple[Any, ...], blocking: bool) -> Awaitable[Any]:
        """An awaitable of one command's raw reply (an error reply is returned, not raised).

        The common case hands back the shared connection's request coroutine itself,
        saving a coroutine frame per command; the rest goes through
        :meth:`_execute_elsewhere`.
        """
        shared = self._shared
        if not blocking and shared is not None and shared.usable():
            return shared.request(pack_command(args))
        return self._execute_elsewhere(args, blocking)

    async def recover(self, args: tuple[Any, ...], reply: Exception, blocking: bool) -> Any:
        """An error reply is the command's answer, on one server."""
        return reply

    async def _execute_elsewhere(self, args: tuple[Any, ...], blocking: bool) -> Any:
        if blocking or self._nursery is None:
            replies = await self._pool.request([args], self._reply_timeout([args], blocking))
            return replies[0]
        shared = await self._reconnect(self._shared)
        return await shared.request(pack_command(args))

    async def execute_many(self, commands: Sequence[tuple[Any, ...]], blocking: bool) -> list[Any]:
        """Raw replies of commands sent in one write."""
        if blocking or self._nursery is None:
            replies = await self._pool.request(commands, self._reply_timeout(commands, blocking))
        else:
            shared = self._shared
            if shared is None or not shared.usable():
                shared = await self._reconnect(shared)
            data = pack_commands(commands)
            replies = await shared.request(data, len(commands))
            if len(commands) == 1:
                replies = [replies]
        return replies

    def _reply_timeout(self, commands: Sequence[tuple[Any, ...]], blocking: bool) -> float | None:
        """None (``socket_timeout``) for ordinary commands; for blocking ones, their own
        wait plus ``socket_timeout`` (see :func:`blocking_reply_timeout`)."""
        if not blocking:
            return None
        return blocking_reply_timeout(commands, self._config.socket_timeout)

    async def reserve(self) -> ReservedConnection:
        """A pool connection of the caller's own, for a pipeline's WATCH … EXEC."""
        return await self._pool.reserve()

    def pubsub(self, *, reconnect: bool = True) -> PubSub:
        return PubSub(self._config, reconnect=reconnect)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def _reconnect(self, broken: SharedConnection | None) -> SharedConnection:
        """A working shared connection: the current one, or a new one (with backoff).

        Tasks that waited while another task's attempt failed get that failure at once,
        rather than each running the whole backoff sequence again in turn.
        """
        attempts_seen = self._connect_attempts
        async with self._connect_lock:
            current = self._shared
            if current is not None and current is not broken and current.error is None:
                return current
            if self._closed or self._nursery is None:
                raise RedisConnectionError(
                    f"client for Redis at {self._config.address} is closed;"
                    " use it inside `async with AsyncRedisClient(...) as client:`"
                )
            failure = self._connect_failure
            if failure is not None and self._connect_attempts != attempts_seen:
                raise type(failure)(str(failure))
            self._connect_attempts += 1
            try:
                connection = await connect_with_retry(self._config)
            except RedisConnectionError as exc:
                self._connect_failure = failure = not_connected(exc)
                if failure is exc:
                    raise
                raise failure from exc.__cause__
            self._connect_failure = None
            if current is not None:
                self.reconnects += 1
            shared = SharedConnection(connection)
            self._nursery.start_soon(shared.run)
            self._shared = shared
            return shared

    async def aclose(self) -> None:
        """Close every connection; commands in flight fail with RedisConnectionError."""
        self._closed = True
        if self._shared is not None:
            self._shared.close()
        await self._pool.aclose()

"""Dedicated connections: connecting with backoff, and a bounded pool of them.

Blocking commands (``XREADGROUP … BLOCK``, ``BLPOP``…) must not sit on the shared
connection, where they would hold up every command queued behind them, so each runs
on a connection of its own, borrowed from a :class:`ConnectionPool` for the duration of
the command. The pool is bounded (``RedisConfig.max_connections``): past the bound,
callers wait for a connection to come back. A connection comes back only if the
command finished normally; after any exception, cancellation included, it is closed,
because its place in the reply stream is unknown.

A pipeline that WATCHes keys holds one of these connections from ``watch()`` to
``execute()`` or ``reset()``, through a :class:`ReservedConnection`, under the same rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from ailf.clients._command_kinds import blocking_reply_timeout
from ailf.clients._connection import Connection, open_connection
from ailf.clients._errors import not_connected, reservation_lost
from ailf.clients._resp import pack_commands
from ailf.config import RedisConfig
from ailf.errors import AuthenticationError, RedisConnectionError, TLSHandshakeTimeout

__all__ = ["ConnectionPool", "ReservedConnection", "connect_with_retry"]

log = logging.getLogger("ailf.clients")


async def connect_with_retry(config: RedisConfig, *, forever: bool = False) -> Connection:
    """Open a connection, retrying refused/unreachable with ``config.retry``'s backoff.

    Gives up after ``config.retry.attempts`` retries with the last
    :class:`RedisConnectionError`, unless ``forever`` (pub/sub listeners, which must
    outlive a Redis restart; cancel them to stop). Wrong credentials are never retried,
    and neither, unless ``forever``, is a TLS handshake the server did not answer: a
    plain port does not learn TLS by being asked again, and four attempts would only
    make the error four times as slow to arrive.
    """
    policy = config.retry
    attempt = 0
    while True:
        try:
            return await open_connection(config)
        except AuthenticationError:
            raise
        except RedisConnectionError as exc:
            final = attempt >= policy.attempts or isinstance(exc, TLSHandshakeTimeout)
            if not forever and final:
                raise
            delay = policy.delay(min(attempt, 30))
            log.warning("%s; retrying in %.2f s", exc, delay)
            await trio.sleep(delay)
            attempt += 1


class ConnectionPool:
    """At most ``max_connections`` dedicated connections, reused while they are healthy."""

    def __init__(self, config: RedisConfig, max_connections: int) -> None:
        self._config = config
        self._idle: list[Connection] = []
        self._limit = trio.Semaphore(max_connections)
        self._closed = False

    async def request(
        self, commands: Sequence[tuple[Any, ...]], reply_timeout: float | None = None
    ) -> list[Any]:
        """Run commands on a borrowed connection, in one write; their replies, in order.

        Error replies are returned, not raised. ``reply_timeout`` bounds each reply (None:
        ``socket_timeout``; blocking commands pass their own, see
        :func:`~ailf.clients._command_kinds.blocking_reply_timeout`). Cancellation closes the
        borrowed connection.
        """
        data = pack_commands(commands)
        connection = await self._acquire()
        try:
            await connection.send(data)
            return [await connection.read_reply(reply_timeout) for _ in commands]
        except BaseException:
            await connection.aclose()
            raise
        finally:
            await self._release(connection)

    async def reserve(self) -> ReservedConnection:
        """A connection held by the caller across several requests, until it releases it."""
        return ReservedConnection(self, await self._acquire())

    async def _acquire(self) -> Connection:
        await self._limit.acquire()
        try:
            return await self._checkout()
        except BaseException:
            self._limit.release()
            raise

    async def _release(self, connection: Connection) -> None:
        """Take a connection back: kept for reuse unless it (or the pool) was closed."""
        try:
            if self._closed or connection.closed:
                await connection.aclose()
            else:
                self._idle.append(connection)
        finally:
            self._limit.release()

    async def _checkout(self) -> Connection:
        if self._closed:
            raise RedisConnectionError(f"client for Redis at {self._config.address} is closed")
        while self._idle:
            connection = self._idle.pop()
            if not connection.has_pending_input():
                return connection
            await connection.aclose()
        try:
            return await connect_with_retry(self._config)
        except RedisConnectionError as exc:
            failure = not_connected(exc)
            if failure is exc:
                raise
            raise failure from exc.__cause__

    async def aclose(self) -> None:
        """Close idle connections; borrowed ones close when their command ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()


class ReservedConnection:
    """One pool connection for one user across several requests (WATCH … MULTI/EXEC).

    The first request that fails in any way, cancellation included, closes the
    connection and gives its place in the pool back at once: the connection's state
    (its WATCH, its place in the reply stream) is unknown after that, so it is never
    reused, and later requests raise :class:`RedisConnectionError`. :meth:`release`
    gives a healthy connection back to the pool; it is safe to call twice.
    """

    def __init__(self, pool: ConnectionPool, connection: Connection) -> None:
        self._pool = pool
        self._connection: Connection | None = connection
        self._address = connection.address

    @property
    def closed(self) -> bool:
        """True once released, or closed by a failed request."""
        return self._connection is None

    async def request(
        self, commands: Sequence[tuple[Any, ...]], blocking: bool = False
    ) -> list[Any]:
        """Send commands in one write; their replies in order (error replies returned)."""
        connection = self._connection
        if connection is None:
            raise reservation_lost(self._address)
        limit = blocking_reply_timeout(commands, connection.socket_timeout) if blocking else None
        try:
            return await connection.request(commands, limit)
        except BaseException:
            try:
                await connection.aclose()
            finally:
                await self.release()
            raise

    async def release(self) -> None:
        """Give the connection back to the pool (closed if a request failed on it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool._release(connection)

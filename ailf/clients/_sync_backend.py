"""The sync engine behind :class:`~ailf.clients._sync.RedisClient`: redis-py's blocking pool.

The sync client runs the same command surface as the async one
(:class:`~ailf.clients._commands.Commands`), so this engine only moves bytes: it packs
commands with the packer the trio engine uses (hiredis), sends them on a connection of
redis-py's thread-safe pool, and hands back the raw RESP2 replies, error replies
returned rather than raised, as every engine does (:mod:`ailf.clients._backend`).

Why redis-py's pool and not a transport of its own: the pool is shared with
:attr:`RedisClient.client <ailf.clients._sync.RedisClient.client>`, the redis-py client
that stays available for what the surface lacks, so ``max_connections`` bounds both;
and redis-py's connections already do TCP, unix sockets, TLS, the handshake, and the
check that an idle connection was not closed by the server before it is reused. What
redis-py adds around a command — response callbacks, retries, the RESP3 default, per-call
bookkeeping — is bypassed: the pool speaks RESP2 (``protocol=2``, as the asyncio engine
does), and commands go straight to ``send_packed_command``/``read_response``, which
measured faster than redis-py's own client for single commands and for pipelines (see
``python -m bench.client``).
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import redis
import redis.connection
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ailf.clients._command_kinds import blocking_reply_timeout
from ailf.clients._errors import (
    REDIS_PY_ERRORS,
    from_redis_py,
    not_connected,
    raise_from_redis_py,
    reply_error,
    reservation_lost,
    tls_failed,
    tls_unanswered,
)
from ailf.clients._resp import pack_command, pack_commands
from ailf.config import RedisConfig
from ailf.errors import RedisConnectionError

__all__ = ["RedisPyBackend", "RedisPyReserved"]

Command = tuple[Any, ...]


class _TCPConnected(redis.Connection):
    """redis-py's TCP connection, noting when the TCP part of connecting is done."""

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()
        self._tcp_connected = True
        return sock


class _TLSConnection(redis.SSLConnection, _TCPConnected):
    """redis-py's TLS connection, saying so when the server does not answer TLS.

    ``SSLConnection._connect`` connects TCP through ``super()`` (here
    :class:`_TCPConnected`, which notes it), then does the handshake: a timeout after
    the TCP part is the server not answering TLS, which redis-py would report as a bare
    "Timeout connecting to server". The same errors as on the async engines say what
    happened instead: :class:`TLSHandshakeTimeout` (most likely a plain port), or a
    failed handshake with what to check.
    """

    def _connect(self) -> socket.socket:
        self._tcp_connected = False
        try:
            sock: socket.socket = super()._connect()
            return sock
        except (TimeoutError, ssl.SSLError) as exc:
            if not self._tcp_connected:
                raise
            address = f"{self.host}:{self.port}"
            if isinstance(exc, ssl.SSLError):
                raise tls_failed(address, exc) from exc
            raise tls_unanswered(address, self.socket_connect_timeout or 0) from exc


def _bounded_handshake(connection: redis.connection.AbstractConnection) -> None:
    """redis-py's connection handshake, held to ``socket_connect_timeout``.

    redis-py reads the handshake replies (AUTH, CLIENT SETINFO...) with
    ``socket_timeout``, which is None by default: a port that accepts connections but
    never answers (not a Redis server, or a stopped one) would hang the first command
    forever. Connecting means handshaking too, so the connect timeout bounds both.
    """
    sock = connection._sock
    assert sock is not None  # called by connect(), once the socket is open
    sock.settimeout(connection.socket_connect_timeout)
    try:
        connection.on_connect()
    except redis.TimeoutError as exc:
        raise redis.ConnectionError(
            f"no handshake reply within the connect timeout ({exc}); is it a Redis server?"
        ) from exc
    sock.settimeout(connection.socket_timeout)


def _pool(config: RedisConfig) -> redis.ConnectionPool:
    kwargs = config.redis_py_kwargs()
    if config.unix_socket_path:
        kwargs["connection_class"] = redis.UnixDomainSocketConnection
        kwargs.pop("socket_keepalive")
    elif config.ssl:
        kwargs["connection_class"] = _TLSConnection
    # No retries: whether a command that may have run can be sent again is the caller's
    # decision, and an unreachable server must fail within socket_connect_timeout.
    return redis.ConnectionPool(
        protocol=2, retry=Retry(NoBackoff(), 0), redis_connect_func=_bounded_handshake, **kwargs
    )


def _read(connection: redis.connection.Connection) -> Any:
    """The next reply; an error reply returned as ailf's ResponseError (the connection
    is in step after one, and reusable)."""
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as exc:
        return reply_error(exc)


def _read_all(connection: redis.connection.Connection, commands: Sequence[Command]) -> list[Any]:
    replies = [_read(connection) for _ in commands]
    executed = replies[-1]
    if commands[-1] == ("EXEC",) and isinstance(executed, list):
        # The only reply with error replies inside it: redis-py's parser leaves them
        # redis-py's, where every engine gives ailf's.
        replies[-1] = [
            reply_error(r) if isinstance(r, redis.exceptions.ResponseError) else r for r in executed
        ]
    return replies


class RedisPyBackend:
    """Runs commands on a redis-py connection pool of its own (``config`` resolved)."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.pool = _pool(config)
        #: The converting redis-py client on the same pool (``RedisClient.client``).
        self.redis = redis.Redis(connection_pool=self.pool)

    def execute(self, args: Command, blocking: bool) -> Any:
        if blocking:
            return self._blocking([args])[0]
        return self._request(pack_command(args), (args,))[0]

    def execute_many(self, commands: Sequence[Command], blocking: bool) -> list[Any]:
        if blocking:
            return self._blocking(commands)
        return self._request(pack_commands(commands), commands)

    def _request(self, data: bytes, commands: Sequence[Command]) -> list[Any]:
        """Send packed ``commands`` on a pool connection; their replies. (Packed first: a
        DataError then leaves the pool alone.)"""
        pool = self.pool
        connection = self._connection()
        try:
            connection.send_packed_command((data,), check_health=False)
            return _read_all(connection, commands)
        except REDIS_PY_ERRORS as exc:  # redis-py disconnected it already
            raise_from_redis_py(exc, self.config)
        finally:
            pool.release(connection)

    def _blocking(self, commands: Sequence[Command]) -> list[Any]:
        """Commands with a blocking one among them, on a pool connection held meanwhile,
        each reply held to the commands' own wait plus ``socket_timeout``."""
        reserved = self.reserve()
        try:
            return reserved.request(commands, blocking=True)
        finally:
            reserved.release()

    def reserve(self) -> RedisPyReserved:
        return RedisPyReserved(self.config, self.pool, self._connection())

    def _connection(self) -> redis.connection.Connection:
        """A connected pool connection; :class:`NotConnected` when connecting failed."""
        try:
            return self.pool.get_connection()
        except REDIS_PY_ERRORS as exc:
            translated = from_redis_py(exc, self.config)
            if isinstance(translated, RedisConnectionError):
                translated = not_connected(translated)
            raise translated from exc

    def probe(self) -> None:
        """Connect afresh, outside the pool (a busy pool cannot fail it), and PING; the
        reply is held to ``socket_connect_timeout``, as connecting is."""
        pool = self.pool
        timeout = self.config.socket_connect_timeout
        probe = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": timeout})
        try:
            probe.connect()
            probe.send_command("PING")
            probe.read_response()
        except REDIS_PY_ERRORS as exc:
            raise_from_redis_py(exc, self.config)
        finally:
            probe.disconnect()

    def close(self) -> None:
        self.pool.disconnect()


class RedisPyReserved:
    """One pool connection for one user across several requests (WATCH … EXEC, or a
    blocking command): the trio engine's
    :class:`~ailf.clients._pool.ReservedConnection`, on redis-py. A request that fails
    in any way closes the connection; later ones raise RedisConnectionError."""

    def __init__(
        self,
        config: RedisConfig,
        pool: redis.ConnectionPool,
        connection: redis.connection.Connection,
    ) -> None:
        self._config = config
        self._pool = pool
        self._connection: redis.connection.Connection | None = connection

    @property
    def closed(self) -> bool:
        return self._connection is None

    def request(self, commands: Sequence[Command], blocking: bool = False) -> list[Any]:
        """Send commands in one write; their replies in order (error replies returned).

        With ``blocking``, each reply may take the commands' own wait plus
        ``socket_timeout`` (:func:`~ailf.clients._command_kinds.blocking_reply_timeout`):
        redis-py would hold it to ``socket_timeout`` alone, failing a ``BLOCK 10000``
        read under a 5 s one. The socket gets its own timeout back afterwards.
        """
        connection = self._connection
        if connection is None:
            raise reservation_lost(self._config.address)
        data = pack_commands(commands)
        socket_timeout = self._config.socket_timeout
        try:
            connection.send_packed_command((data,), check_health=False)
            if not blocking:
                return _read_all(connection, commands)
            limit = blocking_reply_timeout(commands, socket_timeout)
            sock = connection._sock
            assert sock is not None  # connected: the command was just sent
            sock.settimeout(None if limit == math.inf else limit)
            try:
                return _read_all(connection, commands)
            finally:
                if connection._sock is sock:  # not disconnected by a failed read
                    sock.settimeout(socket_timeout)
        except BaseException as exc:
            connection.disconnect()  # its place in the reply stream is unknown
            self.release()
            if isinstance(exc, REDIS_PY_ERRORS):
                raise_from_redis_py(exc, self._config)
            raise

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)

"""The asyncio engine behind :class:`~ailf.clients._async_client.AsyncRedisClient`.

Under asyncio the client delegates to ``redis.asyncio`` (a pool of connections, one per
concurrent command), with two adjustments so that both engines look the same from
above: replies come back raw (redis-py's response callbacks are switched off, because
:class:`~ailf.clients._commands.Commands` converts them, once, for both engines), and
errors are ailf's (error replies are parsed straight into
:class:`~ailf.errors.ResponseError` keeping their code, other redis-py errors are
translated by :func:`~ailf.clients._errors.from_redis_py`, as on the sync engine).
redis-py's own retries are off: retrying is the client's decision (``retry_idempotent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import redis.asyncio
import redis.asyncio.client
import redis.exceptions
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ailf.clients._command_kinds import blocking_reply_timeout
from ailf.clients._errors import (
    REDIS_PY_ERRORS,
    raise_from_redis_py,
    raise_reply_error,
    reservation_lost,
    tls_failed,
    tls_unanswered,
)
from ailf.clients._pubsub import PubSubCommands, Request, SubscriptionState
from ailf.config import RedisConfig
from ailf.errors import AuthenticationError, RedisConnectionError, RedisTimeoutError, ResponseError

__all__ = ["AsyncioBackend", "AsyncioPubSub"]

log = logging.getLogger("ailf.clients")


def _ailf_error(response: str) -> ResponseError:
    return ResponseError(response)


class _HiredisParser(_AsyncHiredisParser):
    parse_error = staticmethod(_ailf_error)


class _PythonParser(_AsyncRESP2Parser):
    parse_error = staticmethod(_ailf_error)


def _parser_class() -> type:
    from ailf.clients._resp import parser_name

    return _HiredisParser if parser_name() == "hiredis" else _PythonParser


@contextlib.contextmanager
def _translated(config: RedisConfig) -> Iterator[None]:
    """redis-py's exceptions in, ailf's out (ailf's own pass through untouched)."""
    try:
        yield
    except REDIS_PY_ERRORS as exc:
        raise_from_redis_py(exc, config)


class _TLSConnection(redis.asyncio.SSLConnection):
    """redis-py's asyncio TLS connection, saying so when the server does not answer TLS.

    redis-py connects and does the TLS handshake in one ``asyncio.open_connection``, so
    a plain port that never answers the handshake reads as a bare "Timeout connecting
    to server". Here TCP connects first (redis-py's own ``_connect``, without TLS), then
    the stream starts TLS within what is left of ``socket_connect_timeout``; a timeout
    there is the same :class:`TLSHandshakeTimeout` as on the other engines, and a failed
    handshake the same error saying what to check.
    """

    def _connection_arguments(self) -> Mapping[str, Any]:
        return redis.asyncio.Connection._connection_arguments(self)  # TCP: TLS comes after

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await super()._connect()
        timeout = self.socket_connect_timeout or math.inf
        writer = self._writer
        assert writer is not None  # connected: super()._connect() opened the streams
        try:
            async with asyncio.timeout(max(0.0, timeout - (loop.time() - started))):
                await writer.start_tls(self.ssl_context.get(), server_hostname=self.host)
        except BaseException as exc:
            # The failed handshake took the transport from the stream, so redis-py's
            # disconnect() would wait for a close the stream is never told of.
            writer.transport.close()
            self._reader = self._writer = None
            if isinstance(exc, TimeoutError):
                raise tls_unanswered(f"{self.host}:{self.port}", timeout) from None
            if isinstance(exc, ssl.SSLError):
                raise tls_failed(f"{self.host}:{self.port}", exc) from exc
            raise


def _client(config: RedisConfig) -> redis.asyncio.Redis:
    # A blocking pool: past max_connections callers wait, as on trio, instead of failing
    # with "Too many connections".
    kwargs = config.redis_py_kwargs()
    connection_class: type = redis.asyncio.Connection
    if config.unix_socket_path:
        connection_class = redis.asyncio.UnixDomainSocketConnection
        kwargs.pop("socket_keepalive")
    elif config.ssl:
        connection_class = _TLSConnection
    pool = redis.asyncio.BlockingConnectionPool(
        connection_class=connection_class,
        timeout=None,
        protocol=2,
        retry=Retry(NoBackoff(), 0),
        parser_class=_parser_class(),
        **kwargs,
    )
    client = redis.asyncio.Redis.from_pool(pool)
    client.response_callbacks.clear()
    return client


class AsyncioBackend:
    """Runs commands through ``redis.asyncio``; same interface as the trio backend."""

    #: redis-py's pool reconnects inside, unseen.
    reconnects = 0

    def __init__(self, config: RedisConfig, nursery: object = None) -> None:
        # ``nursery`` is the trio engine's; asyncio has none, and both are built alike.
        self._config = config
        self._redis = _client(config)

    @classmethod
    async def probe(cls, config: RedisConfig) -> None:
        """Connect afresh on a one-connection pool of its own, PING, and close it.

        The reply is held to ``socket_connect_timeout``, as connecting is.
        """
        backend = cls(config.replace(socket_timeout=config.socket_connect_timeout))
        try:
            await backend.open()
        finally:
            await backend.aclose()

    async def open(self) -> None:
        """Connect (and PING) now, so a wrong address or password fails at ``async with``."""
        reply = await self.execute(("PING",), False)
        if isinstance(reply, Exception):
            raise_reply_error(reply, self._config.address)

    async def execute(self, args: tuple[Any, ...], blocking: bool) -> Any:
        if blocking:
            (reply,) = await self._execute_blocking([args])
            return reply
        with _translated(self._config):
            try:
                return await self._redis.execute_command(*args)
            except ResponseError as exc:
                return exc

    async def recover(self, args: tuple[Any, ...], reply: Exception, blocking: bool) -> Any:
        """An error reply is the command's answer, on one server."""
        return reply

    async def execute_many(self, commands: Sequence[tuple[Any, ...]], blocking: bool) -> list[Any]:
        if blocking:
            return await self._execute_blocking(commands)
        with _translated(self._config):
            async with self._redis.pipeline(transaction=False) as pipe:
                for args in commands:
                    pipe.execute_command(*args)
                return await pipe.execute(raise_on_error=False)

    async def _execute_blocking(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands with a blocking one among them, on a pool connection held meanwhile.

        redis-py would hold their replies to ``socket_timeout``, failing a
        ``BLOCK 10000`` read under a 5 s ``socket_timeout``; here they get their own
        wait plus ``socket_timeout``, as under trio.
        """
        reserved = await self.reserve()
        try:
            return await reserved.request(commands, blocking=True)
        finally:
            await reserved.release()

    async def reserve(self) -> AsyncioReservedConnection:
        """A pool connection of the caller's own, for a pipeline's WATCH … EXEC."""
        pool = self._redis.connection_pool
        with _translated(self._config):
            connection = await pool.get_connection()
        return AsyncioReservedConnection(self._config, pool, connection)

    def pubsub(self, *, reconnect: bool = True) -> AsyncioPubSub:
        return AsyncioPubSub(self._config, self._redis, reconnect=reconnect)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        await self._redis.aclose()


class AsyncioReservedConnection:
    """:class:`~ailf.clients._pool.ReservedConnection`'s asyncio twin, on a redis.asyncio
    pool connection: the same requests, and the same rule that a connection on which
    anything failed, cancellation included, is disconnected and never reused as it is.
    """

    def __init__(
        self,
        config: RedisConfig,
        pool: redis.asyncio.ConnectionPool,
        connection: redis.asyncio.connection.AbstractConnection,
    ) -> None:
        self._config = config
        self._address = config.address
        self._socket_timeout = config.socket_timeout
        self._pool = pool
        self._connection: redis.asyncio.connection.AbstractConnection | None = connection

    @property
    def closed(self) -> bool:
        """True once released, or disconnected by a failed request."""
        return self._connection is None

    async def request(
        self, commands: Sequence[tuple[Any, ...]], blocking: bool = False
    ) -> list[Any]:
        """Send commands in one write; their replies in order (error replies returned).

        Each reply is held to ``socket_timeout``, or, with ``blocking``, to the blocking
        commands' own wait plus ``socket_timeout``
        (:func:`~ailf.clients._command_kinds.blocking_reply_timeout`), as under trio.
        """
        connection = self._connection
        if connection is None:
            raise reservation_lost(self._address)
        limit = blocking_reply_timeout(commands, self._socket_timeout) if blocking else None
        try:
            with _translated(self._config):
                await connection.send_packed_command(connection.pack_commands(commands))
                return [await _reply_or_error(connection, limit, self._address) for _ in commands]
        except BaseException:
            try:
                await connection.disconnect(nowait=True)
            finally:
                await self.release()
            raise

    async def release(self) -> None:
        """Give the connection back to redis-py's pool (shielded: its books must balance)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.shield(self._pool.release(connection))


async def _reply_or_error(
    connection: redis.asyncio.connection.AbstractConnection, limit: float | None, address: str
) -> Any:
    """The next reply (an error reply returned), within ``limit`` seconds if given, else
    within redis-py's ``socket_timeout``."""
    try:
        if limit is None:
            return await connection.read_response()
        try:
            async with asyncio.timeout(None if limit == math.inf else limit):
                # redis-py's own timeout is lifted (math.inf means none) for ours.
                return await connection.read_response(timeout=math.inf)
        except TimeoutError:
            raise RedisTimeoutError(
                f"Redis at {address} did not answer a blocking"
                f" command within {limit:g} s (its own wait plus socket_timeout)"
            ) from None
    except ResponseError as exc:
        return exc


class _RedisPubSub(redis.asyncio.client.PubSub):
    """redis-py's pub/sub connection, with subscribing again after a reconnect left to
    :class:`AsyncioPubSub` (redis-py would send every channel in one SUBSCRIBE, which
    Redis refuses whole when one channel is forbidden)."""

    def __init__(self, client: redis.asyncio.Redis, on_connect: Any) -> None:
        super().__init__(client.connection_pool)
        self._restore = on_connect

    async def on_connect(self, connection: Any) -> None:
        await self._restore(connection)


class AsyncioPubSub(PubSubCommands):
    """:class:`~ailf.clients._pubsub.PubSub`'s asyncio twin, over ``redis.asyncio``'s
    connection handling.

    Same names, same message dicts, same promise that ``subscribe()`` returns once the
    server confirmed the subscription, and the same handling of a refused one (see
    :class:`~ailf.clients._pubsub.SubscriptionState`, which both keep). One task at a time
    reads the connection: the iterating task or one waiting for its confirmation,
    whichever needed a reply first; the others wait for it to read (messages it meets
    on the way are kept for the iterator). A lost
    connection is re-established with ``config.retry``'s backoff for as long as the
    block lives, and every channel and pattern is subscribed again.
    """

    def __init__(
        self, config: RedisConfig, client: redis.asyncio.Redis, *, reconnect: bool = True
    ) -> None:
        self._config = config
        self._reconnect_on_loss = reconnect
        self._pubsub = _RedisPubSub(client, self._restore)
        self._subscriptions = SubscriptionState(config.address)
        self._kept: deque[dict[str, Any]] = deque()
        self._progress = asyncio.Event()
        self._reading = False
        self._closed = False
        self._failures = 0
        self.reconnects = 0
        self._handler: Callable[[dict[str, Any]], None] | None = None

    async def __aenter__(self) -> AsyncioPubSub:
        """Connect now, as the trio session does: a wrong address fails here, and a task
        may start iterating before anything is subscribed."""
        await self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._pubsub.aclose()
        self._progress.set()  # a task waiting for another's read finds the session closed

    async def _send_and_confirm(self, command: str, names: tuple[Any, ...]) -> None:
        if not names:
            return
        await self._connect()  # reconnecting sends the pending commands again
        connection = self._pubsub.connection
        assert connection is not None  # connected just above
        # Recorded after connecting (which may restore) and before sending, with no
        # await between: the order of pending commands is the order on the wire.
        request = self._subscriptions.request(command, names)
        packed = connection.pack_command(command, *names)
        with contextlib.suppress(RedisConnectionError), _translated(self._config):
            # A broken connection is the reader's to mend: reconnecting sends every
            # pending command again, this one included.
            await connection.send_packed_command(packed, check_health=False)
        timeout = self._config.socket_timeout
        try:
            await asyncio.wait_for(self._answered(request), timeout)
        except TimeoutError:
            raise RedisTimeoutError(
                f"Redis at {self._config.address} did not confirm {command} within"
                f" {timeout} s (socket_timeout)"
            ) from None
        if request.error is not None:
            raise request.error

    async def _answered(self, request: Request) -> None:
        while not request.answered:
            if self._closed:  # by the end of the block, in another task
                raise self._subscriptions.closed_before_answer(request)
            await self._read_or_wait(None)

    async def _connect(self) -> None:
        """Connect if not connected (and _restore); an error reply while connecting (wrong
        credentials) raises as a failed handshake does on trio."""
        with _translated(self._config):
            try:
                await self._pubsub.connect()
            except ResponseError as error:
                raise_reply_error(error, self._config.address)

    async def _restore(self, connection: Any) -> None:
        """Connected again: subscribe again, and resend what awaits an answer."""
        commands = [(r.command, *r.names) for r in self._subscriptions.restart()]
        if commands:
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )

    def deliver_to(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Hand each message to ``handler`` as the task reading the connection reads it
        (the iterating one, which then yields nothing more), instead of keeping it."""
        self._handler = handler

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            message = await self.get_message(timeout=None)
            if message is not None:
                return message
            if self._closed:
                raise StopAsyncIteration

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:  # noqa: ASYNC109 - redis-py's signature
        """The next message, or None if none arrived within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._kept:
            if self._closed:  # as on trio: nothing more will come
                return None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            await self._read_or_wait(remaining)
        return self._kept.popleft()

    async def _read_or_wait(self, wait: float | None) -> None:
        """Read what arrives within ``wait`` s, or, while another task is reading (redis-py
        allows one reader per connection), wait as long for it to read something: it keeps
        messages and counts answers for everyone."""
        if not self._reading:
            await self._read_one(wait)
            return
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), wait)

    async def _read_one(self, wait: float | None) -> None:
        """Read what arrives within ``wait`` s: keep messages, count answers."""
        if self._closed:
            return
        self._reading = True
        try:
            connection = self._pubsub.connection
            if connection is not None and not connection.is_connected:
                # Reconnect (and _restore) here, not in parse_response, so that an error
                # reply while connecting (a changed password) ends the session as on
                # trio instead of passing for the answer to a subscription.
                await self._connect()
            with _translated(self._config):
                try:
                    reply = await self._pubsub.parse_response(
                        block=wait is None, timeout=math.inf if wait is None else wait
                    )
                except ResponseError as error:  # redis-py raises error replies
                    reply = error
            message = self._subscriptions.receive(reply)
        except AuthenticationError:
            raise  # wrong credentials are not retried, as on trio
        except RedisConnectionError as exc:
            if not self._reconnect_on_loss:  # the owner subscribes elsewhere (a cluster)
                self._closed = True
                raise
            if not self._closed:
                await self._reconnect(exc)
            return
        finally:
            self._reading = False
            self._progress.set()
        self._failures = 0
        if message is None:
            return
        if self._handler is not None:
            self._handler(message)
        else:
            self._kept.append(message)

    async def _reconnect(self, exc: RedisConnectionError) -> None:
        # Drop the dead socket: redis-py reconnects on the next read, and _restore
        # subscribes again to every channel and pattern.
        if self._pubsub.connection is not None:
            await self._pubsub.connection.disconnect()
        delay = self._config.retry.delay(min(self._failures, 30))
        self._failures += 1
        self.reconnects += 1
        log.warning("pub/sub %s; reconnecting in %.2f s", exc, delay)
        await asyncio.sleep(delay)

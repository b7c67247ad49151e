"""The synchronous client: :class:`RedisClient`, on redis-py.

One client owns one redis-py connection pool (``config.max_connections`` connections)
and is safe to share between threads. It connects lazily: constructing a client never
does I/O, so a client for a server that is not up yet can be built at import time.

Every redis-py exception crosses into ailf's tree at a single boundary,
:meth:`RedisClient.run` (through :func:`translate_error`), so ``except RedisError``
(ailf's, or redis-py's) catches everything a client method raises. Commands are not
retried: a command whose connection broke may or may not have run on the server, and
only the caller knows whether running it twice is safe. redis-py's own retries are
turned off so that an unreachable server fails within ``socket_connect_timeout``.
"""

from __future__ import annotations

import math
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Self, TypeVar

import redis
import redis.connection
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ailf.clients._commands import blocking_reply_timeout, command_name, is_blocking
from ailf.clients._connection import tls_failed, tls_unanswered
from ailf.codec import dumps, encode_payload, loads
from ailf.config import RedisConfig, given_or_from_env
from ailf.errors import (
    AilfError,
    AuthenticationError,
    ConfigError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
    WatchError,
)

__all__ = ["Pipeline", "RedisClient", "translate_error"]

T = TypeVar("T")
Expiry = float | timedelta


def _url_source(config: RedisConfig) -> str:
    """``AILF_REDIS_URL=<url>`` when the config came from that variable (as far as can be
    told: it holds this very URL), else ``the config's URL: <url>``: an error about an
    explicit config must not send its reader to an environment variable."""
    for name in ("AILF_REDIS_URL", "REDIS_URL"):  # RedisConfig.from_env's order
        if value := os.environ.get(name):
            try:
                if RedisConfig.from_url(value).url == config.url:
                    return f"{name}={config.url}"
            except ConfigError:
                pass
            break
    return f"the config's URL: {config.url}"


def translate_error(exc: redis.RedisError, config: RedisConfig) -> AilfError:
    """The ailf exception for a redis-py one, with a message that says what to check.

    ``config`` is the resolved config the client connected with; connection failures
    name its address and connect timeout. An exception that already is ailf's is
    returned as it is.
    """
    if isinstance(exc, AilfError):
        return exc
    if isinstance(exc, redis.WatchError):
        lost = exc.__context__
        if isinstance(lost, (redis.ConnectionError, redis.TimeoutError)):
            # redis-py reports a connection lost while watching as a WatchError; it is
            # a lost connection (an EXEC may even have run), as on the async client.
            return translate_error(lost, config)
        return WatchError(
            "a watched key changed before EXEC, so the transaction did not run;"
            " read the keys again and retry (client.transaction() does)"
        )
    where = f"Redis at {config.address}"
    if isinstance(exc, redis.AuthenticationError):
        return AuthenticationError(
            f"{where} refused the credentials: {exc}; check the username and password"
            f" ({_url_source(config)})"
        )
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return RedisConnectionError(
            f"all {config.max_connections} connections of the pool to {where} are in use;"
            " raise max_connections, or share fewer clients' worth of threads"
        )
    if isinstance(exc, redis.ConnectionError) or (
        isinstance(exc, redis.TimeoutError) and "connecting" in str(exc)
    ):
        return RedisConnectionError(
            f"cannot talk to {where}: {exc} (connect timeout {config.socket_connect_timeout:g} s)."
            f" Is redis-server running there? ({_url_source(config)})"
        )
    if isinstance(exc, redis.TimeoutError):
        return RedisTimeoutError(
            f"{where} did not answer in time ({exc}; socket_timeout={config.socket_timeout} s)"
        )
    if isinstance(exc, redis.ResponseError):
        # redis-py prefixes a pipeline's error, and strips the first word of the replies
        # it classifies (ERR, NOPERM, NOSCRIPT…) into ``status_code``: the server's whole
        # reply goes first again, so that ``.code`` is its first word, as on the async
        # client.
        where_in_pipeline, marker, reply = str(exc).partition(" of pipeline caused error: ")
        if not marker:
            reply = str(exc)
        code = getattr(exc, "status_code", None)
        if code:
            reply = f"{code} {reply}"
        return ResponseError(f"{reply} (in pipeline: {where_in_pipeline})" if marker else reply)
    if isinstance(exc, redis.DataError):
        # Raised before anything is sent: the value, not the server, is at fault.
        return RedisError(
            f"{exc} (a value for Redis must be str, bytes, int or float;"
            " use set_json, or encode with ailf.codec.dumps first)"
        )
    return RedisError(f"{where}: {exc}")


def _json_or_none(value: str | bytes | None) -> Any:
    return None if value is None else loads(value)


def _expiry_ms(expire: Expiry | None) -> int | None:
    if expire is None:
        return None
    seconds = expire.total_seconds() if isinstance(expire, timedelta) else expire
    bad_type = isinstance(seconds, bool) or not isinstance(seconds, (int, float))
    if bad_type or not 0 < seconds < math.inf:  # NaN fails the comparison too
        raise ValueError(f"expire: expected seconds > 0 or a timedelta, got {expire!r}")
    return max(1, round(seconds * 1000))


class _TCPConnected(redis.Connection):
    """redis-py's TCP connection, noting when the TCP part of connecting is done."""

    def _connect(self) -> socket.socket:
        sock = super()._connect()
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
            return super()._connect()
        except (TimeoutError, ssl.SSLError) as exc:
            if not self._tcp_connected:
                raise
            address = f"{self.host}:{self.port}"
            if isinstance(exc, ssl.SSLError):
                raise tls_failed(address, exc) from exc
            raise tls_unanswered(address, self.socket_connect_timeout) from exc


def _bounded_handshake(connection: redis.connection.AbstractConnection) -> None:
    """redis-py's connection handshake, held to ``socket_connect_timeout``.

    redis-py reads the handshake replies (HELLO, AUTH, CLIENT SETINFO...) with
    ``socket_timeout``, which is None by default: a port that accepts connections but
    never answers (not a Redis server, or a stopped one) would hang the first command
    forever. Connecting means handshaking too, so the connect timeout bounds both.
    """
    sock = connection._sock
    sock.settimeout(connection.socket_connect_timeout)
    try:
        connection.on_connect()
    except redis.TimeoutError as exc:
        raise redis.ConnectionError(
            f"no handshake reply within the connect timeout ({exc}); is it a Redis server?"
        ) from exc
    sock.settimeout(connection.socket_timeout)


class _KeyValueCommands:
    """The convenience commands, written once for the client and for its pipelines.

    ``_command(name, *args, decode=..., **kwargs)`` calls redis-py's method ``name``;
    the client runs it now, a pipeline queues it and decodes its reply after EXEC.
    """

    def _command(
        self, name: str, *args: Any, decode: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> Any:
        raise NotImplementedError

    def get(self, key: str) -> Any:
        """The string at ``key``, or None when there is none."""
        return self._command("get", key)

    def set(self, key: str, value: Any, expire: Expiry | None = None) -> Any:
        """Store ``value`` (str, bytes or number) at ``key``, expiring after ``expire`` seconds."""
        return self._command("set", key, value, px=_expiry_ms(expire))

    def delete(self, *keys: str) -> Any:
        """Delete keys; the number that existed."""
        return self._command("delete", *keys)

    def exists(self, *keys: str) -> Any:
        """How many of ``keys`` exist (a key named twice counts twice)."""
        return self._command("exists", *keys)

    def set_json(self, key: str, value: Any, expire: Expiry | None = None) -> Any:
        """Store ``value`` as JSON: nested dicts, lists, numbers and booleans survive."""
        return self._command("set", key, dumps(value), px=_expiry_ms(expire))

    def get_json(self, key: str) -> Any:
        """The JSON value at ``key``, or None; :class:`~ailf.errors.DecodeError` if not JSON."""
        return self._command("get", key, decode=_json_or_none)

    def publish(self, channel: str, message: Any) -> Any:
        """Publish to ``channel`` (dicts and lists as JSON); how many subscribers got it."""
        return self._command("publish", channel, encode_payload(message))


class RedisClient(_KeyValueCommands):
    """A thread-safe Redis client with one connection pool.

    ``config`` defaults to :meth:`RedisConfig.from_env` (``AILF_REDIS_URL``, then
    ``REDIS_URL``, then localhost:6379). ``embedded://`` is resolved on first use,
    which is also when the first connection is made. Use it as a context manager, or
    call :meth:`close`, to drop the pool's connections.
    """

    def __init__(self, config: RedisConfig | None = None) -> None:
        self.config = given_or_from_env(config, type(self).__name__)
        self._lock = threading.Lock()
        # (converting client, raw client) sharing one pool; one attribute, so that a
        # reader without the lock sees both or neither.
        self._clients: tuple[redis.Redis, redis.Redis] | None = None
        self._resolved: RedisConfig | None = None

    # -- the pool and the error boundary ----------------------------------------------

    def _connect(self) -> tuple[redis.Redis, redis.Redis]:
        clients = self._clients
        if clients is not None:
            return clients
        with self._lock:
            if self._clients is None:
                resolved = self.config.resolve()
                kwargs = resolved.redis_py_kwargs()
                if resolved.unix_socket_path:
                    kwargs["connection_class"] = redis.UnixDomainSocketConnection
                    kwargs.pop("socket_keepalive")
                elif resolved.ssl:
                    kwargs["connection_class"] = _TLSConnection
                pool = redis.ConnectionPool(
                    retry=Retry(NoBackoff(), 0), redis_connect_func=_bounded_handshake, **kwargs
                )
                raw = redis.Redis(connection_pool=pool)
                raw.response_callbacks.clear()
                self._resolved = resolved
                self._clients = (redis.Redis(connection_pool=pool), raw)
            return self._clients

    @property
    def client(self) -> redis.Redis:
        """The underlying redis-py client (its exceptions are redis-py's, untranslated)."""
        return self._connect()[0]

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``function(*args, **kwargs)`` with redis-py errors translated to ailf's.

        This is the client's one error boundary; use it for any redis-py call of your
        own: ``client.run(client.client.hset, "user:1", "name", "Ada")``.
        """
        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            if isinstance(exc, AilfError):
                raise
            raise translate_error(exc, self._resolved or self.config) from exc

    def execute_command(self, *args: Any) -> Any:
        """Send any command; the server's reply as parsed, unconverted.

        ``client.execute_command("XLEN", "tasks")``. Replies are RESP2 values (strings,
        ints, lists, None), as from the async client's method of the same name, which is
        what lets :mod:`ailf.messaging` parse both clients' replies with one set of
        functions. (redis-py's own ``execute_command`` would convert some replies.)
        Commands that would change the state of a pooled connection, which the next
        caller would then inherit (WATCH, SUBSCRIBE, SELECT…), are refused with a
        :class:`ValueError` saying what to use instead, as on the async client.
        """
        raw = self._connect()[1]
        if is_blocking(command_name(args), args):
            return self.run(self._execute_blocking, raw.connection_pool, args)
        return self.run(raw.execute_command, *args)

    def _execute_blocking(self, pool: redis.ConnectionPool, args: tuple[Any, ...]) -> Any:
        """A blocking command, its reply held to its own wait plus ``socket_timeout``.

        redis-py would read the reply of ``XREADGROUP … BLOCK 10000`` with the socket's
        ``socket_timeout`` and fail it under a 5 s one; the connection's socket gets the
        longer bound (:func:`~ailf.clients._commands.blocking_reply_timeout`) for this
        command and its own back afterwards, as the async engines do.
        """
        config = self._resolved or self.config
        limit = blocking_reply_timeout([args], config.socket_timeout)
        connection = pool.get_connection()
        try:
            connection.send_command(*args)
            sock = connection._sock
            sock.settimeout(None if limit == math.inf else limit)
            try:
                return connection.read_response()
            finally:
                if connection._sock is sock:  # not disconnected by a failed read
                    sock.settimeout(config.socket_timeout)
        except redis.ResponseError:
            raise  # an error reply: the connection is in step, and reusable
        except BaseException:
            connection.disconnect()  # its place in the reply stream is unknown
            raise
        finally:
            pool.release(connection)

    def _command(
        self, name: str, *args: Any, decode: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> Any:
        return self._call(getattr(self.client, name), decode, *args, **kwargs)

    def _call(
        self,
        function: Callable[..., Any],
        decode: Callable[[Any], Any] | None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Run a redis-py method now (translating errors); its reply, decoded if asked."""
        reply = self.run(function, *args, **kwargs)
        return decode(reply) if decode else reply

    # -- the rest of the public surface ------------------------------------------------

    @contextmanager
    def pipeline(self, *, transaction: bool = True) -> Iterator[Pipeline]:
        """Queue commands and send them in one round trip when the block ends.

        ::

            with client.pipeline() as pipe:
                pipe.set("a", "1")
                pipe.get_json("config")
            pipe.results  # [True, {...}]

        With ``transaction=True`` (the default) they run as one MULTI/EXEC. If the
        block raises, nothing is sent. Calling ``pipe.execute()`` inside the block
        sends what is queued so far. ``pipe.watch(*keys)`` starts a check-and-set
        transaction, as in redis-py (see :meth:`Pipeline.watch`); the block's end
        UNWATCHes and gives the connection back.
        """
        pipe = Pipeline(self, self.client.pipeline(transaction=transaction))
        try:
            yield pipe
            if pipe.queued:
                pipe.execute()
        finally:
            pipe.reset()

    def transaction(
        self,
        func: Callable[[Pipeline], Any],
        *watches: str,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """Run ``func(pipe)`` as a check-and-set transaction until no watched key changed.

        Each attempt WATCHes ``watches``, calls ``func`` (it reads through ``pipe`` at
        once, then calls ``pipe.multi()`` and queues its writes) and executes; on
        :class:`~ailf.errors.WatchError` it sleeps ``watch_delay`` seconds, if given,
        and tries again, as redis-py's does. Returns the transaction's replies, or what
        ``func`` returned if ``value_from_callable``.
        """
        with self.pipeline() as pipe:
            while True:
                try:
                    if watches:
                        pipe.watch(*watches)
                    value = func(pipe)
                    results = pipe.execute()
                    return value if value_from_callable else results
                except WatchError:
                    if watch_delay is not None and watch_delay > 0:
                        time.sleep(watch_delay)

    def health_check(self) -> bool:
        """True when the server answers PING, False when it cannot be reached in time.

        The probe uses a fresh connection of its own, outside the pool (so a busy pool
        cannot fail it), and gives connecting and the reply ``socket_connect_timeout``
        each, so a hung server reads as down instead of hanging the probe. A server
        that answers but refuses the credentials is a misconfiguration, not an outage:
        that raises :class:`~ailf.errors.AuthenticationError`.
        """
        pool = self.client.connection_pool
        timeout = (self._resolved or self.config).socket_connect_timeout
        probe = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": timeout})
        try:
            self.run(probe.connect)
            self.run(probe.send_command, "PING")
            return self.run(probe.read_response) in ("PONG", b"PONG")
        except AuthenticationError:
            raise
        except (RedisConnectionError, RedisTimeoutError):
            return False
        finally:
            probe.disconnect()

    def close(self) -> None:
        """Close every pooled connection. Idempotent; a later command opens a new pool."""
        with self._lock:
            pool = self._clients[0].connection_pool if self._clients is not None else None
            self._clients = None
        if pool is not None:
            pool.disconnect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisClient {self.config.url}>"


class Pipeline(_KeyValueCommands):
    """Commands queued by :meth:`RedisClient.pipeline`; replies land in :attr:`results`.

    Besides the client's convenience methods, ``pipe.command(name, *args)`` queues
    any redis-py pipeline method: ``pipe.command("hset", "user:1", "name", "Ada")``.

    Check-and-set, with the async pipeline's names (and redis-py's)::

        with client.pipeline() as pipe:
            pipe.watch("balance")
            balance = int(pipe.get("balance"))   # runs at once: the pipe is watching
            pipe.multi()
            pipe.set("balance", balance + 10)    # queued again
            pipe.execute()                       # WatchError if it changed
    """

    def __init__(self, client: RedisClient, pipe: redis.client.Pipeline) -> None:
        self._client = client
        self._pipe = pipe
        self._decoders: list[Callable[[Any], Any] | None] = []
        self.results: list[Any] = []

    @property
    def queued(self) -> int:
        """How many commands wait for :meth:`execute`."""
        return len(self._decoders)

    def _command(
        self, name: str, *args: Any, decode: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> Any:
        """Queue the command and return the pipeline, or, while watching, run it now."""
        if self._pipe.watching and not self._pipe.explicit_transaction:
            return self._client._call(getattr(self._pipe, name), decode, *args, **kwargs)
        getattr(self._pipe, name)(*args, **kwargs)
        self._decoders.append(decode)
        return self

    def command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Queue redis-py's pipeline method ``name``; its reply is left as redis-py gives it."""
        return self._command(name, *args, **kwargs)

    def watch(self, *names: str) -> bool:
        """WATCH keys on a connection of the pipeline's own; commands then run at once.

        Until :meth:`multi`, command methods return their replies; EXEC then fails
        with :class:`~ailf.errors.WatchError` if a watched key changed meanwhile.
        """
        return self._client.run(self._pipe.watch, *names)

    def unwatch(self) -> bool:
        """UNWATCH every key."""
        return self._client.run(self._pipe.unwatch)

    def multi(self) -> None:
        """End immediate execution after :meth:`watch`: commands queue for MULTI/EXEC again."""
        self._client.run(self._pipe.multi)

    def execute(self) -> list[Any]:
        """Send everything queued; the replies, in order (also appended to :attr:`results`)."""
        decoders, self._decoders = self._decoders, []
        try:
            replies = self._client.run(self._pipe.execute)
        finally:
            self._pipe.reset()
        decoded = [d(r) if d else r for d, r in zip(decoders, replies, strict=True)]
        self.results.extend(decoded)
        return decoded

    def reset(self) -> None:
        """Drop everything queued without sending it; UNWATCH and give the connection back."""
        self._decoders.clear()
        self._client.run(self._pipe.reset)

"""The synchronous client: :class:`RedisClient`, the async client's command surface, blocking.

Every command method comes from :class:`~ailf.clients._commands.Commands`, which the
async client runs too: the same names, arguments, argument checks and reply shapes, so
code moves between the two faces by adding or removing ``await``. The commands run on
:class:`~ailf.clients._sync_backend.RedisPyBackend`, redis-py's thread-safe connection
pool (``config.max_connections`` connections): one client may be shared by any number
of threads. It connects lazily: constructing a client never does I/O, so a client for a
server that is not up yet can be built at import time; ``embedded://`` starts the shared
throwaway server when the client first connects.

Every failure is one of ailf's errors (see :mod:`ailf.clients._errors`), so ``except
RedisError`` (ailf's, or redis-py's) catches everything a client method raises.
Commands are not retried: a command whose connection broke may or may not have run on
the server, and only the caller knows whether running it twice is safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

import redis
import redis.cluster

from ailf.clients._backend import SyncBackend, SyncReserved
from ailf.clients._cluster_sync import SyncClusterBackend
from ailf.clients._commands import Commands, Convert
from ailf.clients._errors import REDIS_PY_ERRORS, raise_from_redis_py, raise_reply_error
from ailf.clients._pipeline import Pipeline
from ailf.clients._sync_backend import RedisPyBackend
from ailf.config import RedisConfig, given_or_from_env
from ailf.errors import (
    AuthenticationError,
    RedisConnectionError,
    RedisTimeoutError,
    WatchError,
)
from ailf.server import resolve_embedded

__all__ = ["RedisClient"]

T = TypeVar("T")


class RedisClient(Commands):
    """A thread-safe Redis client with one connection pool.

    ``config`` defaults to :meth:`RedisConfig.from_env` (``AILF_REDIS_URL``, then
    ``REDIS_URL``, then localhost:6379). The pool is made, and ``embedded://`` resolved,
    by the first command. Use it as a context manager, or call :meth:`close`, to drop
    the pool's connections; a later command opens a new pool.
    """

    def __init__(self, config: RedisConfig | None = None) -> None:
        self.config = given_or_from_env(config, type(self).__name__)
        self._lock = threading.Lock()
        self._backend: RedisPyBackend | SyncClusterBackend | None = None

    def __repr__(self) -> str:
        return f"<RedisClient {self.config.url}>"

    @property
    def address(self) -> str:
        """Where the client connects (``host:port`` or the socket path): what its errors
        name. For an embedded config, the shared server's, once connected."""
        backend = self._backend
        return (backend.config if backend is not None else self.config).address

    # -- the engine -------------------------------------------------------------------

    def _connect(self) -> RedisPyBackend | SyncClusterBackend:
        with self._lock:
            if self._backend is None:
                if self.config.cluster:
                    self._backend = SyncClusterBackend(self.config)
                else:
                    self._backend = RedisPyBackend(resolve_embedded(self.config))
            return self._backend

    def _engine(self) -> SyncBackend:
        return self._backend or self._connect()

    def _command(
        self, args: tuple[Any, ...] | None, convert: Convert = None, blocking: bool = False
    ) -> Any:
        if args is None:
            return convert(None) if convert is not None else None
        backend = self._backend or self._connect()
        reply = backend.execute(args, blocking)
        if isinstance(reply, Exception):
            raise_reply_error(reply, backend.config.address)
        return reply if convert is None else convert(reply)

    def _execute_many(self, commands: Sequence[tuple[Any, ...]], blocking: bool) -> list[Any]:
        return self._engine().execute_many(commands, blocking)

    def _reserve(self) -> SyncReserved:
        """A pool connection of a pipeline's own, for its WATCH … EXEC."""
        return self._engine().reserve()

    # -- redis-py, for what the surface lacks ---------------------------------------------

    @property
    def client(self) -> redis.Redis | redis.cluster.RedisCluster:
        """The redis-py client on this client's pool, for what the command methods lack.

        Its replies and exceptions are redis-py's: call it through :meth:`run` to have
        its errors translated. (``execute_command`` covers any command with raw replies.)
        """
        return (self._backend or self._connect()).redis

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``function(*args, **kwargs)`` with redis-py errors translated to ailf's:
        ``client.run(client.client.zadd, "scores", {"ada": 1})``."""
        try:
            return function(*args, **kwargs)
        except REDIS_PY_ERRORS as exc:
            backend = self._backend
            raise_from_redis_py(exc, backend.config if backend is not None else self.config)

    # -- pipelines and transactions -----------------------------------------------------

    def pipeline(self, transaction: bool = True) -> Pipeline:
        """A :class:`~ailf.clients._pipeline.Pipeline` on this client (MULTI/EXEC if asked).

        ``with client.pipeline() as pipe:`` queues commands and sends them in one round
        trip when the block ends normally (nothing, if it raises); their replies land in
        ``pipe.results``. ``pipe.execute()`` sends what is queued so far.
        """
        return Pipeline(self, transaction)

    def transaction(
        self,
        func: Callable[[Pipeline], Any],
        *watches: Any,
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

    # -- the client itself --------------------------------------------------------------

    def health_check(self) -> bool:
        """True when the server answers PING, False when it cannot be reached in time.

        The probe uses a fresh connection of its own, outside the pool (so a busy pool
        cannot fail it), not retried, and gives connecting and the reply
        ``socket_connect_timeout`` each, so a hung server reads as down instead of
        hanging the probe. A server that answers but refuses the credentials is a
        misconfiguration, not an outage: that raises
        :class:`~ailf.errors.AuthenticationError`.
        """
        try:
            self._engine().probe()
        except AuthenticationError:
            raise
        except (RedisConnectionError, RedisTimeoutError):
            return False
        return True

    def close(self) -> None:
        """Close every pooled connection. Idempotent; a later command opens a new pool."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

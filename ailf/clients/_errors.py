"""The error boundary: every failure below the clients becomes one of ailf's errors here.

Failures reach a client by three roads, and each engine meets them at its own edge:

- **error replies** from the server, which every engine *returns* as
  :class:`~ailf.errors.ResponseError` instances (so that one bad command in a pipeline
  does not hide the replies after it); :func:`raise_reply_error` raises one, turning
  ``NOAUTH``/``WRONGPASS`` into :class:`~ailf.errors.AuthenticationError`;
- **redis-py's exceptions**, met by the engines that run on redis-py (the sync one and
  the asyncio one): :func:`from_redis_py` translates them, and the socket errors and
  bad UTF-8 that redis-py lets through;
- **socket failures** on the trio engine's own connections, which build their errors
  with :func:`connection_lost`, :func:`cannot_connect` and the other builders below.

Every message is written here, once, so that the same failure reads the same whichever
face or engine met it, names the server's address, and says what to check next (as
httpx's transports translate their backends' errors at one boundary).
"""

from __future__ import annotations

import os
import ssl
from typing import Any, NoReturn

import redis.exceptions
import trio

from ailf.config import RedisConfig
from ailf.errors import (
    AilfError,
    AuthenticationError,
    ConfigError,
    DataError,
    DecodeError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
    TLSHandshakeTimeout,
    WatchError,
)

__all__ = [
    "REDIS_PY_ERRORS",
    "NotConnected",
    "bad_argument",
    "cannot_connect",
    "connect_timed_out",
    "connection_lost",
    "credentials_refused",
    "from_redis_py",
    "in_pipeline",
    "not_connected",
    "not_resp",
    "not_utf8",
    "password_required",
    "raise_from_redis_py",
    "raise_reply_error",
    "reply_error",
    "reservation_lost",
    "tls_failed",
    "tls_unanswered",
    "watched_key_changed",
]

#: What :func:`from_redis_py` translates: redis-py's exceptions, and what redis-py lets
#: through from below it (socket errors, a reply that is not UTF-8, asyncio's
#: ``IncompleteReadError``, an ``EOFError``).
REDIS_PY_ERRORS = (redis.exceptions.RedisError, UnicodeDecodeError, OSError, EOFError)


# -- error replies ---------------------------------------------------------------------


class NotConnected(RedisConnectionError):
    """Connecting failed: nothing of the command was sent, so sending it again is safe.

    Raised by every engine instead of a plain :class:`~ailf.errors.RedisConnectionError`
    when the failure came before the first byte was written (the server refused or did
    not answer the connection). A cluster client then waits for another node to serve
    the slot; code that catches RedisConnectionError sees no difference.
    """


def not_connected(exc: RedisConnectionError) -> RedisConnectionError:
    """``exc`` as a :class:`NotConnected`, when it is a plain connection failure (wrong
    credentials and a TLS handshake nobody answers stay what they are: sending again
    cannot help them)."""
    if type(exc) is RedisConnectionError:
        replaced = NotConnected(str(exc))
        replaced.__cause__ = exc.__cause__
        return replaced
    return exc


def raise_reply_error(reply: Exception, address: str) -> NoReturn:
    """Raise a reply that is an error (a ResponseError, or a DecodeError for bad UTF-8).

    NOAUTH and WRONGPASS become :class:`AuthenticationError`, which says what to set.
    """
    if isinstance(reply, ResponseError) and reply.code == "NOAUTH":
        raise password_required(address)
    if isinstance(reply, ResponseError) and reply.code == "WRONGPASS":
        raise credentials_refused(address, reply)
    if isinstance(reply, ResponseError) and reply.code in ("MOVED", "ASK", "CLUSTERDOWN"):
        raise ResponseError(
            f"{reply} (Redis at {address} is a cluster node: set RedisConfig.cluster=True,"
            " or ?cluster=true in the URL)"
        )
    raise reply


def password_required(address: str) -> AuthenticationError:
    return AuthenticationError(
        f"Redis at {address} requires a password: set RedisConfig.password"
        " (and RedisConfig.username for an ACL user), or put user:password@ in the URL"
    )


def credentials_refused(
    address: str, detail: object, *, user: str | None = None, source: str | None = None
) -> AuthenticationError:
    """The server refused the credentials (``detail``: its reply, or redis-py's error);
    ``user`` names the ACL user when known, ``source`` where the URL came from."""
    who = f"to authenticate user {user!r}" if user is not None else "the credentials"
    where = f" ({source})" if source else " (or the URL's user:password@)"
    return AuthenticationError(
        f"Redis at {address} refused {who}: {detail}; check RedisConfig.username and"
        f" RedisConfig.password{where}"
    )


def watched_key_changed() -> WatchError:
    """EXEC answered nil: a key watched by the pipeline changed, nothing ran."""
    return WatchError(
        "a watched key changed before EXEC, so the transaction did not run;"
        " read the keys again and retry (client.transaction() does)"
    )


def in_pipeline(error: Exception, index: int, args: tuple[Any, ...]) -> Exception:
    """An error reply raised by a pipeline's ``execute()``, saying which command got it:
    ``WRONGTYPE ... (in pipeline: Command # 2 (LPUSH text))``. ``.code`` stays the
    reply's first word. Only the command's name and key are shown: the values may be
    large, or secret."""
    if not isinstance(error, ResponseError):
        return error
    shown = " ".join(_shown(arg) for arg in args[:2])
    return ResponseError(f"{error} (in pipeline: Command # {index + 1} ({shown}))")


def _shown(arg: Any) -> str:
    if isinstance(arg, bytes):
        arg = arg.decode(errors="replace")
    return str(arg)


def bad_argument(detail: str) -> DataError:
    """A value that cannot be a command's argument: say what to send instead."""
    return DataError(f"{detail}; use set_json, or encode with ailf.codec.dumps first")


def reservation_lost(address: str) -> RedisConnectionError:
    """What a pipeline's command gets once its reserved connection is gone."""
    return RedisConnectionError(
        f"the connection to Redis at {address} reserved by this pipeline was lost or"
        " given back (and any WATCH with it); reset() it and watch again"
    )


# -- the trio engine's connections -------------------------------------------------------


def tls_unanswered(address: str, timeout: float) -> TLSHandshakeTimeout:
    """The error for a TLS handshake that got no answer within ``timeout`` seconds."""
    return TLSHandshakeTimeout(
        f"Redis at {address} accepted the connection but did not answer the TLS handshake"
        f" within {timeout:g} s (socket_connect_timeout): is it a TLS port? rediss:// URLs"
        " and ssl=True need the port of the server's tls-port setting; a plain port"
        " wants redis://"
    )


def tls_failed(address: str, error: ssl.SSLError) -> RedisConnectionError:
    """The error for a TLS handshake the server answered, and that failed."""
    return RedisConnectionError(
        f"TLS handshake with Redis at {address} failed: {error}; check ssl_ca_certs,"
        " ssl_certfile/ssl_keyfile and that the server speaks TLS on that port"
    )


def cannot_connect(address: str, exc: BaseException) -> RedisConnectionError:
    return RedisConnectionError(f"cannot connect to Redis at {address}: {_describe(exc)}")


def connect_timed_out(address: str, timeout: float) -> RedisConnectionError:
    return RedisConnectionError(
        f"timed out after {timeout} s connecting to Redis at {address}"
        " (is the server up? raise socket_connect_timeout if it is just slow)"
    )


def connection_lost(address: str, exc: BaseException | None = None) -> RedisConnectionError:
    """The error every caller sees when the socket to ``address`` breaks."""
    if exc is None:
        return RedisConnectionError(f"Redis at {address} closed the connection")
    return RedisConnectionError(f"connection to Redis at {address} lost: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def not_utf8(address: str, exc: UnicodeDecodeError) -> DecodeError:
    """What a reply that is not UTF-8 under ``decode_responses`` becomes."""
    return DecodeError(
        f"a reply from Redis at {address} is not valid UTF-8 ({exc});"
        " use decode_responses=False for binary values"
    )


def not_resp(address: str, exc: Exception) -> RedisConnectionError:
    """What garbage on the wire becomes; the connection is done for."""
    return RedisConnectionError(
        f"Redis at {address} sent bytes that are not RESP ({exc}); the connection was closed"
    )


# -- redis-py ----------------------------------------------------------------------------


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


def raise_from_redis_py(exc: BaseException, config: RedisConfig) -> NoReturn:
    """Raise :func:`from_redis_py`'s translation of ``exc``, chained to it (call it in the
    ``except`` clause that caught ``exc``)."""
    translated = from_redis_py(exc, config)
    if translated is exc:
        raise exc
    if translated is exc.__cause__:  # ailf's own, wrapped by redis-py
        raise translated from None
    raise translated from exc


def from_redis_py(exc: BaseException, config: RedisConfig) -> AilfError:
    """The ailf exception for one raised by redis-py (or let through by it, see
    :data:`REDIS_PY_ERRORS`), with a message that says what to check.

    ``config`` is the config the engine connected with: connection failures name its
    address, connect timeout and URL. An exception that already is ailf's is returned
    as it is, and so is one that redis-py wrapped around ailf's (a TLS failure raised
    while connecting).
    """
    if isinstance(exc, AilfError):
        return exc
    if isinstance(exc.__cause__, AilfError):
        return exc.__cause__
    where = f"Redis at {config.address}"
    if isinstance(exc, redis.exceptions.WatchError):
        lost = exc.__context__
        if isinstance(lost, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            # redis-py reports a connection lost while watching as a WatchError; it is
            # a lost connection (an EXEC may even have run), as on the async engines.
            return from_redis_py(lost, config)
        return watched_key_changed()
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return credentials_refused(config.address, exc, source=_url_source(config))
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return RedisConnectionError(
            f"all {config.max_connections} connections of the pool to {where} are in use;"
            " raise max_connections, or share fewer clients' worth of threads"
        )
    if isinstance(exc, (redis.exceptions.ConnectionError, OSError, EOFError)) or (
        isinstance(exc, redis.exceptions.TimeoutError) and "connecting" in str(exc)
    ):
        # redis-py says "Error 111 connecting to …" or "Timeout connecting to server"
        # when connecting failed: then nothing was sent.
        kind = NotConnected if "connecting" in str(exc) else RedisConnectionError
        return kind(
            f"cannot talk to {where}: {exc} (connect timeout {config.socket_connect_timeout:g} s)."
            f" Is redis-server running there? ({_url_source(config)})"
        )
    if isinstance(exc, redis.exceptions.TimeoutError):
        return RedisTimeoutError(
            f"{where} did not answer in time ({exc}; socket_timeout={config.socket_timeout} s)"
        )
    if isinstance(exc, redis.exceptions.ResponseError):
        return reply_error(exc)
    if isinstance(exc, redis.exceptions.DataError):
        # Raised before anything is sent: the value, not the server, is at fault.
        return bad_argument(str(exc))
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(config.address, exc)
    return RedisError(f"{where}: {exc}")


def reply_error(exc: redis.exceptions.ResponseError) -> ResponseError:
    """An error reply as redis-py raised it, as ailf's: the server's whole reply.

    redis-py strips the first word of the replies it classifies (ERR, NOPERM,
    NOSCRIPT…) into ``status_code``, and prefixes a pipeline's error: the word goes first
    again, so that ``.code`` is the reply's first word, as on every engine.
    """
    where_in_pipeline, marker, reply = str(exc).partition(" of pipeline caused error: ")
    if not marker:
        reply = str(exc)
    code = getattr(exc, "status_code", None)
    if code and not reply.startswith(f"{code} "):
        reply = f"{code} {reply}"
    return ResponseError(f"{reply} (in pipeline: {where_in_pipeline})" if marker else reply)

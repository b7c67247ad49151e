"""What kind of command a command is: blocking, idempotent, or harmful on a shared connection.

The engines decide by these where a command runs and how long its reply may take (a
blocking command gets a connection of its own, and its own wait plus
``socket_timeout``), the async client which commands ``retry_idempotent`` may send
again, and every face which raw commands ``execute_command`` refuses. They look at a
command's arguments only, so the engines depend on this module, not on the command
surface above them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BLOCKING_COMMANDS",
    "CONNECTION_STATE_COMMANDS",
    "IDEMPOTENT_COMMANDS",
    "blocking_reply_timeout",
    "command_name",
    "is_blocking",
    "is_idempotent",
]

#: Commands that may wait on the server: they run on a dedicated connection.
BLOCKING_COMMANDS = frozenset(
    {"BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "BLMPOP", "BZMPOP", "WAIT"}
)

#: Commands that change a connection's state (for every caller sharing it, or handed it
#: next from a pool), and what to use instead; see :func:`command_name`.
CONNECTION_STATE_COMMANDS = {
    **dict.fromkeys(
        ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"),
        "use a pub/sub session: `async with client.pubsub() as ps:` on AsyncRedisClient,"
        " or RedisPubSub/AsyncRedisPubSub from ailf.messaging",
    ),
    **dict.fromkeys(
        ("MULTI", "EXEC", "DISCARD"),
        "use client.pipeline(transaction=True), which sends MULTI/EXEC in one write",
    ),
    **dict.fromkeys(
        ("WATCH", "UNWATCH"),
        "use client.pipeline().watch(key), then multi() and execute(), or"
        " client.transaction(func, key): they hold one connection from WATCH to EXEC",
    ),
    "SELECT": "set RedisConfig.db (or /db in the URL) and open another client",
    "AUTH": "set RedisConfig.username and RedisConfig.password",
    "HELLO": "the client speaks RESP2 and negotiates the connection itself",
    "RESET": "open another client",
    "QUIT": "close the client (the end of its `async with` block, aclose(), or close())",
    "MONITOR": "use redis-cli MONITOR",
}


def command_name(args: tuple[Any, ...]) -> str:
    """The upper-cased name of a raw command, refusing what would break a shared
    connection: a :class:`ValueError` saying what to use instead."""
    if not args:
        raise ValueError("execute_command needs a command name")
    name = _text(args[0]).upper() if isinstance(args[0], (str, bytes)) else str(args[0])
    advice = CONNECTION_STATE_COMMANDS.get(name)
    if advice is None and name == "CLIENT" and len(args) > 1:
        sub = _text(args[1]).upper() if isinstance(args[1], (str, bytes)) else ""
        if sub == "REPLY":
            name, advice = (
                "CLIENT REPLY",
                (
                    "every command's reply is how the client tells its callers apart; to send"
                    " many commands at once, use client.pipeline(transaction=False)"
                ),
            )
    if advice is not None:
        raise ValueError(f"{name} is not allowed on a shared client: {advice}")
    return name


#: Commands whose effect is the same if sent twice: the only ones ``retry_idempotent``
#: retries (see :func:`is_idempotent`). A retried DEL, XACK, SREM… may report a smaller
#: count than the first attempt would have, since that attempt may have done the work.
IDEMPOTENT_COMMANDS = frozenset(
    {
        "PING", "ECHO", "GET", "MGET", "EXISTS", "TTL", "PTTL", "TYPE", "STRLEN", "KEYS",
        "SCAN", "DBSIZE", "HGET", "HMGET", "HGETALL", "HKEYS", "HVALS", "HLEN", "HEXISTS",
        "LRANGE", "LLEN", "SMEMBERS", "SISMEMBER", "SCARD", "XRANGE", "XREVRANGE", "XLEN",
        "XINFO", "XPENDING", "SET", "MSET", "DEL", "UNLINK", "HSET", "HDEL", "EXPIRE",
        "PEXPIRE", "SADD", "SREM", "XACK", "XDEL",
    }
)  # fmt: skip

_CONDITIONAL_SET = frozenset({"NX", "XX", "GET"})


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def is_blocking(name: str, args: Sequence[Any]) -> bool:
    """Whether command ``name`` (upper case) with ``args`` may wait on the server:
    the :data:`BLOCKING_COMMANDS`, and XREAD/XREADGROUP with BLOCK."""
    if name in BLOCKING_COMMANDS:
        return True
    return name in ("XREAD", "XREADGROUP") and any(
        isinstance(a, (str, bytes)) and _text(a).upper() == "BLOCK" for a in args
    )


def _own_wait(args: Sequence[Any]) -> float:
    """How long a blocking command may wait on the server by its own arguments, in
    seconds: ``inf`` when it waits for ever (a timeout of 0), or when its arguments do
    not say (the safe side: a reply timeout must never cut a legitimate wait short)."""
    name = _text(args[0]).upper() if isinstance(args[0], (str, bytes)) else ""
    try:
        if name in ("XREAD", "XREADGROUP"):
            words = [_text(a).upper() if isinstance(a, (str, bytes)) else a for a in args]
            if "BLOCK" not in words:
                return 0.0
            value, scale = args[words.index("BLOCK") + 1], 1000
        elif name == "WAIT":
            value, scale = args[2], 1000
        elif name in ("BLMPOP", "BZMPOP"):
            value, scale = args[1], 1
        elif name in BLOCKING_COMMANDS:
            value, scale = args[-1], 1
        else:
            return 0.0
        seconds = float(_text(value)) / scale
    except (IndexError, ValueError, TypeError):
        return math.inf
    return seconds if seconds > 0 else math.inf


def blocking_reply_timeout(
    commands: Sequence[Sequence[Any]], socket_timeout: float | None
) -> float:
    """How long to wait for each reply of commands that include blocking ones.

    A blocking command is not cut short by ``socket_timeout``: its reply may take as
    long as the command's own wait (BLOCK, or BLPOP's timeout), plus ``socket_timeout``
    for a server that stopped answering. Without a ``socket_timeout``, or for a command
    that waits for ever, that is ``inf``. All three engines bound blocking commands so.
    """
    if socket_timeout is None:
        return math.inf
    return max(_own_wait(args) for args in commands) + socket_timeout


def is_idempotent(args: tuple[Any, ...]) -> bool:
    """Whether a command may be sent again after a connection broke under it.

    SET qualifies only without NX, XX or GET, whose replies depend on what the first
    attempt did.
    """
    name = _text(args[0]).upper() if isinstance(args[0], (str, bytes)) else ""
    if name not in IDEMPOTENT_COMMANDS:
        return False
    if name == "SET":
        options = {_text(a).upper() for a in args[3:] if isinstance(a, (str, bytes))}
        return not options & _CONDITIONAL_SET
    return True

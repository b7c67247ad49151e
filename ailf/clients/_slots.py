"""Which hash slot a command touches, for routing it on a Redis Cluster.

A cluster splits the keyspace into 16384 slots: a key's slot is CRC16-XMODEM of the key
modulo 16384, or of its *hash tag* — the bytes between the first ``{`` and the first
``}`` after it, when there is at least one — so that ``{user-42}:cart`` and
``{user-42}:orders`` share a slot. Every key of one command must be in one slot (the
server answers CROSSSLOT otherwise, after the command was sent); this module finds the
keys of a command from a table, so that a client can route the command, and refuse a
cross-slot one before sending anything.

The table covers what ailf's clients send and what :class:`~ailf.clients._commands.
Commands` exposes. A command it does not know returns None from :func:`command_keys`:
the caller learns its key positions from the server (``COMMAND INFO``) once, and
tells this module with :func:`learn`. ``tests/test_cluster_slots.py`` pins every entry
to the server's own ``COMMAND GETKEYS``.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = [
    "ONE_KEY",
    "SLOTS",
    "KeySpec",
    "command_keys",
    "key_slot",
    "learn",
]

#: The number of hash slots of a Redis Cluster.
SLOTS = 16384


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (memoryview, bytearray)):
        return bytes(key)
    return str(key).encode()  # numbers travel as their decimal text


def key_slot(key: Any) -> int:
    """The hash slot of ``key`` (str, bytes or a number, encoded as the clients send it)."""
    data = key.encode() if type(key) is str else _key_bytes(key)
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


@attrs.frozen
class KeySpec:
    """Where a command's keys are in its arguments (``args[0]`` is the command name).

    ``first`` is the index of the first key; ``last`` the index of the last (negative:
    counted from the end, ``-1`` the last argument); ``step`` the distance between keys
    (2 for MSET's key/value pairs). ``first = 0`` means the command has no key.
    """

    first: int
    last: int = 0
    step: int = 1

    def keys(self, args: Sequence[Any]) -> list[Any]:
        if self.first == 0 or len(args) <= self.first:
            return []
        last = self.last if self.last >= 0 else len(args) + self.last
        if self.last == 0:
            last = self.first
        return list(args[self.first : last + 1 : self.step])


_ONE = KeySpec(1)
_ALL = KeySpec(1, -1)
_NONE = KeySpec(0)

#: Commands whose keys a :class:`KeySpec` describes.
_SPECS: dict[str, KeySpec] = {
    **dict.fromkeys(
        (
            "GET",
            "SET",
            "SETNX",
            "SETEX",
            "PSETEX",
            "GETSET",
            "GETDEL",
            "GETEX",
            "APPEND",
            "STRLEN",
            "INCR",
            "DECR",
            "INCRBY",
            "DECRBY",
            "INCRBYFLOAT",
            "GETRANGE",
            "SETRANGE",
            "EXPIRE",
            "PEXPIRE",
            "EXPIREAT",
            "PEXPIREAT",
            "PERSIST",
            "TTL",
            "PTTL",
            "TYPE",
            "DUMP",
            "RESTORE",
            "HSET",
            "HSETNX",
            "HGET",
            "HMGET",
            "HMSET",
            "HDEL",
            "HLEN",
            "HKEYS",
            "HVALS",
            "HGETALL",
            "HEXISTS",
            "HINCRBY",
            "HINCRBYFLOAT",
            "HSTRLEN",
            "HSCAN",
            "HRANDFIELD",
            "LPUSH",
            "RPUSH",
            "LPUSHX",
            "RPUSHX",
            "LPOP",
            "RPOP",
            "LLEN",
            "LRANGE",
            "LINDEX",
            "LSET",
            "LREM",
            "LTRIM",
            "LINSERT",
            "LPOS",
            "SADD",
            "SREM",
            "SCARD",
            "SMEMBERS",
            "SISMEMBER",
            "SMISMEMBER",
            "SPOP",
            "SRANDMEMBER",
            "SSCAN",
            "ZADD",
            "ZREM",
            "ZCARD",
            "ZSCORE",
            "ZMSCORE",
            "ZINCRBY",
            "ZRANGE",
            "ZRANGEBYSCORE",
            "ZREVRANGEBYSCORE",
            "ZREVRANGE",
            "ZRANK",
            "ZREVRANK",
            "ZCOUNT",
            "ZREMRANGEBYSCORE",
            "ZREMRANGEBYRANK",
            "ZPOPMIN",
            "ZPOPMAX",
            "ZSCAN",
            "XADD",
            "XLEN",
            "XRANGE",
            "XREVRANGE",
            "XDEL",
            "XTRIM",
            "XACK",
            "XPENDING",
            "XCLAIM",
            "XAUTOCLAIM",
            "XSETID",
            "PFADD",
            "PFCOUNT",
            "GEOADD",
            "GEOPOS",
            "GEODIST",
            "GEOSEARCH",
            "BITCOUNT",
            "SETBIT",
            "GETBIT",
        ),
        _ONE,
    ),
    **dict.fromkeys(
        ("MGET", "DEL", "UNLINK", "EXISTS", "TOUCH", "WATCH", "SINTER", "SUNION", "SDIFF"),
        _ALL,
    ),
    **dict.fromkeys(("BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX"), KeySpec(1, -2)),
    **dict.fromkeys(("MSET", "MSETNX"), KeySpec(1, -1, 2)),
    **dict.fromkeys(("RPOPLPUSH", "LMOVE", "SMOVE", "RENAME", "RENAMENX", "COPY"), KeySpec(1, 2)),
    "BLMOVE": KeySpec(1, 2),
    "BRPOPLPUSH": KeySpec(1, 2),
    **dict.fromkeys(
        (
            "PING",
            "ECHO",
            "INFO",
            "TIME",
            "DBSIZE",
            "FLUSHDB",
            "FLUSHALL",
            "KEYS",
            "SCAN",
            "RANDOMKEY",
            "PUBLISH",
            "SPUBLISH",
            "WAIT",
            "MULTI",
            "EXEC",
            "DISCARD",
            "UNWATCH",
            "READONLY",
            "READWRITE",
            "ASKING",
            "SCRIPT",
            "FUNCTION",
            "LASTSAVE",
            "ROLE",
            "LOLWUT",
            "SAVE",
            "BGSAVE",
            "CONFIG",
            "CLIENT",
            "CLUSTER",
            "COMMAND",
            "SLOWLOG",
            "ACL",
            "SWAPDB",
            "SELECT",
            "AUTH",
            "HELLO",
        ),
        _NONE,
    ),
}

#: Commands whose one key is ``args[1]``: what a router checks first.
ONE_KEY = frozenset(name for name, spec in _SPECS.items() if spec is _ONE)

#: Commands with a key count: ``(index of numkeys, index of the first key)``.
_NUMKEYS = {
    "EVAL": (2, 3),
    "EVALSHA": (2, 3),
    "EVAL_RO": (2, 3),
    "EVALSHA_RO": (2, 3),
    "FCALL": (2, 3),
    "FCALL_RO": (2, 3),
    "LMPOP": (1, 2),
    "ZMPOP": (1, 2),
    "SINTERCARD": (1, 2),
    "BLMPOP": (2, 3),
    "BZMPOP": (2, 3),
}

#: Container commands whose subcommand names a key at ``args[2]``.
_SUBCOMMAND_KEY = {
    "XGROUP": frozenset({"CREATE", "SETID", "DESTROY", "CREATECONSUMER", "DELCONSUMER"}),
    "XINFO": frozenset({"STREAM", "GROUPS", "CONSUMERS"}),
    "OBJECT": frozenset({"ENCODING", "FREQ", "IDLETIME", "REFCOUNT"}),
    "MEMORY": frozenset({"USAGE"}),
}


def _upper(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").upper()
    return str(value).upper()


def command_keys(args: Sequence[Any]) -> list[Any] | None:
    """The keys of command ``args`` (``args[0]`` its name); None for a command the table
    does not know (learn it with :func:`learn`). Channels are not keys: PUBLISH and
    SPUBLISH have none here (a cluster client routes SPUBLISH by its channel itself)."""
    spec = _SPECS.get(args[0])  # the clients send names in upper case: no conversion
    if spec is _ONE:
        return [args[1]] if len(args) > 1 else []
    name = _upper(args[0])
    spec = _SPECS.get(name)
    if spec is not None:
        return spec.keys(args)
    if name in ("XREAD", "XREADGROUP"):
        words = [_upper(a) if isinstance(a, (str, bytes)) else "" for a in args]
        if "STREAMS" not in words:
            return []
        after = list(args[words.index("STREAMS") + 1 :])
        return after[: len(after) // 2]
    counted = _NUMKEYS.get(name)
    if counted is not None:
        at, first = counted
        try:
            count = int(_upper(args[at]))
        except (IndexError, ValueError):
            return []
        return list(args[first : first + count])
    subcommands = _SUBCOMMAND_KEY.get(name)
    if subcommands is not None:
        if len(args) > 2 and _upper(args[1]) in subcommands:
            return [args[2]]
        return []
    return None


def learn(name: str, spec: KeySpec) -> None:
    """Record the key positions of a command the table did not know (from the server's
    ``COMMAND INFO``), so that later calls need no round trip."""
    _SPECS[name.upper()] = spec

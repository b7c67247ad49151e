"""The Redis commands, written once for both clients and both pipelines.

Each method builds the command's arguments and names the function that turns the raw
RESP2 reply into the shape redis-py returns (``hgetall`` a dict, ``xreadgroup`` a list of
``[stream, [(id, fields), ...]]``...), then hands both to ``self._command``. That is the
one thing a face provides: :class:`~ailf.clients._sync.RedisClient` runs the command now
and returns the converted reply; :class:`~ailf.clients._async_client.AsyncRedisClient`
returns an awaitable of it; the pipelines of both
(:class:`~ailf.clients._pipeline.Pipeline`, :class:`~ailf.clients._pipeline.AsyncPipeline`)
queue the command and return the pipeline, so calls chain as in redis-py (or, between
``pipe.watch()`` and ``pipe.multi()``, run it at once). So names, arguments, argument
checks and reply shapes are the same on every face by construction; the test suite
walks both clients to keep it so. Replies are ``str`` when the config's
``decode_responses`` is true (the default) and ``bytes`` otherwise.

A command whose arguments cannot be sent raises :class:`~ailf.errors.DataError` before
anything is sent (also ``redis.DataError``, ``TypeError`` and ``ValueError``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any

from ailf import codec
from ailf.clients._command_kinds import command_name, is_blocking
from ailf.errors import DataError

__all__ = ["Commands", "Convert"]

#: What turns a command's raw reply into its method's shape; None keeps the reply as is.
Convert = Callable[[Any], Any] | None

_OK = ("OK", b"OK")
_chain = chain.from_iterable


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _is_ok(reply: Any) -> bool:
    return reply in _OK


def _set_result(reply: Any) -> bool | None:
    return True if reply in _OK else None


def _pairs(flat: list[Any] | None) -> dict[Any, Any]:
    if not flat:
        return {}
    iterator = iter(flat)
    return dict(zip(iterator, iterator, strict=True))


def _entries(entries: list[Any] | None) -> list[tuple[Any, dict[Any, Any] | None]]:
    if not entries:
        return []
    return [
        (entry[0], _pairs(entry[1]) if entry[1] is not None else None)
        for entry in entries
        if entry is not None
    ]


def _streams(reply: list[Any] | None) -> list[list[Any]]:
    if not reply:
        return []
    return [[stream, _entries(entries)] for stream, entries in reply]


def _xautoclaim(reply: list[Any]) -> list[Any]:
    deleted = reply[2] if len(reply) > 2 else []
    return [reply[0], _entries(reply[1]), deleted]


def _xautoclaim_ids(reply: list[Any]) -> list[Any]:
    ids: list[Any] = reply[1]
    return ids


def _xpending(reply: list[Any]) -> dict[str, Any]:
    consumers = [{"name": name, "pending": int(count)} for name, count in reply[3] or ()]
    return {"pending": reply[0], "min": reply[1], "max": reply[2], "consumers": consumers}


def _xpending_range(reply: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "message_id": message_id,
            "consumer": consumer,
            "time_since_delivered": idle,
            "times_delivered": delivered,
        }
        for message_id, consumer, idle, delivered in reply
    ]


def _info(flat: list[Any]) -> dict[str, Any]:
    return {_text(key): value for key, value in _pairs(flat).items()}


def _xinfo_stream(reply: list[Any]) -> dict[str, Any]:
    info = _info(reply)
    for key in ("first-entry", "last-entry"):
        entry = info.get(key)
        if entry is not None:
            info[key] = (entry[0], _pairs(entry[1]))
    return info


def _info_list(reply: list[Any]) -> list[dict[str, Any]]:
    return [_info(item) for item in reply]


def _pair_or_none(reply: list[Any] | None) -> tuple[Any, Any] | None:
    return (reply[0], reply[1]) if reply else None


def _scan(reply: list[Any]) -> tuple[int, list[Any]]:
    return int(reply[0]), reply[1]


def _json_or_none(reply: Any) -> Any:
    return None if reply is None else codec.loads(reply)


def _seconds(value: float | datetime.timedelta, name: str = "time") -> float:
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise DataError(f"{name}: expected a number of seconds or a timedelta, got {value!r}")
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise DataError(f"{name}: expected a finite number of seconds, got {value!r}")
    return seconds


def _expiry(name: str, value: float | datetime.timedelta, unit: int) -> list[Any]:
    """SET's ``EX seconds``, or ``PX milliseconds`` when the expiry is not whole seconds or
    was given in milliseconds (``value`` counts seconds when ``unit`` is 1, milliseconds
    when it is 1000; a timedelta is a timedelta)."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        seconds = math.nan
    else:
        seconds = value / unit
    if not 0 < seconds < math.inf:  # NaN fails the comparison too
        finite = "" if math.isfinite(seconds) else " (expected a finite number of seconds)"
        raise DataError(f"{name}: expected seconds > 0 or a timedelta, got {value!r}{finite}")
    if unit == 1 and seconds == int(seconds):
        return ["EX", int(seconds)]
    return ["PX", max(1, round(seconds * 1000))]


def _stream_args(streams: Mapping[Any, Any]) -> list[Any]:
    if not isinstance(streams, Mapping) or not streams:
        raise DataError(f"streams: expected a non-empty dict of stream name -> id, got {streams!r}")
    return ["STREAMS", *streams.keys(), *streams.values()]


def _trim_args(
    maxlen: int | None, minid: Any, approximate: bool, limit: int | None
) -> tuple[Any, ...]:
    if maxlen is not None and minid is not None:
        raise DataError("give maxlen or minid, not both")
    if maxlen is not None:
        args: tuple[Any, ...] = ("MAXLEN", "~" if approximate else "=", maxlen)
    elif minid is not None:
        args = ("MINID", "~" if approximate else "=", minid)
    else:
        return ()
    return args if limit is None else (*args, "LIMIT", limit)


class Commands:
    """Redis commands as methods; each face provides ``_command(args, convert, blocking)``.

    ``_command`` sends ``args`` (or queues them), and hands back ``convert(reply)``: at
    once, as an awaitable, or, queued, once the pipeline executes. An error reply raises
    :class:`~ailf.errors.ResponseError` (pipelines: see their ``execute``). ``args`` is
    None for a command that needs no round trip (``mget([])``): the reply is then
    ``convert(None)``. ``blocking`` marks a command that may wait on the server, which
    the engines run on a connection of its own.
    """

    def _command(
        self, args: tuple[Any, ...] | None, convert: Convert = None, blocking: bool = False
    ) -> Any:
        raise NotImplementedError

    # -- raw ------------------------------------------------------------------------

    def execute_command(self, *args: Any) -> Any:
        """Any command, reply unconverted (RESP2 values; error replies raise).

        Blocking commands (BLPOP…, XREAD/XREADGROUP with BLOCK) are recognised and run
        on a dedicated connection. Commands that would change the connection's state
        for every task sharing it are refused with a :class:`ValueError` saying what
        to use instead.
        """
        name = command_name(args)
        return self._command(args, None, is_blocking(name, args))

    # -- connection and keys --------------------------------------------------------

    def ping(self) -> Any:
        return self._command(("PING",), _is_ok_or_pong)

    def echo(self, value: Any) -> Any:
        return self._command(("ECHO", value))

    def get(self, name: Any) -> Any:
        return self._command(("GET", name))

    def mget(self, keys: Any, *args: Any) -> Any:
        """MGET; no keys at all is ``[]`` without a round trip, as in redis-py (Redis
        itself refuses an MGET of nothing)."""
        names = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        if not names and not args:
            return self._command(None, _no_values)
        return self._command(("MGET", *names, *args))

    def set(
        self,
        name: Any,
        value: Any,
        ex: float | datetime.timedelta | None = None,
        px: int | datetime.timedelta | None = None,
        nx: bool = False,
        xx: bool = False,
        expire: float | datetime.timedelta | None = None,
        keepttl: bool = False,
        get: bool = False,
    ) -> Any:
        """SET; ``expire`` is an alias of ``ex`` (seconds, float or timedelta).

        An expiry that is not whole seconds is sent in milliseconds (``PX``), so
        ``expire=2.5`` keeps its half second; it must be > 0 and finite
        (:class:`~ailf.errors.DataError` otherwise, before anything is sent).
        """
        args: list[Any] = ["SET", name, value]
        if ex is not None:
            args += _expiry("ex", ex, 1)
        elif expire is not None:
            args += _expiry("expire", expire, 1)
        if px is not None:
            args += _expiry("px", px, 1000)
        if nx:
            args.append("NX")
        if xx:
            args.append("XX")
        if keepttl:
            args.append("KEEPTTL")
        if get:
            args.append("GET")
            return self._command(tuple(args))
        return self._command(tuple(args), _set_result)

    def mset(self, mapping: Mapping[Any, Any]) -> Any:
        return self._command(("MSET", *_flatten(mapping)), _is_ok)

    def delete(self, *names: Any) -> Any:
        return self._command(("DEL", *names))

    def unlink(self, *names: Any) -> Any:
        return self._command(("UNLINK", *names))

    def exists(self, *names: Any) -> Any:
        return self._command(("EXISTS", *names))

    def incr(self, name: Any, amount: int = 1) -> Any:
        return self._command(("INCRBY", name, amount))

    incrby = incr

    def decr(self, name: Any, amount: int = 1) -> Any:
        return self._command(("DECRBY", name, amount))

    def expire(self, name: Any, time: float | datetime.timedelta) -> Any:
        return self._command(("EXPIRE", name, int(_seconds(time))), bool)

    def pexpire(self, name: Any, time: int | datetime.timedelta) -> Any:
        ms = int(_seconds(time) * 1000) if isinstance(time, datetime.timedelta) else time
        return self._command(("PEXPIRE", name, ms), bool)

    def ttl(self, name: Any) -> Any:
        return self._command(("TTL", name))

    def pttl(self, name: Any) -> Any:
        return self._command(("PTTL", name))

    def type(self, name: Any) -> Any:
        return self._command(("TYPE", name))

    def keys(self, pattern: Any = "*") -> Any:
        return self._command(("KEYS", pattern))

    def scan(self, cursor: int = 0, match: Any = None, count: int | None = None) -> Any:
        args: list[Any] = ["SCAN", cursor]
        if match is not None:
            args += ["MATCH", match]
        if count is not None:
            args += ["COUNT", count]
        return self._command(tuple(args), _scan)

    def dbsize(self) -> Any:
        return self._command(("DBSIZE",))

    def flushdb(self) -> Any:
        return self._command(("FLUSHDB",), _is_ok)

    # -- JSON values (guide style) --------------------------------------------------

    def set_json(
        self, name: Any, value: Any, expire: float | datetime.timedelta | None = None
    ) -> Any:
        """Store ``value`` as JSON text (through :mod:`ailf.codec`): nested dicts, lists,
        numbers and booleans survive, attrs instances as their fields; ``expire`` as in
        :meth:`set`."""
        return self.set(name, codec.dumps(value), expire=expire)

    def get_json(self, name: Any) -> Any:
        """The JSON value stored at ``name``, or None if the key is missing;
        :class:`~ailf.errors.DecodeError` if it is not JSON."""
        return self._command(("GET", name), _json_or_none)

    # -- hashes ---------------------------------------------------------------------

    def hset(
        self,
        name: Any,
        key: Any = None,
        value: Any = None,
        mapping: Mapping[Any, Any] | None = None,
        items: Iterable[Any] | None = None,
    ) -> Any:
        args: list[Any] = ["HSET", name]
        if key is not None:
            args += [key, value]
        if mapping:
            args += _flatten(mapping)
        if items:
            args += list(items)
        if len(args) == 2:
            raise DataError(f"hset {name!r}: give key and value, mapping, or items")
        return self._command(tuple(args))

    def hget(self, name: Any, key: Any) -> Any:
        return self._command(("HGET", name, key))

    def hmget(self, name: Any, keys: Any, *args: Any) -> Any:
        fields = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        return self._command(("HMGET", name, *fields, *args))

    def hgetall(self, name: Any) -> Any:
        return self._command(("HGETALL", name), _pairs)

    def hdel(self, name: Any, *keys: Any) -> Any:
        return self._command(("HDEL", name, *keys))

    def hincrby(self, name: Any, key: Any, amount: int = 1) -> Any:
        return self._command(("HINCRBY", name, key, amount))

    def hkeys(self, name: Any) -> Any:
        return self._command(("HKEYS", name))

    def hvals(self, name: Any) -> Any:
        return self._command(("HVALS", name))

    def hlen(self, name: Any) -> Any:
        return self._command(("HLEN", name))

    def hexists(self, name: Any, key: Any) -> Any:
        return self._command(("HEXISTS", name, key), bool)

    # -- lists and sets -------------------------------------------------------------

    def lpush(self, name: Any, *values: Any) -> Any:
        return self._command(("LPUSH", name, *values))

    def rpush(self, name: Any, *values: Any) -> Any:
        return self._command(("RPUSH", name, *values))

    def lpop(self, name: Any) -> Any:
        return self._command(("LPOP", name))

    def rpop(self, name: Any) -> Any:
        return self._command(("RPOP", name))

    def lrange(self, name: Any, start: int, end: int) -> Any:
        return self._command(("LRANGE", name, start, end))

    def llen(self, name: Any) -> Any:
        return self._command(("LLEN", name))

    def blpop(self, keys: Any, timeout: float = 0) -> Any:
        """BLPOP on a dedicated connection: ``(key, value)``, or None after ``timeout`` s."""
        names = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        return self._command(("BLPOP", *names, timeout), _pair_or_none, True)

    def brpop(self, keys: Any, timeout: float = 0) -> Any:
        names = [keys] if isinstance(keys, (str, bytes)) else list(keys)
        return self._command(("BRPOP", *names, timeout), _pair_or_none, True)

    def sadd(self, name: Any, *values: Any) -> Any:
        return self._command(("SADD", name, *values))

    def srem(self, name: Any, *values: Any) -> Any:
        return self._command(("SREM", name, *values))

    def smembers(self, name: Any) -> Any:
        return self._command(("SMEMBERS", name), set)

    def sismember(self, name: Any, value: Any) -> Any:
        return self._command(("SISMEMBER", name, value), bool)

    def scard(self, name: Any) -> Any:
        return self._command(("SCARD", name))

    # -- pub/sub --------------------------------------------------------------------

    def publish(self, channel: Any, message: Any) -> Any:
        """PUBLISH; dicts and lists are sent as JSON text. Returns the receivers' count."""
        return self._command(("PUBLISH", channel, codec.encode_payload(message)))

    def spublish(self, channel: Any, message: Any) -> Any:
        """SPUBLISH (Redis ≥ 7): publish on a sharded channel, heard by ``ssubscribe``rs
        only; on a cluster it travels within the shard of the channel's slot alone.
        Returns the receivers' count (on that node)."""
        return self._command(("SPUBLISH", channel, codec.encode_payload(message)))

    # -- streams --------------------------------------------------------------------

    def xadd(
        self,
        name: Any,
        fields: Mapping[Any, Any],
        id: Any = "*",
        maxlen: int | None = None,
        approximate: bool = True,
        nomkstream: bool = False,
        minid: Any = None,
        limit: int | None = None,
    ) -> Any:
        """XADD; returns the new entry's id. ``maxlen``/``minid`` trim in the same call."""
        if not fields:
            raise DataError(f"xadd {name!r}: fields must be a non-empty dict")
        if maxlen is None and minid is None and not nomkstream:
            return self._command(("XADD", name, id, *_chain(fields.items())))
        return self._command(
            (
                "XADD",
                name,
                *(("NOMKSTREAM",) if nomkstream else ()),
                *_trim_args(maxlen, minid, approximate, limit),
                id,
                *_chain(fields.items()),
            )
        )

    def xread(
        self, streams: Mapping[Any, Any], count: int | None = None, block: int | None = None
    ) -> Any:
        """XREAD; with ``block`` (ms, 0 = forever) it runs on a dedicated connection."""
        args: list[Any] = ["XREAD"]
        if count is not None:
            args += ["COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        return self._command((*args, *_stream_args(streams)), _streams, block is not None)

    def xreadgroup(
        self,
        groupname: Any,
        consumername: Any,
        streams: Mapping[Any, Any],
        count: int | None = None,
        block: int | None = None,
        noack: bool = False,
    ) -> Any:
        """XREADGROUP; with ``block`` (ms, 0 = forever) it runs on a dedicated connection.

        A cancelled blocking read may still have delivered entries to this consumer's
        pending list: read with id ``"0"`` on start to recover them.
        """
        args: list[Any] = ["XREADGROUP", "GROUP", groupname, consumername]
        if count is not None:
            args += ["COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        if noack:
            args.append("NOACK")
        return self._command((*args, *_stream_args(streams)), _streams, block is not None)

    def xack(self, name: Any, groupname: Any, *ids: Any) -> Any:
        return self._command(("XACK", name, groupname, *ids))

    def xautoclaim(
        self,
        name: Any,
        groupname: Any,
        consumername: Any,
        min_idle_time: int,
        start_id: Any = "0-0",
        count: int | None = None,
        justid: bool = False,
    ) -> Any:
        """XAUTOCLAIM: ``[next_id, [(id, fields)...], [deleted ids]]`` (ids only if justid)."""
        args: list[Any] = ["XAUTOCLAIM", name, groupname, consumername, min_idle_time, start_id]
        if count is not None:
            args += ["COUNT", count]
        if justid:
            args.append("JUSTID")
            return self._command(tuple(args), _xautoclaim_ids)
        return self._command(tuple(args), _xautoclaim)

    def xclaim(
        self,
        name: Any,
        groupname: Any,
        consumername: Any,
        min_idle_time: int,
        message_ids: Iterable[Any],
        justid: bool = False,
    ) -> Any:
        args: list[Any] = ["XCLAIM", name, groupname, consumername, min_idle_time, *message_ids]
        if justid:
            args.append("JUSTID")
            return self._command(tuple(args))
        return self._command(tuple(args), _entries)

    def xpending(self, name: Any, groupname: Any) -> Any:
        return self._command(("XPENDING", name, groupname), _xpending)

    def xpending_range(
        self,
        name: Any,
        groupname: Any,
        min: Any = "-",
        max: Any = "+",
        count: int = 100,
        consumername: Any = None,
        idle: int | None = None,
    ) -> Any:
        args: list[Any] = ["XPENDING", name, groupname]
        if idle is not None:
            args += ["IDLE", idle]
        args += [min, max, count]
        if consumername is not None:
            args.append(consumername)
        return self._command(tuple(args), _xpending_range)

    def xgroup_create(
        self,
        name: Any,
        groupname: Any,
        id: Any = "$",
        mkstream: bool = False,
        entries_read: int | None = None,
    ) -> Any:
        """XGROUP CREATE; BUSYGROUP (the group exists) raises ResponseError with that code."""
        args: list[Any] = ["XGROUP", "CREATE", name, groupname, id]
        if mkstream:
            args.append("MKSTREAM")
        if entries_read is not None:
            args += ["ENTRIESREAD", entries_read]
        return self._command(tuple(args), _is_ok)

    def xgroup_destroy(self, name: Any, groupname: Any) -> Any:
        return self._command(("XGROUP", "DESTROY", name, groupname), bool)

    def xgroup_delconsumer(self, name: Any, groupname: Any, consumername: Any) -> Any:
        return self._command(("XGROUP", "DELCONSUMER", name, groupname, consumername))

    def xgroup_createconsumer(self, name: Any, groupname: Any, consumername: Any) -> Any:
        return self._command(("XGROUP", "CREATECONSUMER", name, groupname, consumername))

    def xgroup_setid(self, name: Any, groupname: Any, id: Any) -> Any:
        return self._command(("XGROUP", "SETID", name, groupname, id), _is_ok)

    def xinfo_stream(self, name: Any) -> Any:
        return self._command(("XINFO", "STREAM", name), _xinfo_stream)

    def xinfo_groups(self, name: Any) -> Any:
        return self._command(("XINFO", "GROUPS", name), _info_list)

    def xinfo_consumers(self, name: Any, groupname: Any) -> Any:
        return self._command(("XINFO", "CONSUMERS", name, groupname), _info_list)

    def xtrim(
        self,
        name: Any,
        maxlen: int | None = None,
        approximate: bool = True,
        minid: Any = None,
        limit: int | None = None,
    ) -> Any:
        if maxlen is None and minid is None:
            raise DataError(f"xtrim {name!r}: give maxlen or minid")
        return self._command(("XTRIM", name, *_trim_args(maxlen, minid, approximate, limit)))

    def xlen(self, name: Any) -> Any:
        return self._command(("XLEN", name))

    def xrange(self, name: Any, min: Any = "-", max: Any = "+", count: int | None = None) -> Any:
        args: list[Any] = ["XRANGE", name, min, max]
        if count is not None:
            args += ["COUNT", count]
        return self._command(tuple(args), _entries)

    def xrevrange(self, name: Any, max: Any = "+", min: Any = "-", count: int | None = None) -> Any:
        args: list[Any] = ["XREVRANGE", name, max, min]
        if count is not None:
            args += ["COUNT", count]
        return self._command(tuple(args), _entries)

    def xdel(self, name: Any, *ids: Any) -> Any:
        return self._command(("XDEL", name, *ids))


def _no_values(_: None) -> list[Any]:
    return []


def _is_ok_or_pong(reply: Any) -> bool:
    return reply in ("PONG", b"PONG") or reply in _OK


def _flatten(mapping: Mapping[Any, Any]) -> list[Any]:
    return list(_chain(mapping.items()))

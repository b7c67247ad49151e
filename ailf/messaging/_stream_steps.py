"""The pure half of the stream helpers: entries, and every operation as steps, no I/O.

:class:`~ailf.messaging._stream.RedisStream` and its async twin send the same commands,
read the replies the same way and recover alike, because each operation is written
once, here, as a generator of *steps* — a call on the client's command surface
(:class:`Call`, :class:`Read`), a handler to call (:class:`Handle`), a pause
(:class:`Pause`) — that receives each step's result, or has its exception thrown in, at
the ``yield``. The sync face performs the steps with blocking calls, the async face
awaits them: one body, two drivers, in the sans-IO manner of h11, whose protocol state
machine neither reads nor writes a socket. A :class:`Call` names a method of
:class:`~ailf.clients._commands.Commands`, the surface both clients share, so its reply
comes back already parsed (entries as ``(id, {field: value})``, XPENDING as a dict…):
this module only turns those shapes into the stream helpers' own (entry dicts with
JSON-decoded fields, :class:`PendingSummary`...).

Field values are stored as JSON, one field at a time, so that ``{"priority": 1}``
reads back as the int 1. Entries written by other programs keep working: a value that
is not valid JSON reads back as the string it is.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import attrs

from ailf.clients._commands import Commands
from ailf.codec import dumps, loads
from ailf.config import RetryPolicy
from ailf.errors import (
    AuthenticationError,
    DecodeError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
)

__all__ = [
    "NO_GROUP_MESSAGE",
    "Call",
    "Entry",
    "Handle",
    "LoopBackoff",
    "Pause",
    "PendingEntry",
    "PendingSummary",
    "Read",
    "Step",
    "StepRunner",
    "Steps",
    "StopFlag",
    "StreamOperations",
    "decode_fields",
    "deleted_ids",
    "encode_fields",
    "entries_of",
    "info_of",
    "is_group_lost",
    "log_handler_failure",
    "pending_entries_of",
    "pending_summary_of",
]

log = logging.getLogger("ailf.stream")

#: The ValueError message when a group operation is called before a group is set.
NO_GROUP_MESSAGE = "No consumer group set. Call create_consumer_group first."

#: An entry as every read method returns it: ``{"id": "1715…-0", "data": {...}}``.
Entry = dict[str, Any]
#: An entry as the command surface returns it: ``(id, {field: value})``; the fields are
#: None for an entry deleted while it was pending.
RawEntry = tuple[Any, Mapping[Any, Any] | None]


# -- entries -------------------------------------------------------------------------------


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def encode_fields(data: Mapping[str, Any]) -> dict[str, str]:
    """``data`` as XADD's fields, every value as JSON."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"a stream entry must be a non-empty dict of fields, got {data!r}")
    encoded: dict[str, str] = {}
    for field, value in data.items():
        if not isinstance(field, str):
            raise ValueError(f"stream field names must be strings, got {field!r}")
        encoded[field] = dumps(value)
    return encoded


def _field_value(raw: str | bytes) -> Any:
    try:
        return loads(raw)
    except DecodeError:
        if isinstance(raw, bytes):
            try:
                return raw.decode()
            except UnicodeDecodeError:
                return raw
        return raw


def decode_fields(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """An entry's fields as a dict, each value decoded from JSON where it is JSON."""
    return {_text(field): _field_value(value) for field, value in fields.items()}


def entries_of(raw: Sequence[RawEntry]) -> list[Entry]:
    """Entries as the surface returns them, as entry dicts; deleted entries left out."""
    return [
        {"id": _text(entry_id), "data": decode_fields(fields)}
        for entry_id, fields in raw
        if fields is not None
    ]


def deleted_ids(raw: Sequence[RawEntry]) -> list[str]:
    """Ids of entries that were deleted (trimmed) while they were pending."""
    return [_text(entry_id) for entry_id, fields in raw if fields is None]


def _read_entries(reply: Sequence[Any]) -> list[RawEntry]:
    """The entries of the one stream an XREAD/XREADGROUP reply is about."""
    return [entry for _, entries in reply for entry in entries]


def _texts(info: Mapping[str, Any]) -> dict[str, Any]:
    """An XINFO dict with its bytes values as text (under ``decode_responses=False``)."""
    return {key: _text(value) if isinstance(value, bytes) else value for key, value in info.items()}


def info_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """XINFO STREAM as the surface returns it, with ``first-entry``/``last-entry`` as
    entry dicts (None for an empty stream)."""
    shown = _texts(info)
    for key in ("first-entry", "last-entry"):
        if shown.get(key):
            found = entries_of([shown[key]])
            shown[key] = found[0] if found else None
    return shown


@attrs.frozen
class PendingSummary:
    """A group's pending entries in brief: how many, the id range, and who holds them."""

    count: int
    min_id: str | None
    max_id: str | None
    consumers: dict[str, int]


@attrs.frozen
class PendingEntry:
    """One delivered, unacknowledged entry: who has it, for how long, how often delivered."""

    id: str
    consumer: str
    idle_ms: int
    deliveries: int


def pending_summary_of(reply: Mapping[str, Any]) -> PendingSummary:
    """:meth:`~ailf.clients._commands.Commands.xpending`'s dict as a summary."""
    low, high = reply["min"], reply["max"]
    return PendingSummary(
        count=int(reply["pending"]),
        min_id=_text(low) if low is not None else None,
        max_id=_text(high) if high is not None else None,
        consumers={_text(c["name"]): int(c["pending"]) for c in reply["consumers"]},
    )


def pending_entries_of(reply: Sequence[Mapping[str, Any]]) -> list[PendingEntry]:
    """:meth:`~ailf.clients._commands.Commands.xpending_range`'s dicts as entries."""
    return [
        PendingEntry(
            id=_text(p["message_id"]),
            consumer=_text(p["consumer"]),
            idle_ms=int(p["time_since_delivered"]),
            deliveries=int(p["times_delivered"]),
        )
        for p in reply
    ]


# -- steps ---------------------------------------------------------------------------------
#
# Every operation is a generator that yields the steps it needs and receives each
# step's result, or has its exception thrown in, at the yield. RedisStream runs the
# steps with blocking calls and AsyncRedisStream awaits them; what to send, how to read
# the replies, when to acknowledge, back off or re-create a group is decided here, once.


@attrs.frozen
class Call:
    """Call the command method ``method`` of the client: the same on both faces."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)

    def on(self, client: Commands) -> Any:
        """The call, made: its reply on the sync face, an awaitable of it on the async."""
        return getattr(client, self.method)(*self.args, **self.kwargs)


@attrs.frozen
class Read:
    """XREAD, or XREADGROUP when ``group`` is set: the step that may block on the server.

    The client recognises a read with ``block`` and gives it a connection of its own, so
    a blocking read never holds up other tasks' commands.
    """

    name: str
    last_id: str
    count: int | None
    block: int | None
    group: str | None = None
    consumer: str | None = None

    def on(self, client: Commands) -> Any:
        """The read, made (see :meth:`Call.on`)."""
        streams = {self.name: self.last_id}
        if self.group is None or self.consumer is None:
            return client.xread(streams, count=self.count, block=self.block)
        return client.xreadgroup(
            self.group, self.consumer, streams, count=self.count, block=self.block
        )


@attrs.frozen
class Handle:
    """Call the processing loop's handler on ``entry``."""

    entry: Entry


@attrs.frozen
class Pause:
    """Wait ``seconds`` before going on, or less if the loop is told to stop."""

    seconds: float


T = TypeVar("T")
Step = Call | Read | Handle | Pause
#: An operation as steps: yields each step, receives its result, returns the outcome.
Steps = Generator[Step, Any, T]


class StopFlag(Protocol):
    """What the processing loop asks of its stop event: threading, trio or asyncio's."""

    def is_set(self) -> bool: ...


class StepRunner:
    """Feeds a step generator each step's outcome: the one loop both drivers share.

    ``while (step := runner.next_step()) is not None: with runner.outcome(): runner.reply
    = perform(step)`` — the result of a step is sent in, its exception thrown in, and
    :attr:`result` is the generator's return value once it is done.
    """

    def __init__(self, steps: Steps[Any]) -> None:
        self.steps = steps
        self.reply: Any = None
        self.error: Exception | None = None
        self.result: Any = None

    def next_step(self) -> Step | None:
        reply, error = self.reply, self.error
        self.reply = self.error = None
        try:
            return self.steps.throw(error) if error is not None else self.steps.send(reply)
        except StopIteration as done:
            self.result = done.value
            return None

    @contextmanager
    def outcome(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self.error = exc


class StreamOperations:
    """The state of one stream reader and its operations as steps, for both faces."""

    def __init__(self, name: str, maxlen: int | None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected the stream's key, a non-empty string, got {name!r}")
        bad_type = isinstance(maxlen, bool) or not isinstance(maxlen, int)
        if maxlen is not None and (bad_type or maxlen < 1):
            raise ValueError(f"maxlen: expected an integer >= 1 or None, got {maxlen!r}")
        self.name = name
        self.maxlen = maxlen
        self.group: str | None = None
        self.consumer: str | None = None
        self._history_from: str | None = None
        # Where read() without a last_id goes on from: after the last entry it returned.
        self._read_from = "0"

    def __repr__(self) -> str:
        group = f" group={self.group!r} consumer={self.consumer!r}" if self.group else ""
        return f"<{type(self).__name__} {self.name!r}{group}>"

    @property
    def stream_name(self) -> str:
        """The stream's key: :attr:`name` under the upstream library's name for it."""
        return self.name

    def _group(self) -> tuple[str, str]:
        if self.group is None or self.consumer is None:
            raise ValueError(NO_GROUP_MESSAGE)
        return self.group, self.consumer

    def _add_steps(self, data: Mapping[str, Any]) -> Steps[str]:
        fields = encode_fields(data)
        return _text((yield Call("xadd", (self.name, fields), {"maxlen": self.maxlen})))

    def _read_steps(
        self, count: int | None, block: int | None, last_id: str | None
    ) -> Steps[list[Entry]]:
        start = self._read_from if last_id is None else last_id
        if start == "$":
            # "$" means "after the newest entry now". Pinned to that entry's id before
            # reading, so that the next read goes on from there even when this one
            # returns nothing: an entry added in between is returned then, not skipped.
            newest = yield Call("xrevrange", (self.name,), {"count": 1})
            start = _text(newest[0][0]) if newest else "0-0"
        raw = _read_entries((yield Read(self.name, start, count, block)))
        self._read_from = _text(raw[-1][0]) if raw else start
        return entries_of(raw)

    def _length_steps(self) -> Steps[int]:
        return int((yield Call("xlen", (self.name,))))

    def _trim_steps(self, maxlen: int | None, minid: str | None, approximate: bool) -> Steps[int]:
        if (maxlen is None) == (minid is None):
            raise ValueError("trim: pass exactly one of maxlen= or minid=")
        trim = {"maxlen": maxlen, "minid": minid, "approximate": approximate}
        return int((yield Call("xtrim", (self.name,), trim)))

    def _info_steps(self) -> Steps[dict[str, Any]]:
        return info_of((yield Call("xinfo_stream", (self.name,))))

    def _groups_steps(self) -> Steps[list[dict[str, Any]]]:
        return [_texts(g) for g in (yield Call("xinfo_groups", (self.name,)))]

    def _create_group_steps(self, group: str, consumer: str, start_id: str) -> Steps[bool]:
        try:
            yield Call("xgroup_create", (self.name, group, start_id), {"mkstream": True})
        except ResponseError as exc:
            if exc.code != "BUSYGROUP":
                raise
        self.group, self.consumer = group, consumer
        self._history_from = "0"
        return True

    def _read_group_steps(self, count: int, block: int | None) -> Steps[list[Entry]]:
        group, consumer = self._group()
        while self._history_from is not None:
            history = Read(self.name, self._history_from, count, None, group, consumer)
            raw = _read_entries((yield history))
            if not raw:
                self._history_from = None
                break
            self._history_from = _text(raw[-1][0])
            yield from self._acknowledge_steps(*deleted_ids(raw))
            entries = entries_of(raw)
            if entries:
                return entries
        # Until the read returns, count on history: a read that fails or is cancelled
        # after it was sent may have delivered entries to this consumer that it never
        # returned, and the next call must pick them up.
        self._history_from = "0"
        reply = yield Read(self.name, ">", count, block, group, consumer)
        self._history_from = None
        return entries_of(_read_entries(reply))

    def _acknowledge_steps(self, *ids: str) -> Steps[int]:
        group, _ = self._group()
        if not ids:
            return 0
        return int((yield Call("xack", (self.name, group, *ids))))

    def _pending_steps(self) -> Steps[PendingSummary]:
        group, _ = self._group()
        return pending_summary_of((yield Call("xpending", (self.name, group))))

    def _pending_entries_steps(
        self, count: int, consumer: str | None, idle: int | None
    ) -> Steps[list[PendingEntry]]:
        group, _ = self._group()
        options = {"count": count, "consumername": consumer, "idle": idle}
        return pending_entries_of((yield Call("xpending_range", (self.name, group), options)))

    def _claim_idle_steps(self, min_idle_ms: int, count: int) -> Steps[list[Entry]]:
        group, consumer = self._group()
        claimed: list[Entry] = []
        start = "0-0"
        while len(claimed) < count:
            arguments = (self.name, group, consumer, min_idle_ms, start)
            reply = yield Call("xautoclaim", arguments, {"count": count - len(claimed)})
            # Redis 6.2 returns entries trimmed while pending as nil: acknowledge them.
            yield from self._acknowledge_steps(*deleted_ids(reply[1]))
            start, claimed = _text(reply[0]), claimed + entries_of(reply[1])
            if start == "0-0":
                break
        return claimed

    def _process_steps(
        self,
        handler: object,
        retry: RetryPolicy,
        count: int,
        block: int,
        stop: StopFlag | None,
        max_messages: int | None,
        claim_idle_ms: int | None,
    ) -> Steps[int]:
        self._group()
        # Checked up front: a bad handler would fail on every entry and leave it pending,
        # a count of 0 would read nothing forever, a negative block fail every read.
        if not callable(handler):
            raise TypeError(f"process: handler must be callable with an entry, got {handler!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"process: count must be an integer >= 1, got {count!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise ValueError(f"process: block must be milliseconds >= 0, got {block!r}")
        backoff = LoopBackoff(self.name, retry)
        handled = acked = 0
        while not (stop is not None and stop.is_set()) and (
            max_messages is None or handled < max_messages
        ):
            budget = count if max_messages is None else min(count, max_messages - handled)
            try:
                batch: list[Entry] = []
                if claim_idle_ms is not None:
                    batch = yield from self._claim_idle_steps(claim_idle_ms, budget)
                batch = batch or (yield from self._read_group_steps(budget, block))
                done: list[str] = []
                for entry in batch:
                    try:
                        yield Handle(entry)
                    except Exception:
                        log_handler_failure(self.name, entry)
                    else:
                        done.append(entry["id"])
                handled += len(batch)
                acked += yield from self._acknowledge_steps(*done)
                delay = backoff.handled(len(batch) - len(done))
            except Exception as exc:
                delay = backoff.redis_failed(exc)
                if is_group_lost(exc):
                    yield from self._recreate_group_steps()
            if delay:
                yield Pause(delay)
        return acked

    def _recreate_group_steps(self) -> Steps[None]:
        group, consumer = self._group()
        try:
            yield from self._create_group_steps(group, consumer, "0")
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("stream %r: %s; will retry", self.name, exc)


# -- the processing loop's shared half: what to log, how long to pause -----------------


def is_group_lost(exc: BaseException) -> bool:
    """NOGROUP: the group (or the whole stream) is gone and must be created again."""
    return isinstance(exc, ResponseError) and exc.code == "NOGROUP"


def log_handler_failure(stream: str, entry: Entry) -> None:
    """Log the exception being handled as a handler's failure on ``entry`` (in ``except``)."""
    log.exception("handler failed on entry %s of stream %r; it stays pending", entry["id"], stream)


@attrs.define
class LoopBackoff:
    """How a processing loop paces itself after failures, and what it logs about them.

    The sync loop and its async twin both ask it after each round: :meth:`handled`
    after a batch (with how many handlers failed), :meth:`redis_failed` when talking
    to Redis raised. Both return the pause before the next round — 0 after a clean
    round, else the policy's growing delay. An outage is logged once when it starts and
    once when it ends; the rounds in between at debug level.
    """

    stream: str
    policy: RetryPolicy
    failures: int = 0
    redis_down: bool = False

    def handled(self, handler_failures: int) -> float:
        if self.redis_down:
            log.info("stream %r: reading again after %d failures", self.stream, self.failures)
            self.redis_down = False
        if not handler_failures:
            self.failures = 0
            return 0.0
        return self._pause(f"{handler_failures} handler failure(s)")

    def redis_failed(self, exc: Exception) -> float:
        """The pause after ``exc``; raises it again when retrying cannot help."""
        if is_group_lost(exc):
            log.warning("stream %r lost its group (%s); re-creating it", self.stream, exc)
        elif isinstance(exc, AuthenticationError) or not isinstance(
            exc, (RedisConnectionError, RedisTimeoutError)
        ):
            raise exc
        elif not self.redis_down:
            log.warning("stream %r: %s; retrying with backoff", self.stream, exc)
        self.redis_down = True
        return self._pause(str(exc))

    def _pause(self, why: str) -> float:
        delay = self.policy.delay(self.failures)
        self.failures += 1
        log.debug("stream %r: pausing %.2fs after %s", self.stream, delay, why)
        return delay

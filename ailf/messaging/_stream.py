"""Redis streams with consumer groups: :class:`RedisStream` and :class:`AsyncRedisStream`.

A stream is durable and ordered; a consumer group shares its entries among consumers
so that each entry is handled by one of them, and stays *pending* until acknowledged.

The module is written in layers that do no I/O, and two thin faces that do. The pure
layer builds command arguments and parses replies (``*_command`` and ``parse_*``
functions, :func:`encode_fields`, :func:`decode_fields`) and paces a processing loop
through failures (:class:`LoopBackoff`). Above it, :class:`StreamOperations` writes
each operation once — ``read_group``'s history-then-new logic, ``claim_idle``'s
XAUTOCLAIM walk, the whole processing loop — as a generator of steps (commands to
send, a handler to call, a pause), in the way httpx drives its sync and async
clients from one body. :class:`RedisStream` performs the steps with blocking calls on
a :class:`~ailf.clients._sync.RedisClient`; :class:`AsyncRedisStream` awaits them on an
:class:`~ailf.clients._async_client.AsyncRedisClient`. So both send the same commands,
read replies the same way and recover alike, by construction.

Field values are stored as JSON, one field at a time, so that ``{"priority": 1}``
reads back as the int 1. Entries written by other programs keep working: a value that
is not valid JSON reads back as the string it is.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import attrs

from ailf.clients._async_client import AsyncRedisClient
from ailf.clients._sync import RedisClient
from ailf.codec import dumps, loads
from ailf.config import RetryPolicy
from ailf.errors import (
    AuthenticationError,
    DecodeError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
)
from ailf.messaging import _asynclib as asynclib
from ailf.messaging._asynclib import OwnedClient

__all__ = [
    "NO_GROUP_MESSAGE",
    "AsyncRedisStream",
    "Handle",
    "LoopBackoff",
    "Pause",
    "PendingEntry",
    "PendingSummary",
    "Read",
    "RedisStream",
    "StepRunner",
    "StreamOperations",
    "autoclaim_command",
    "decode_fields",
    "deleted_ids",
    "encode_fields",
    "is_group_lost",
    "log_handler_failure",
    "parse_autoclaim",
    "parse_entries",
    "parse_pending_entries",
    "parse_pending_summary",
    "parse_read",
    "read_command",
    "readgroup_command",
    "reply_map",
    "xadd_command",
]

log = logging.getLogger("ailf.stream")

#: The ValueError message when a group operation is called before a group is set.
NO_GROUP_MESSAGE = "No consumer group set. Call create_consumer_group first."

#: An entry as every read method returns it: ``{"id": "1715…-0", "data": {...}}``.
Entry = dict[str, Any]


# -- the pure half: entries ----------------------------------------------------------


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def encode_fields(data: Mapping[str, Any]) -> list[str]:
    """Flatten ``data`` into XADD's ``field value ...`` with every value as JSON."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"a stream entry must be a non-empty dict of fields, got {data!r}")
    flat: list[str] = []
    for field, value in data.items():
        if not isinstance(field, str):
            raise ValueError(f"stream field names must be strings, got {field!r}")
        flat += [field, dumps(value)]
    return flat


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


def _pairs(reply: Sequence[Any] | Mapping[Any, Any]) -> Iterable[tuple[Any, Any]]:
    if isinstance(reply, Mapping):
        return reply.items()
    return zip(reply[::2], reply[1::2], strict=True)


def decode_fields(flat: Sequence[str | bytes] | Mapping[Any, Any]) -> dict[str, Any]:
    """The entry's fields as a dict, each value decoded from JSON where it is JSON."""
    return {_text(field): _field_value(value) for field, value in _pairs(flat)}


def parse_entries(reply: Sequence[Any] | None) -> list[Entry]:
    """``[[id, [field, value, ...]], ...]`` as entry dicts, deleted entries left out."""
    return [
        {"id": _text(entry_id), "data": decode_fields(fields)}
        for entry_id, fields in reply or ()
        if fields is not None
    ]


def deleted_ids(reply: Sequence[Any] | None) -> list[str]:
    """Ids in a reply whose entries were deleted (trimmed) while they were pending."""
    return [_text(entry_id) for entry_id, fields in reply or () if fields is None]


def parse_read(reply: Any) -> list[Any]:
    """The raw entries of the single stream an XREAD/XREADGROUP reply is about."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, Mapping) else (e for _, e in reply)
    return [entry for entries in streams for entry in entries or ()]


def reply_map(reply: Sequence[Any] | Mapping[Any, Any]) -> dict[str, Any]:
    """A flat ``[key, value, key, value]`` reply (or a RESP3 map) as a dict of str keys."""
    return {_text(k): _text(v) if isinstance(v, bytes) else v for k, v in _pairs(reply)}


# -- the pure half: commands and replies -----------------------------------------------


def xadd_command(name: str, data: Mapping[str, Any], maxlen: int | None) -> list[Any]:
    trim = ["MAXLEN", "~", maxlen] if maxlen is not None else []
    return ["XADD", name, *trim, "*", *encode_fields(data)]


def _count_block(count: int | None, block: int | None) -> list[Any]:
    args: list[Any] = []
    if count is not None:
        args += ["COUNT", count]
    if block is not None:
        args += ["BLOCK", block]
    return args


def read_command(name: str, last_id: str, count: int | None, block: int | None) -> list[Any]:
    return ["XREAD", *_count_block(count, block), "STREAMS", name, last_id]


def readgroup_command(
    name: str, group: str, consumer: str, last_id: str, count: int | None, block: int | None
) -> list[Any]:
    return [
        "XREADGROUP", "GROUP", group, consumer,
        *_count_block(count, block), "STREAMS", name, last_id,
    ]  # fmt: skip


def autoclaim_command(
    name: str, group: str, consumer: str, min_idle_ms: int, start: str, count: int
) -> list[Any]:
    return ["XAUTOCLAIM", name, group, consumer, min_idle_ms, start, "COUNT", count]


def parse_autoclaim(reply: Sequence[Any]) -> tuple[str, list[Entry]]:
    """XAUTOCLAIM's reply as (next start id, claimed entries still in the stream)."""
    return _text(reply[0]), parse_entries(reply[1])


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


def parse_pending_summary(reply: Sequence[Any]) -> PendingSummary:
    count, low, high, consumers = reply
    return PendingSummary(
        count=int(count),
        min_id=_text(low) if low is not None else None,
        max_id=_text(high) if high is not None else None,
        consumers={_text(name): int(n) for name, n in consumers or ()},
    )


def parse_pending_entries(reply: Sequence[Any]) -> list[PendingEntry]:
    return [
        PendingEntry(id=_text(i), consumer=_text(c), idle_ms=int(idle), deliveries=int(n))
        for i, c, idle, n in reply or ()
    ]


# -- the shared half: each operation once, as steps that a driver runs -----------------
#
# Every operation is a generator that yields the steps it needs — a command (a list of
# arguments), a Read, a Handle or a Pause — and receives each step's result, or has its
# exception thrown in, at the yield. RedisStream runs the steps with blocking calls and
# AsyncRedisStream awaits them; what to send, how to parse, when to acknowledge, back
# off or re-create a group is decided here, once, for both.


@attrs.frozen
class Read:
    """XREAD, or XREADGROUP when ``group`` is set: the step that may block on the server."""

    name: str
    last_id: str
    count: int | None
    block: int | None
    group: str | None = None
    consumer: str | None = None

    def command(self) -> list[Any]:
        if self.group is None or self.consumer is None:
            return read_command(self.name, self.last_id, self.count, self.block)
        return readgroup_command(
            self.name, self.group, self.consumer, self.last_id, self.count, self.block
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
Step = list[Any] | Read | Handle | Pause
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
        return _text((yield xadd_command(self.name, data, self.maxlen)))

    def _read_steps(
        self, count: int | None, block: int | None, last_id: str | None
    ) -> Steps[list[Entry]]:
        start = self._read_from if last_id is None else last_id
        if start == "$":
            # "$" means "after the newest entry now". Pinned to that entry's id before
            # reading, so that the next read goes on from there even when this one
            # returns nothing: an entry added in between is returned then, not skipped.
            newest = yield ["XREVRANGE", self.name, "+", "-", "COUNT", 1]
            start = _text(newest[0][0]) if newest else "0-0"
        raw = parse_read((yield Read(self.name, start, count, block)))
        self._read_from = _text(raw[-1][0]) if raw else start
        return parse_entries(raw)

    def _length_steps(self) -> Steps[int]:
        return int((yield ["XLEN", self.name]))

    def _trim_steps(self, maxlen: int | None, minid: str | None, approximate: bool) -> Steps[int]:
        if (maxlen is None) == (minid is None):
            raise ValueError("trim: pass exactly one of maxlen= or minid=")
        strategy = ["MAXLEN", maxlen] if maxlen is not None else ["MINID", minid]
        op = ["~"] if approximate else []
        return int((yield ["XTRIM", self.name, strategy[0], *op, strategy[1]]))

    def _info_steps(self) -> Steps[dict[str, Any]]:
        info = reply_map((yield ["XINFO", "STREAM", self.name]))
        for key in ("first-entry", "last-entry"):
            if info.get(key):
                found = parse_entries([info[key]])
                info[key] = found[0] if found else None
        return info

    def _groups_steps(self) -> Steps[list[dict[str, Any]]]:
        return [reply_map(g) for g in (yield ["XINFO", "GROUPS", self.name])]

    def _create_group_steps(self, group: str, consumer: str, start_id: str) -> Steps[bool]:
        try:
            yield ["XGROUP", "CREATE", self.name, group, start_id, "MKSTREAM"]
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
            raw = parse_read((yield history))
            if not raw:
                self._history_from = None
                break
            self._history_from = _text(raw[-1][0])
            yield from self._acknowledge_steps(*deleted_ids(raw))
            entries = parse_entries(raw)
            if entries:
                return entries
        # Until the read returns, count on history: a read that fails or is cancelled
        # after it was sent may have delivered entries to this consumer that it never
        # returned, and the next call must pick them up.
        self._history_from = "0"
        reply = yield Read(self.name, ">", count, block, group, consumer)
        self._history_from = None
        return parse_entries(parse_read(reply))

    def _acknowledge_steps(self, *ids: str) -> Steps[int]:
        group, _ = self._group()
        if not ids:
            return 0
        return int((yield ["XACK", self.name, group, *ids]))

    def _pending_steps(self) -> Steps[PendingSummary]:
        group, _ = self._group()
        return parse_pending_summary((yield ["XPENDING", self.name, group]))

    def _pending_entries_steps(
        self, count: int, consumer: str | None, idle: int | None
    ) -> Steps[list[PendingEntry]]:
        group, _ = self._group()
        args: list[Any] = ["XPENDING", self.name, group]
        if idle is not None:
            args += ["IDLE", idle]
        args += ["-", "+", count]
        if consumer is not None:
            args.append(consumer)
        return parse_pending_entries((yield args))

    def _claim_idle_steps(self, min_idle_ms: int, count: int) -> Steps[list[Entry]]:
        group, consumer = self._group()
        claimed: list[Entry] = []
        start = "0-0"
        while len(claimed) < count:
            command = autoclaim_command(
                self.name, group, consumer, min_idle_ms, start, count - len(claimed)
            )
            reply = yield command
            # Redis 6.2 returns entries trimmed while pending as nil: acknowledge them.
            yield from self._acknowledge_steps(*deleted_ids(reply[1]))
            start, entries = parse_autoclaim(reply)
            claimed += entries
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


# -- the sync half -------------------------------------------------------------------


class RedisStream(StreamOperations):
    """One Redis stream, optionally read through a consumer group.

    ``maxlen`` caps the stream on every :meth:`add` (``MAXLEN ~``: Redis trims whole
    nodes, so the length hovers a little above it). A stream instance belongs to one
    consumer and is not meant to be shared between threads; the client is.
    """

    def __init__(
        self, name: str, client: RedisClient | None = None, maxlen: int | None = None
    ) -> None:
        super().__init__(name, maxlen)
        client = asynclib.given_client(client, RedisClient, type(self).__name__)
        self.client = client if client is not None else RedisClient()

    def _run(
        self,
        steps: Steps[T],
        handler: Callable[[Entry], object] | None = None,
        stop: threading.Event | None = None,
    ) -> T:
        runner = StepRunner(steps)
        while (step := runner.next_step()) is not None:
            with runner.outcome():
                runner.reply = self._perform(step, handler, stop)
        return runner.result

    def _perform(
        self, step: Step, handler: Callable[[Entry], object] | None, stop: threading.Event | None
    ) -> Any:
        if isinstance(step, Handle):
            assert handler is not None
            return handler(step.entry)
        if isinstance(step, Pause):
            assert stop is not None
            return stop.wait(step.seconds)
        args = step.command() if isinstance(step, Read) else step
        return self.client.execute_command(*args)

    # -- writing and plain reading ---------------------------------------------------

    def add(self, data: Mapping[str, Any]) -> str:
        """Append an entry; its id (``"<ms>-<seq>"``)."""
        return self._run(self._add_steps(data))

    def read(
        self, count: int | None = None, block: int | None = None, last_id: str | None = None
    ) -> list[Entry]:
        """Up to ``count`` entries after the last one this object returned, oldest first.

        The stream object is a cursor, so a polling loop (``while True:
        stream.read(count=10, block=1000)``) gets every entry once and, when there is
        nothing new, waits up to ``block`` milliseconds instead of spinning. The first
        call starts at the beginning of the stream (``"0"``), as a new consumer group
        does, so that a reader started after its producer does not skip what was
        already written.

        ``last_id`` reads after that id instead, and the following calls go on from
        there: ``"0"`` reads again from the start, ``"$"`` only entries added from now
        on (the upstream library's default). Plain reading ignores consumer groups and
        acknowledges nothing.
        """
        return self._run(self._read_steps(count, block, last_id))

    def length(self) -> int:
        """How many entries the stream holds (0 when it does not exist)."""
        return self._run(self._length_steps())

    def trim(
        self, maxlen: int | None = None, *, minid: str | None = None, approximate: bool = True
    ) -> int:
        """Drop old entries beyond ``maxlen``, or older than id ``minid``; how many went.

        ``approximate=True`` (``~``) lets Redis trim whole nodes only, which is much
        cheaper and may leave a few more entries than asked.
        """
        return self._run(self._trim_steps(maxlen, minid, approximate))

    def info(self) -> dict[str, Any]:
        """XINFO STREAM as a dict; ``first-entry``/``last-entry`` as entry dicts."""
        return self._run(self._info_steps())

    def groups(self) -> list[dict[str, Any]]:
        """XINFO GROUPS: one dict per group (name, consumers, pending, last-delivered-id...)."""
        return self._run(self._groups_steps())

    # -- consumer groups -------------------------------------------------------------

    def create_consumer_group(self, group: str, consumer: str, start_id: str = "0") -> bool:
        """Create ``group`` (and the stream, if missing) and read as ``consumer`` from now on.

        The default ``start_id="0"`` makes a new group see the entries already in the
        stream: a producer that runs first does not lose its work to a consumer that
        starts later. Pass ``"$"`` for a group that only sees entries added after it
        was created. Creating a group that exists is not an error (BUSYGROUP is
        success) and leaves its position alone. No dummy entry is ever written.

        Returns True, as the upstream library did on success, so that its idiom ``if
        not stream.create_consumer_group(...)`` keeps working; a failure raises
        instead of returning False.
        """
        return self._run(self._create_group_steps(group, consumer, start_id))

    def read_group(self, count: int = 10, block: int | None = None) -> list[Entry]:
        """Entries for this consumer: first its own unacknowledged history, then new ones.

        The first calls after :meth:`create_consumer_group` return entries this
        consumer name was given before and never acknowledged (a restarted worker
        resumes its work); once that history is read, calls return entries never
        delivered to anyone, waiting up to ``block`` milliseconds for one. History
        entries trimmed away while pending are acknowledged and skipped. A read that
        failed (the connection broke) may have delivered entries it could not return,
        so the next call reads this consumer's history again first.
        """
        return self._run(self._read_group_steps(count, block))

    def acknowledge(self, *ids: str) -> int:
        """Mark entries as done for this group; how many were pending."""
        return self._run(self._acknowledge_steps(*ids))

    def pending(self) -> PendingSummary:
        """How many entries the group has delivered and not yet had acknowledged."""
        return self._run(self._pending_steps())

    def pending_entries(
        self, count: int = 100, consumer: str | None = None, idle: int | None = None
    ) -> list[PendingEntry]:
        """Up to ``count`` pending entries, oldest first, of one consumer or all,
        idle at least ``idle`` milliseconds when given."""
        return self._run(self._pending_entries_steps(count, consumer, idle))

    def claim_idle(self, min_idle_ms: int, count: int = 10) -> list[Entry]:
        """Take over up to ``count`` entries pending longer than ``min_idle_ms`` (XAUTOCLAIM).

        This is how the work of a consumer that died is picked up: its entries stay
        pending under its name until another consumer claims them. Claimed entries
        count as delivered again and must be acknowledged as usual.
        """
        return self._run(self._claim_idle_steps(min_idle_ms, count))

    # -- the processing loop ---------------------------------------------------------

    def process(
        self,
        handler: Callable[[Entry], object],
        *,
        count: int = 10,
        block: int = 2000,
        stop_event: threading.Event | None = None,
        max_messages: int | None = None,
        claim_idle_ms: int | None = None,
    ) -> int:
        """Read, handle and acknowledge entries until stopped; how many were acknowledged.

        ``handler(entry)`` is called once per entry, in order; the entry is
        acknowledged only if the handler returns. One that raises is logged (logger
        ``ailf.stream``) and stays pending, and the loop backs off
        (``config.retry`` delays) before reading on. With ``claim_idle_ms`` the loop
        also claims entries pending longer than that, including its own failed ones,
        which is how they are retried.

        The loop survives the server going away: connection errors and timeouts are
        logged and retried after a backoff, and a group lost with the server's data
        (NOGROUP) is re-created at ``"0"``, so entries written after the loss are
        read. It never spins: every failure is followed by a growing pause, capped at
        ``retry.backoff_max``; ``retry.attempts`` does not limit it (a worker exists
        to keep working). Wrong credentials and other error replies are raised.

        It returns when ``stop_event`` is set (checked between reads, so within
        ``block`` milliseconds) or after ``max_messages`` entries were handled.
        """
        stop = stop_event if stop_event is not None else threading.Event()
        steps = self._process_steps(
            handler, self.client.config.retry, count, block, stop, max_messages, claim_idle_ms
        )
        return self._run(steps, handler, stop)


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


# -- the async half ------------------------------------------------------------------


class AsyncRedisStream(StreamOperations, OwnedClient):
    """:class:`RedisStream` on an :class:`~ailf.clients._async_client.AsyncRedisClient`.

    The same methods, arguments and return values, awaited; under trio or asyncio,
    whichever the client runs on. Every method sends exactly the commands its sync
    twin sends and reads the replies the same way, because both run one set of steps.

    Without a client, the stream makes its own from ``AILF_REDIS_URL`` and owns it:
    ``async with AsyncRedisStream("tasks") as stream:`` opens it (under trio, with the
    shared pipelined connection) and closes it at the end. A client passed in is the
    caller's to close. Blocking reads (``block=``) wait on a dedicated connection of
    the client's pool, so they never hold up other tasks' commands.

    Cancellation: a cancelled call may still have run on the server (see the client's
    contract). A cancelled :meth:`read_group` may have delivered entries to this
    consumer that it never returned; they stay pending, and the next
    :meth:`read_group` reads this consumer's history first to return them.
    """

    def __init__(
        self, name: str, client: AsyncRedisClient | None = None, maxlen: int | None = None
    ) -> None:
        StreamOperations.__init__(self, name, maxlen)
        OwnedClient.__init__(self, client)

    async def _run(
        self,
        steps: Steps[T],
        handler: Callable[[Entry], object] | None = None,
        stop: asynclib.Event | None = None,
    ) -> T:
        runner = StepRunner(steps)
        while (step := runner.next_step()) is not None:
            with runner.outcome():
                runner.reply = await self._perform(step, handler, stop)
        return runner.result

    async def _perform(
        self, step: Step, handler: Callable[[Entry], object] | None, stop: asynclib.Event | None
    ) -> Any:
        if isinstance(step, Handle):
            assert handler is not None
            result = handler(step.entry)
            return await result if inspect.isawaitable(result) else result
        if isinstance(step, Pause):
            return await asynclib.pause(step.seconds, stop)
        # The client recognises XREAD(GROUP) with BLOCK and gives it a connection of
        # its own, so a blocking read never holds up other tasks' commands.
        args = step.command() if isinstance(step, Read) else step
        return await self.client.execute_command(*args)

    # -- writing and plain reading ---------------------------------------------------

    async def add(self, data: Mapping[str, Any]) -> str:
        """Append an entry; its id. See :meth:`RedisStream.add`."""
        return await self._run(self._add_steps(data))

    async def read(
        self, count: int | None = None, block: int | None = None, last_id: str | None = None
    ) -> list[Entry]:
        """Entries after the last one this object returned (or after ``last_id``), without
        a group; see :meth:`RedisStream.read`. One task at a time reads through an object:
        the position is the object's."""
        return await self._run(self._read_steps(count, block, last_id))

    async def length(self) -> int:
        """How many entries the stream holds (0 when it does not exist)."""
        return await self._run(self._length_steps())

    async def trim(
        self, maxlen: int | None = None, *, minid: str | None = None, approximate: bool = True
    ) -> int:
        """Drop old entries; how many went. See :meth:`RedisStream.trim`."""
        return await self._run(self._trim_steps(maxlen, minid, approximate))

    async def info(self) -> dict[str, Any]:
        """XINFO STREAM as a dict; ``first-entry``/``last-entry`` as entry dicts."""
        return await self._run(self._info_steps())

    async def groups(self) -> list[dict[str, Any]]:
        """XINFO GROUPS: one dict per group."""
        return await self._run(self._groups_steps())

    # -- consumer groups -------------------------------------------------------------

    async def create_consumer_group(self, group: str, consumer: str, start_id: str = "0") -> bool:
        """Create the group (MKSTREAM, BUSYGROUP is success) and read as ``consumer``; True.

        See :meth:`RedisStream.create_consumer_group`.
        """
        return await self._run(self._create_group_steps(group, consumer, start_id))

    async def read_group(self, count: int = 10, block: int | None = None) -> list[Entry]:
        """This consumer's unacknowledged history first, then new entries.

        See :meth:`RedisStream.read_group`.
        """
        return await self._run(self._read_group_steps(count, block))

    async def acknowledge(self, *ids: str) -> int:
        """Mark entries as done for this group; how many were pending."""
        return await self._run(self._acknowledge_steps(*ids))

    async def pending(self) -> PendingSummary:
        """The group's pending entries in brief."""
        return await self._run(self._pending_steps())

    async def pending_entries(
        self, count: int = 100, consumer: str | None = None, idle: int | None = None
    ) -> list[PendingEntry]:
        """Pending entries one by one. See :meth:`RedisStream.pending_entries`."""
        return await self._run(self._pending_entries_steps(count, consumer, idle))

    async def claim_idle(self, min_idle_ms: int, count: int = 10) -> list[Entry]:
        """Take over idle entries of others. See :meth:`RedisStream.claim_idle`."""
        return await self._run(self._claim_idle_steps(min_idle_ms, count))

    # -- the processing loop ---------------------------------------------------------

    async def process(
        self,
        handler: Callable[[Entry], object],
        *,
        count: int = 10,
        block: int = 2000,
        stop_event: asynclib.Event | None = None,
        max_messages: int | None = None,
        claim_idle_ms: int | None = None,
    ) -> int:
        """Read, handle and acknowledge entries until stopped; how many were acknowledged.

        :meth:`RedisStream.process`, awaited: the same acknowledging, logging, backoff
        and group re-creation. ``handler`` may be a plain function or an ``async def``
        (awaited before the next entry). ``stop_event`` is a ``trio.Event`` or an
        ``asyncio.Event``: it is checked between reads (so within ``block`` ms) and
        cuts a backoff pause short.

        Cancelling the call is the other way to stop, and the trio way: the loop ends
        at once, with ``Cancelled``. Entries of the current batch whose handler
        finished but whose acknowledgement was not sent yet stay pending, and are
        delivered again (to this consumer on its next start, or to a claimer): the
        loop is at-least-once.
        """
        steps = self._process_steps(
            handler,
            self.client.config.retry,
            count,
            block,
            stop_event,
            max_messages,
            claim_idle_ms,
        )
        return await self._run(steps, handler, stop_event)

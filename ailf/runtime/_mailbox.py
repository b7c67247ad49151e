"""Reading mailboxes: batched consumer-group reads, acks, retries, claims, dead letters.

A process reads every mailbox it hosts through a few :class:`MailboxReader` loops, not
one per agent: an XREADGROUP names one group and one consumer for all its streams, so
all mailboxes share the group :data:`~ailf.runtime._keys.GROUP`, and reader number *k*
of a process (consumer ``{process}/{k}``) reads for the *k*-th local replica of every
agent. One reader therefore serves 10,000 single-replica agents on one connection.

Each reader loop, in turn: redelivers failed messages whose backoff has passed
(XCLAIM to itself, which bumps Redis's delivery counter), claims entries idle longer
than ``claim_idle`` from other consumers (XAUTOCLAIM) and keeps its own held entries
fresh so that live replicas do not steal them, trims and tidies now and then, and then
blocks in one XREADGROUP on the mailboxes whose instances have room (``>``), or on
their own pending entries (``0``) after a start, a restart or a lost connection.
A private *wake* stream is part of every read, so that a new agent, a retry coming
due or a mailbox with room again interrupts a blocked read without cancelling it (a
cancelled read may still have delivered entries, and costs a connection).

Acks are batched: handled ids collect in :class:`Acker` and go out as one XACK per
stream while the next handlers run.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import random
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.errors import (
    ConfigError,
    DecodeError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
)
from ailf.runtime._keys import GROUP

if TYPE_CHECKING:
    from ailf.runtime._cell import Cell

__all__ = ["Acker", "Binding", "Delivery", "MailboxReader", "MailboxSettings"]

log = logging.getLogger("ailf.runtime")


@attrs.frozen
class MailboxSettings:
    """How mailboxes are read and bounded (``Runtime`` keyword arguments of the same names).

    Validated on construction: a bad value raises :class:`ConfigError` naming it.
    """

    batch_size: int = attrs.field(default=128, validator=lambda i, a, v: _count(a, v))
    mailbox_maxlen: int | None = attrs.field(
        default=100_000, validator=lambda i, a, v: v is None or _count(a, v)
    )
    dead_letter_maxlen: int = attrs.field(default=10_000, validator=lambda i, a, v: _count(a, v))
    max_message_size: int = attrs.field(default=1 << 20, validator=lambda i, a, v: _count(a, v))
    retry_backoff: float = attrs.field(default=0.1, validator=lambda i, a, v: _seconds(a, v))
    retry_backoff_max: float = attrs.field(default=5.0, validator=lambda i, a, v: _seconds(a, v))
    max_block: float = attrs.field(default=2.0, validator=lambda i, a, v: _seconds(a, v))
    stale_consumer_after: float = attrs.field(
        default=60.0, validator=lambda i, a, v: _seconds(a, v)
    )


def check_setting(name: str, value: Any, *, integer: bool = False) -> None:
    """Reject a Runtime setting that is not a positive number (integer if asked)."""
    allowed = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or value <= 0:
        expected = "an integer >= 1" if integer else "a number > 0"
        raise ConfigError(f"Runtime {name}: expected {expected}, got {value!r}")


def _count(attribute: attrs.Attribute, value: Any) -> None:
    check_setting(attribute.name, value, integer=True)


def _seconds(attribute: attrs.Attribute, value: Any) -> None:
    check_setting(attribute.name, value)


@attrs.define(eq=False)
class Binding:
    """One agent instance's hold on its mailbox, through one reader (consumer)."""

    stream: str
    agent: str
    cell: Cell
    claim_idle: float
    backlog: bool = True
    backlog_from: str = "0"
    claim_cursor: str = "0-0"
    next_maintenance: float = 0.0
    #: Entry ids held here (queued, being handled, waiting for a retry) -> since when.
    held: dict[str, float] = attrs.field(factory=dict)
    retrying: set[str] = attrs.field(factory=set)
    active: bool = True
    #: Why the mailbox cannot be read (its key is not a stream), or None.
    problem: str | None = None


@attrs.frozen
class Delivery:
    """A mailbox entry handed to an instance, with Redis's delivery count."""

    binding: Binding
    id: str
    fields: dict[str, Any]
    delivery_count: int


_warned: dict[str, int] = {}

#: How many failed dead-letter writes a reader remembers the reasons of.
_UNWRITTEN_LIMIT = 1024


async def check_unread_trimmed(client: AsyncRedisClient, stream: str) -> dict[str, Any] | None:
    """Warn if entries of ``stream`` were removed before the group read them; returns the
    group's XINFO GROUPS record (None if there is no group).

    Senders cap mailboxes with MAXLEN, which drops the oldest entries, read or not. The
    stream counts every entry ever added and the group counts what it has read, so
    ``added - length > read`` means unread entries went. Redis can count only while the
    gap lasts (reading past it re-estimates the group's counter): the runtime checks when
    an agent is spawned (a mailbox flooded while no agent ran) and at each upkeep (replicas
    lagging behind), and warns once per growth of the loss.
    """
    groups = await client.xinfo_groups(stream)
    group = next((g for g in groups if g.get("name") == GROUP), None)
    if group is None:
        return None
    info = await client.xinfo_stream(stream)
    removed = int(info.get("entries-added") or 0) - int(info.get("length") or 0)
    read = group.get("entries-read")
    if group["last-delivered-id"] == "0-0":
        lost = removed
    elif read is not None:
        lost = removed - int(read)
    else:
        lost = 0
    report_unread_trimmed(stream, lost)
    return group


def report_unread_trimmed(stream: str, lost: int) -> None:
    """Log ``lost`` entries of ``stream`` gone unread, once per growth of the loss."""
    if lost > _warned.get(stream, 0):
        _warned[stream] = lost
        log.warning(
            "mailbox %s: about %d entries were trimmed or deleted before any replica read"
            " them; raise mailbox_maxlen or add replicas",
            stream,
            lost,
        )


async def _side_by_side(calls: list[Any]) -> None:
    """Run ``calls`` concurrently; the first RedisError or DecodeError any raised is
    raised once all finished, as itself rather than in an ExceptionGroup, so that the
    reader loop's handlers see it (a Redis outage must not end the reader)."""
    errors: list[RedisError | DecodeError] = []

    async def guarded(call: Any) -> None:
        try:
            await call()
        except (RedisError, DecodeError) as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(guarded, call)
    if errors:
        raise errors[0]


def _is_text(fields: dict[bytes, bytes]) -> bool:
    try:
        for key, value in fields.items():
            key.decode()
            value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _upkeep_interval(binding: Binding) -> float:
    """Seconds between trims and consumer clean-ups of one mailbox."""
    return max(1.0, 4 * binding.claim_idle)


def compare_ids(a: str, b: str) -> int:
    """-1, 0 or 1 as stream id ``a`` is before, equal to or after ``b``."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    left = (int(ams), int(aseq or 0))
    right = (int(bms), int(bseq or 0))
    return (left > right) - (left < right)


class Acker:
    """Collects handled entry ids and acknowledges them in batches, one XACK per stream.

    While one batch is on the wire the next one collects, so under load each XACK
    carries many ids and acking costs a fraction of a round trip per message. An ack
    that cannot be sent (Redis gone) is dropped after a few tries: the entry stays
    pending and is delivered again, which at-least-once delivery allows.
    """

    def __init__(self, client: AsyncRedisClient) -> None:
        self._client = client
        self._waiting: dict[str, list[str]] = {}
        self._sending: dict[str, list[str]] = {}
        self._wakeup = trio.Event()

    def ack(self, stream: str, entry_id: str) -> None:
        ids = self._waiting.get(stream)
        if ids is None:
            self._waiting[stream] = [entry_id]
            self._wakeup.set()
        else:
            ids.append(entry_id)

    def busy(self, stream: str) -> bool:
        """True while acks for ``stream`` are waiting or on the wire."""
        return stream in self._waiting or stream in self._sending

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Send everything collected so far (and what collects meanwhile)."""
        while self._waiting:
            self._sending, self._waiting = self._waiting, {}
            try:
                await self._send(self._sending)
            finally:
                self._sending = {}

    async def _send(self, batch: dict[str, list[str]]) -> None:
        for attempt in range(4):
            pipe = self._client.pipeline(transaction=False)
            for stream, ids in batch.items():
                pipe.xack(stream, GROUP, *ids)
            try:
                await pipe.execute(raise_on_error=False)
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if attempt == 3:
                    count = sum(len(ids) for ids in batch.values())
                    log.warning("dropped %d acks (they will be redelivered): %s", count, exc)
                    return
                await trio.sleep(0.05 * 2**attempt)


class MailboxReader:
    """One consumer of a process: reads, claims and retries for every mailbox bound to it."""

    def __init__(
        self,
        client: AsyncRedisClient,
        acker: Acker,
        settings: MailboxSettings,
        consumer: str,
        wake_key: str,
    ) -> None:
        self.client = client
        self.acker = acker
        self.settings = settings
        self.consumer = consumer
        self.wake_key = wake_key
        self.bindings: dict[str, Binding] = {}
        self._changed = trio.Event()
        self._in_redis = False
        self._rung = False
        self._retries: list[tuple[float, int, Binding, Delivery, float]] = []
        self._sequence = itertools.count()
        self._nursery: trio.Nursery | None = None
        self._failures = 0
        self._seen: set[str] = set()
        self._quiet_wake = False
        self._full: set[str] = set()
        self._claims: list[tuple[float, int, Binding]] = []
        #: The ``streams`` argument of the next XREADGROUP; None when it must be rebuilt.
        self._streams: dict[str, str] | None = None
        self._backlog = False
        #: Whether the wake stream's group exists (a full Redis refuses to create it).
        self._wake = False
        self._wake_retry = 0.0
        #: (stream, entry id) -> why it was given up, for entries whose dead letter
        #: could not be written; bounded, oldest forgotten first.
        self.unwritten: dict[tuple[str, str], dict[str, str]] = {}

    # -- called by instances (synchronous, never blocking) --------------------------

    def bind(self, binding: Binding) -> None:
        """Start reading ``binding``'s mailbox.

        The first time a stream is bound, this consumer (unique to the runtime) has
        nothing pending there, so reading starts at ``>``; a re-bound stream (a
        restarted instance) first re-reads its pending entries. First claims and upkeep
        are spread over a claim period, so that spawning many agents at once does not
        send a burst of XAUTOCLAIMs.
        """
        now = trio.current_time()
        if binding.stream not in self._seen:
            self._seen.add(binding.stream)
            binding.backlog = False
        binding.next_maintenance = now + random.uniform(1, 2) * _upkeep_interval(binding)
        self._schedule_claim(binding, now + random.uniform(0, binding.claim_idle / 2))
        self.bindings[binding.stream] = binding
        self._streams = None
        self.poke()

    def unbind(self, binding: Binding) -> None:
        binding.active = False
        if self.bindings.get(binding.stream) is binding:
            del self.bindings[binding.stream]
            self._full.discard(binding.stream)
            self._streams = None

    def set_full(self, binding: Binding, full: bool) -> None:
        """An instance's queue is full (stop reading its mailbox) or has room again."""
        if full:
            self._full.add(binding.stream)
        else:
            self._full.discard(binding.stream)
            self.poke()
        self._streams = None

    def schedule_retry(self, delivery: Delivery) -> float:
        """Deliver ``delivery`` again after a backoff; returns the backoff in seconds."""
        binding = delivery.binding
        settings = self.settings
        delay = min(
            settings.retry_backoff * 2 ** (delivery.delivery_count - 1),
            settings.retry_backoff_max,
            binding.claim_idle / 2,
        )
        binding.retrying.add(delivery.id)
        due = trio.current_time() + delay
        heapq.heappush(self._retries, (due, next(self._sequence), binding, delivery, delay))
        self.poke()
        return delay

    def remember_unwritten(self, stream: str, entry_id: str, why: dict[str, str]) -> None:
        """Keep why an entry was given up while its dead letter cannot be written."""
        self.unwritten[(stream, entry_id)] = why
        if len(self.unwritten) > _UNWRITTEN_LIMIT:
            del self.unwritten[next(iter(self.unwritten))]

    def retries_pending(self, stream: str) -> bool:
        return any(item[2].stream == stream for item in self._retries)

    def poke(self) -> None:
        """Make the loop look again at its mailboxes, retries and room (debounced)."""
        self._changed.set()
        if self._in_redis and self._wake and not self._rung and self._nursery is not None:
            self._rung = True
            self._nursery.start_soon(self._ring)

    async def _ring(self) -> None:
        try:
            await self.client.xadd(self.wake_key, {"w": "1"}, maxlen=16, approximate=False)
        except RedisError as exc:
            log.debug("could not wake reader %s: %s", self.consumer, exc)

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._create_wake()
            task_status.started()
            recreate = unreadable = False
            while True:
                try:
                    if recreate:
                        await self._recreate_groups()
                        recreate = False
                    if unreadable:
                        await self._set_aside_unreadable()
                        unreadable = False
                    await self._step()
                    if self._failures:
                        log.info(
                            "mailbox reader %s: reading again after %d failed attempts",
                            self.consumer,
                            self._failures,
                        )
                        self._failures = 0
                except DecodeError as exc:  # an entry that is not UTF-8 text
                    unreadable = True
                    await self._backoff(f"{exc}; dead-lettering the entries that are not text")
                except ResponseError as exc:
                    if exc.code == "WRONGTYPE" and await self._set_aside_wrong_types():
                        continue
                    recreate = exc.code == "NOGROUP"
                    why = "consumer group missing, re-creating it" if recreate else "error reply"
                    await self._backoff(f"{why} ({exc})")
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    await self._backoff(f"Redis unreachable ({exc})")
                    for binding in self.bindings.values():
                        binding.backlog, binding.backlog_from = True, "0"
                    self._streams = None

    async def _backoff(self, why: str) -> None:
        delay = min(self.settings.max_block, 0.05 * 2**self._failures)
        self._failures += 1
        log.warning("mailbox reader %s: %s; retrying in %.2f s", self.consumer, why, delay)
        await trio.sleep(delay)

    async def _set_aside_unreadable(self) -> None:
        """Dead-letter this consumer's pending entries that are not UTF-8 text.

        The shared client decodes every reply as UTF-8, so one entry holding other bytes
        (a pickle, say) fails a whole read — after Redis delivered it, so it is pending
        here, and re-reading would fail again. Read the pending entries once more
        through a client that does not decode, dead-letter (and acknowledge) those that
        are not text, and let the normal read re-read the rest. Rare, so the extra
        connection lives only as long as this.
        """
        config = self.client.config.replace(decode_responses=False)
        async with AsyncRedisClient(config) as raw:
            for binding in list(self.bindings.values()):
                cursor: Any = "0"
                while True:
                    reply = await raw.xreadgroup(
                        GROUP,
                        self.consumer,
                        {binding.stream: cursor},
                        count=self.settings.batch_size,
                    )
                    entries = reply[0][1] if reply else []
                    for entry_id, fields in entries:
                        if fields is None or _is_text(fields):
                            continue
                        text = {
                            k.decode(errors="backslashreplace"): v.decode(errors="backslashreplace")
                            for k, v in fields.items()
                        }
                        delivery = Delivery(binding, entry_id.decode(), text, 1)
                        if await binding.cell.dead_letter(
                            delivery, "undecodable: the entry is not UTF-8 text"
                        ):  # and out of the mailbox, where it would trip up other readers
                            await raw.xdel(binding.stream, entry_id)
                    if len(entries) < self.settings.batch_size:
                        break
                    cursor = entries[-1][0]
        for binding in self.bindings.values():
            binding.backlog, binding.backlog_from = True, "0"
        self._streams = None

    async def _set_aside_wrong_types(self) -> bool:
        """Stop reading mailboxes whose key is not a stream; True if any was found.

        One XREADGROUP reads every mailbox of this reader, and Redis fails all of it
        (WRONGTYPE) if one key holds something else — a ``SET`` on a mailbox key by
        mistake or malice. So find those keys (one TYPE each, in one round trip), read
        on without them, and look at them again at each claim period: once the key is
        deleted or a stream again, the mailbox is read again. The problem is logged, and
        shown in the registry (``ailf status``) until then.
        """
        streams = [self.wake_key, *self.bindings]
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.type(stream)
        found = False
        for stream, kind in zip(streams, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(kind, str) and kind not in ("stream", "none"):
                found = True
                if stream == self.wake_key:
                    await self._create_wake()
                    continue
                binding = self.bindings[stream]
                binding.problem = f"its key holds a {kind}, not a stream"
                log.error(
                    "mailbox %s: %s; agent %r reads nothing from it until the key is deleted"
                    " (DEL %s) or holds a stream again",
                    stream,
                    binding.problem,
                    binding.agent,
                    stream,
                )
        self._streams = None
        return found

    async def _check_repaired(self, binding: Binding) -> None:
        """Read a set-aside mailbox again once its key is a stream (or gone)."""
        kind = await self.client.type(binding.stream)
        if kind not in ("stream", "none"):
            return
        await self._create_group(binding.stream)
        binding.problem = None
        binding.backlog, binding.backlog_from = True, "0"
        binding.claim_cursor = "0-0"
        self._streams = None
        log.warning("mailbox %s: its key is a stream again; reading it", binding.stream)

    def problems(self) -> dict[str, str]:
        """Agent name -> why its mailbox is not read, for the mailboxes set aside."""
        return {b.agent: b.problem for b in self.bindings.values() if b.problem is not None}

    async def _create_group(self, stream: str) -> None:
        try:
            await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if exc.code != "BUSYGROUP":
                raise

    async def _create_wake(self) -> None:
        """Create the wake stream's group.

        A Redis out of memory (noeviction) refuses that — while it still serves reads
        and acks, which is how it drains — so read without the wake stream meanwhile (a
        blocked read then lasts up to ``max_block`` instead of ending at a change) and
        try again after ``max_block``. The wake stream is this reader's own: if its key
        holds something else (WRONGTYPE), it is deleted and made again.
        """
        try:
            try:
                await self._create_group(self.wake_key)
            except ResponseError as exc:
                if exc.code != "WRONGTYPE":
                    raise
                log.warning("mailbox reader %s: %s; deleting the key", self.consumer, exc)
                await self.client.delete(self.wake_key)
                await self._create_group(self.wake_key)
        except ResponseError as exc:
            if exc.code != "OOM":
                raise
            if not self._wake_retry:
                log.warning(
                    "mailbox reader %s: Redis is out of memory (%s); reading on, without"
                    " wake-ups, until it has room again",
                    self.consumer,
                    exc,
                )
            self._wake = False
            self._wake_retry = trio.current_time() + self.settings.max_block
        else:
            self._wake, self._wake_retry = True, 0.0
        self._streams = None

    async def _recreate_groups(self) -> None:
        await self._create_wake()
        streams = [b.stream for b in self.bindings.values() if b.problem is None]
        try:
            await _side_by_side([functools.partial(self._create_group, s) for s in streams])
        except ResponseError as exc:  # the others were created all the same
            if exc.code != "WRONGTYPE" or not await self._set_aside_wrong_types():
                raise
        for binding in self.bindings.values():
            binding.backlog, binding.backlog_from = True, "0"
            binding.claim_cursor = "0-0"
        self._streams = None

    async def _step(self) -> None:
        # A read naming N mailboxes costs Redis O(N) (about 1.4 ms for 10,000) even when
        # few have entries. With many mailboxes, pause a little between reads so that
        # each one finds more to return; after a wake-up for a change of mailboxes, not
        # for messages, pause longer so that a burst of changes (spawning many agents)
        # settles. Below a thousand mailboxes there is no pause at all.
        mailboxes = len(self.bindings)
        if self._quiet_wake:
            self._quiet_wake = False
            await trio.sleep(min(0.05, mailboxes * 2e-6))
        elif mailboxes >= 1000:
            await trio.sleep(min(0.005, mailboxes * 1e-7))
        now = trio.current_time()
        await self._due_work(now)
        if not self._wake and now >= self._wake_retry:
            await self._create_wake()
        self._changed = trio.Event()
        streams = self._streams
        if streams is None:
            streams = self._streams = self._build_streams()
        if streams.keys() <= {self.wake_key}:  # nothing to read, or no room: wait here
            with trio.move_on_at(self._next_due(now)):
                await self._changed.wait()
            return
        block = None
        if not self._backlog:
            block = max(1, int((self._next_due(now) - now) * 1000))
        self._in_redis = block is not None
        try:
            reply = await self.client.xreadgroup(
                GROUP, self.consumer, streams, count=self.settings.batch_size, block=block
            )
        finally:
            self._in_redis = self._rung = False
        await self._dispatch(reply)

    def _build_streams(self) -> dict[str, str]:
        streams = {self.wake_key: ">"} if self._wake else {}
        self._backlog = False
        full = self._full
        for stream, binding in self.bindings.items():
            if stream in full or binding.problem is not None:
                continue
            if binding.backlog:
                self._backlog = True
                streams[stream] = binding.backlog_from
            else:
                streams[stream] = ">"
        return streams

    def _next_due(self, now: float) -> float:
        due = now + self.settings.max_block
        if self._retries:
            due = min(due, self._retries[0][0])
        if self._claims:
            due = min(due, self._claims[0][0])
        return max(due, now + 0.001)

    async def _dispatch(self, reply: list[Any]) -> None:
        now = trio.current_time()
        self._quiet_wake = bool(reply) and all(stream == self.wake_key for stream, _ in reply)
        for stream, entries in reply:
            if stream == self.wake_key:
                for entry_id, _ in entries:
                    self.acker.ack(stream, entry_id)
                continue
            binding = self.bindings.get(stream)
            if binding is None:
                continue  # unbound meanwhile: the entries stay pending for a claim
            if binding.backlog:
                self._streams = None
                if len(entries) < self.settings.batch_size:
                    binding.backlog = False
                else:
                    binding.backlog_from = entries[-1][0]
                await self._deliver(binding, entries, now, await self._counts(binding, entries))
            else:
                await self._deliver(binding, entries, now, None)

    async def _counts(self, binding: Binding, entries: list[Any]) -> dict[str, int]:
        """Redis's delivery counts of entries re-read or claimed (one XPENDING)."""
        if not entries:
            return {}
        rows = await self.client.xpending_range(
            binding.stream,
            GROUP,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries),
            consumername=self.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def _deliver(
        self, binding: Binding, entries: list[Any], now: float, counts: dict[str, int] | None
    ) -> None:
        cell = binding.cell
        held = binding.held
        for entry_id, fields in entries:
            if fields is None:  # deleted (trimmed) while pending: nothing left to handle
                self.acker.ack(binding.stream, entry_id)
                continue
            if entry_id in held or not binding.active:
                continue
            held[entry_id] = now
            count = 1 if counts is None else counts.get(entry_id, 1)
            cell.deliver(Delivery(binding, entry_id, fields, count))

    # -- retries, claims, upkeep ------------------------------------------------------

    async def _due_work(self, now: float) -> None:
        retries = []
        while self._retries and self._retries[0][0] <= now:
            retries.append(heapq.heappop(self._retries))
        claims = []
        while self._claims and self._claims[0][0] <= now:
            _, _, binding = heapq.heappop(self._claims)
            if binding.active and self.bindings.get(binding.stream) is binding:
                claims.append(binding)
                self._schedule_claim(binding, now + max(binding.claim_idle / 2, 0.05))
        if not retries and not claims:
            return
        await _side_by_side(
            [functools.partial(self._retry, b, d, delay) for _, _, b, d, delay in retries]
            + [functools.partial(self._claim, binding, now) for binding in claims]
        )

    def _schedule_claim(self, binding: Binding, when: float) -> None:
        # Rounded up to a tenth of claim_idle, so that the claims of many mailboxes fall
        # due together and wake the loop (and re-issue its read) a few times per claim
        # period, not once per mailbox.
        tick = max(0.05, binding.claim_idle / 10)
        heapq.heappush(self._claims, (math.ceil(when / tick) * tick, next(self._sequence), binding))

    async def _retry(self, binding: Binding, delivery: Delivery, delay: float) -> None:
        binding.retrying.discard(delivery.id)
        if not binding.active:
            return
        # min-idle: if another replica claimed the entry meanwhile, leave it to that one.
        try:
            entries = await self.client.xclaim(
                binding.stream, GROUP, self.consumer, int(delay * 900), [delivery.id]
            )
        except RedisError:
            self.schedule_retry(delivery)  # still held here: try again once Redis is back
            raise
        if not entries or entries[0][1] is None:
            binding.held.pop(delivery.id, None)
            return
        entry_id, fields = entries[0]
        binding.cell.deliver(Delivery(binding, entry_id, fields, delivery.delivery_count + 1))

    async def _claim(self, binding: Binding, now: float) -> None:
        if binding.problem is not None:
            await self._check_repaired(binding)
            return
        stream = binding.stream
        idle_ms = int(binding.claim_idle * 1000)
        fresh_before = now - binding.claim_idle / 3
        stale = [
            entry_id
            for entry_id, since in binding.held.items()
            if since < fresh_before and entry_id not in binding.retrying
        ]
        if stale:  # reset their idle time so that other replicas leave them alone
            await self.client.xclaim(stream, GROUP, self.consumer, 0, stale, justid=True)
            for entry_id in stale:
                if entry_id in binding.held:
                    binding.held[entry_id] = now
        cursor, entries, _deleted = await self.client.xautoclaim(
            stream,
            GROUP,
            self.consumer,
            idle_ms,
            start_id=binding.claim_cursor,
            count=self.settings.batch_size,
        )
        binding.claim_cursor = cursor
        fresh = [(entry_id, fields) for entry_id, fields in entries if entry_id not in binding.held]
        if fresh:
            log.info(
                "mailbox %s: claimed %d entries idle over %.1f s from other consumers",
                stream,
                len(fresh),
                binding.claim_idle,
            )
            await self._deliver(binding, fresh, now, await self._counts(binding, fresh))
        if binding.next_maintenance <= now:
            binding.next_maintenance = now + _upkeep_interval(binding)
            await self._upkeep(binding)

    async def _upkeep(self, binding: Binding) -> None:
        """Trim what every replica has acknowledged, warn about entries trimmed unread,
        and delete consumers that are long idle and hold nothing."""
        stream = binding.stream
        group = await check_unread_trimmed(self.client, stream)
        if group is None:
            return
        safe = group["last-delivered-id"]
        if group.get("pending"):
            summary = await self.client.xpending(stream, GROUP)
            if summary.get("min"):
                safe = summary["min"]
        await self.client.xtrim(stream, minid=safe, approximate=True)
        stale_ms = self.settings.stale_consumer_after * 1000
        for consumer in await self.client.xinfo_consumers(stream, GROUP):
            name = consumer.get("name")
            if name == self.consumer or consumer.get("pending") or consumer["idle"] < stale_ms:
                continue
            await self.client.xgroup_delconsumer(stream, GROUP, name)
            log.info("mailbox %s: deleted idle consumer %s (nothing pending)", stream, name)

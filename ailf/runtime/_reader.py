"""Reading mailboxes: doorbells, batched consumer-group reads, redeliveries, claims, upkeep.

A process reads every mailbox it hosts through a few :class:`MailboxReader` loops, not
one per agent: an XREADGROUP names one group and one consumer for all its streams, so
all mailboxes share the group :data:`~ailf.runtime._keys.GROUP`, and reader number *k*
of a process (consumer ``{process}/{k}``) reads for the *k*-th local replica of every
agent. One reader therefore serves 100,000 single-replica agents on one connection.

A read never names every mailbox: its cost to Redis grows with the streams it names
(about 0.14 µs each), so a read over 100,000 mailboxes would stall Redis for every
other client. Instead every mailbox has a *doorbell*, a pub/sub channel its senders
publish on right after adding an entry (in the same round trip). The reader keeps the
set of mailboxes whose bell rang — its *dirty* set — and reads only those, a few
hundred per XREADGROUP (on a Redis Cluster, those of one hash slot), without blocking;
a mailbox stays dirty while reads return full batches or its bell rang during the read.
With nothing dirty the reader waits in the process, costing Redis nothing. Bells are
best-effort, like all pub/sub: whenever the pub/sub session had to reconnect, and every
``max_block`` seconds anyway (longer with many mailboxes, so that the cost stays about
5,000 mailboxes a second), every mailbox is read once more, so that an entry whose bell
was lost — or whose sender only XADDed — is found.

No read blocks, not even one of the busy mailboxes, though a blocking read would spare
an ask the bell's hop (about 20 µs). In this loop it would hold up every other bell:
Redis ends an idle BLOCK only when data arrives on a stream it names or at its next
cron tick (``hz`` 10, so up to 100 ms). In a task of its own beside this loop it was
measured and dropped: 12 µs off an ask's p50, but p99 over 1 ms far more often on a
machine with a busy core, and 10 µs of Redis time or more per message (see
docs/performance.md). The bell's own cost is kept low instead: the hub calls
:meth:`MailboxReader.ring` from the pub/sub session's reader task, as it reads the bell.

Each reader loop, in turn: redelivers failed messages whose backoff has passed
(XCLAIM to itself, which bumps Redis's delivery counter), claims entries idle longer
than ``claim_idle`` from other consumers (XAUTOCLAIM) and keeps its own held entries
fresh so that live replicas do not steal them, trims and tidies now and then, and reads
the dirty mailboxes whose instances have room (``>``), or their own pending entries
(``0``) after a start, a restart or a lost connection.

What it reads goes to the instance's queue (:attr:`Binding.deliver`); what becomes of
it afterwards is the reader's :class:`~ailf.runtime._settle.Settler`'s business.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.clients._slots import key_slot
from ailf.errors import (
    DecodeError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
)
from ailf.runtime._host import HostContext
from ailf.runtime._keys import GROUP
from ailf.runtime._mailbox import create_group, upkeep
from ailf.runtime._settings import MAX_BACKOFF_STEP
from ailf.runtime._settle import Binding, Delivery, Settler
from ailf.runtime._timers import is_timer_bell

__all__ = ["MailboxReader"]

log = logging.getLogger("ailf.runtime")

#: The most mailboxes one XREADGROUP names (about 70 µs of Redis time).
READ_STREAMS = 512
#: The entries a read should return at most (about 0.7 ms of Redis time): a read
#: returning more names half as many mailboxes next time, one returning a quarter of
#: it twice as many (up to :data:`READ_STREAMS`).
READ_ENTRIES = 2048
#: Mailboxes a full sweep reads per second at most, whatever their number: a sweep
#: comes every ``max_block`` seconds, or every ``mailboxes / SWEEP_RATE`` if longer.
SWEEP_RATE = 5000
#: Mailboxes a reader looks for entries to claim in, per second at most: a mailbox's
#: claims come every ``claim_idle / 2`` seconds, or every ``mailboxes / CLAIM_RATE``
#: if longer, so that an idle process's cost to Redis stays bounded however many
#: agents it hosts (then claims come later than ``claim_idle`` after a death).
CLAIM_RATE = 200
#: Mailboxes a reader trims and tidies per second at most (see :func:`_upkeep_interval`).
UPKEEP_RATE = 20


@attrs.define(eq=False)
class _Place:
    """Where a reader is in one bound mailbox."""

    binding: Binding
    #: What the mailbox's doorbell and the timekeeper call (:meth:`MailboxReader._heard`).
    listener: Callable[[str], None]
    #: Re-reading this consumer's pending entries (from ``backlog_from``) before new ones.
    backlog: bool = True
    backlog_from: str = "0"
    claim_cursor: str = "0-0"
    next_maintenance: float = 0.0
    #: Why the mailbox cannot be read (its key is not a stream), or None.
    problem: str | None = None

    def start_over(self) -> None:
        """Read this consumer's pending entries again before new ones, and claim anew."""
        self.backlog, self.backlog_from = True, "0"
        self.claim_cursor = "0-0"


async def _side_by_side(calls: Sequence[Callable[[], Awaitable[Any]]]) -> None:
    """Run ``calls`` concurrently; the first RedisError or DecodeError any raised is
    raised once all finished, as itself rather than in an ExceptionGroup, so that the
    reader loop's handlers see it (a Redis outage must not end the reader)."""
    errors: list[RedisError | DecodeError] = []

    async def guarded(call: Callable[[], Awaitable[Any]]) -> None:
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


def _upkeep_interval(binding: Binding, mailboxes: int) -> float:
    """Seconds between trims and consumer clean-ups of one mailbox: four claim periods,
    or longer with so many mailboxes that a reader would tidy over :data:`UPKEEP_RATE`
    of them a second."""
    return max(1.0, 4 * binding.claim_idle, mailboxes / UPKEEP_RATE)


class MailboxReader:
    """One consumer of a process: reads, claims and redelivers for every mailbox bound to it."""

    def __init__(self, host: HostContext, consumer: str) -> None:
        self.client = host.client
        self.acker = host.acker
        self.settings = host.settings
        self.hub = host.hub
        self.timekeeper = host.timekeeper
        self.consumer = consumer
        self.settler = Settler(host, consumer, wake=self.poke)
        self._places: dict[str, _Place] = {}
        self._changed = trio.Event()
        self._sequence = itertools.count()
        self._failures = 0
        self._seen: set[str] = set()
        self._full: set[str] = set()
        self._claims: list[tuple[float, int, _Place]] = []
        #: Mailboxes to read (their bell rang, or they may hold entries), oldest first.
        self._dirty: dict[str, None] = {}
        #: The mailboxes being read now, and those whose bell rang meanwhile.
        self._reading: set[str] = set()
        self._rung_while_reading: set[str] = set()
        self._sweep_at = 0.0
        #: Claims this reader may make now, refilled at CLAIM_RATE a second.
        self._claim_budget = float(CLAIM_RATE)
        self._budget_at = 0.0
        #: How many mailboxes the next read names (see :data:`READ_ENTRIES`).
        self._width = READ_STREAMS
        self._sessions = -1
        self._cluster = self.client.config.cluster

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
        place = _Place(binding, functools.partial(self._heard, binding.stream))
        if binding.stream not in self._seen:
            self._seen.add(binding.stream)
            place.backlog = binding.owned
        place.next_maintenance = now + random.uniform(1, 2) * _upkeep_interval(
            binding, len(self._places)
        )
        period = max(binding.claim_idle / 2, len(self._places) / CLAIM_RATE)
        self._schedule_claim(place, now + random.uniform(0, period))
        self._places[binding.stream] = place
        self.hub.add_bell(binding.address.bell, place.listener)
        self.timekeeper.watch(binding.address, place.listener)
        self.ring(binding.stream)

    def unbind(self, binding: Binding) -> None:
        binding.active = False
        place = self._places.get(binding.stream)
        if place is not None and place.binding is binding:
            del self._places[binding.stream]
            self._full.discard(binding.stream)
            self._dirty.pop(binding.stream, None)
            self.hub.remove_bell(binding.address.bell, place.listener)
            self.timekeeper.unwatch(binding.address, place.listener)

    def set_full(self, binding: Binding, full: bool) -> None:
        """An instance's queue is full (stop reading its mailbox) or has room again."""
        if full:
            self._full.add(binding.stream)
        else:
            self._full.discard(binding.stream)
            self.poke()

    def poke(self) -> None:
        """Make the loop look again at its mailboxes, retries and room."""
        self._changed.set()

    def _heard(self, stream: str, data: str) -> None:
        """The doorbell of ``stream`` rang (or the timekeeper moved entries into it);
        a bell announcing a timer is the timekeeper's business."""
        if not is_timer_bell(data):
            self.ring(stream)

    def ring(self, stream: str) -> None:
        """``stream`` may hold new entries (its bell rang, or it was just bound)."""
        self._dirty[stream] = None
        if stream in self._reading:
            self._rung_while_reading.add(stream)
        self._changed.set()

    def problems(self) -> dict[str, str]:
        """Agent name -> why its mailbox is not read, for the mailboxes set aside."""
        return {p.binding.agent: p.problem for p in self._places.values() if p.problem is not None}

    # -- the loop -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
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
                self._reread_all()

    async def _backoff(self, why: str) -> None:
        delay = self.settings.read_retry.delay(min(self._failures, MAX_BACKOFF_STEP))
        self._failures += 1
        log.warning("mailbox reader %s: %s; retrying in %.2f s", self.consumer, why, delay)
        await trio.sleep(delay)

    def _reread_all(self) -> None:
        """After a lost connection or lost groups: re-read every pending entry (whatever
        Redis delivered meanwhile is pending here, unseen)."""
        for place in self._places.values():
            place.backlog, place.backlog_from = True, "0"
        self._sweep()

    def _sweep(self) -> None:
        """Read every mailbox once more (see the module docstring)."""
        self._dirty.update(dict.fromkeys(self._places))
        self._sweep_at = trio.current_time() + max(
            self.settings.max_block, len(self._places) / SWEEP_RATE
        )

    async def _step(self) -> None:
        now = trio.current_time()
        await self._due_work(now)
        sessions = self.hub.sessions
        if sessions != self._sessions or now >= self._sweep_at:
            self._sessions = sessions  # a new session: bells rung meanwhile were lost
            self._sweep()
        self._changed = trio.Event()
        streams = self._take_dirty()
        if not streams:  # nothing to read, or no room: wait here, costing Redis nothing
            with trio.move_on_at(self._next_due(now)):
                await self._changed.wait()
            return
        self._reading = set(streams)
        self._rung_while_reading = set()
        try:
            reply = await self.client.xreadgroup(
                GROUP, self.consumer, streams, count=self.settings.batch_size
            )
        finally:
            self._reading = set()
        read_all = {stream for stream, entries in reply if len(entries) >= self.settings.batch_size}
        returned = sum(len(entries) for _, entries in reply)
        if returned > READ_ENTRIES:
            self._width = max(1, self._width // 2)
        elif returned < READ_ENTRIES // 4:
            self._width = min(READ_STREAMS, self._width * 2)
        for stream in streams:
            place = self._places.get(stream)
            more = stream in read_all or stream in self._rung_while_reading
            self._dirty.pop(stream, None)
            if more or (place is not None and place.backlog):
                self._dirty[stream] = None  # to be read again, after the others (fairness)
        await self._dispatch(reply)

    def _take_dirty(self) -> dict[str, str]:
        """The next mailboxes to read (at most :data:`READ_STREAMS`, fewer while reads
        return many entries; on a cluster, of one hash slot), each with where to read
        from."""
        streams: dict[str, str] = {}
        gone: list[str] = []
        slot = -1
        for stream in self._dirty:  # not copied: it may hold every mailbox, after a sweep
            place = self._places.get(stream)
            if place is None:
                gone.append(stream)
                continue
            if stream in self._full or place.problem is not None:
                continue
            if self._cluster:
                here = key_slot(stream)
                if slot == -1:
                    slot = here
                elif here != slot:
                    continue
            streams[stream] = place.backlog_from if place.backlog else ">"
            if len(streams) >= self._width:
                break
        for stream in gone:
            del self._dirty[stream]
        return streams

    def _next_due(self, now: float) -> float:
        due = min(now + self.settings.max_block, self._sweep_at)
        retry = self.settler.next_due()
        if retry is not None:
            due = min(due, retry)
        if self._claims:
            refilled = now + max(0.0, 1 - self._claim_budget) / CLAIM_RATE
            due = min(due, max(self._claims[0][0], refilled))
        return max(due, now + 0.001)

    async def _dispatch(self, reply: list[Any]) -> None:
        now = trio.current_time()
        for stream, entries in reply:
            place = self._places.get(stream)
            if place is None:
                continue  # unbound meanwhile: the entries stay pending for a claim
            if place.backlog:
                if len(entries) < self.settings.batch_size:
                    place.backlog = False
                else:
                    place.backlog_from = entries[-1][0]
                counts = await self._counts(stream, entries)
                self._deliver(place.binding, entries, now, counts)
            else:
                self._deliver(place.binding, entries, now, None)

    async def _counts(self, stream: str, entries: list[Any]) -> dict[str, int]:
        """Redis's delivery counts of entries re-read or claimed (one XPENDING)."""
        if not entries:
            return {}
        rows = await self.client.xpending_range(
            stream,
            GROUP,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries),
            consumername=self.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    def _deliver(
        self, binding: Binding, entries: list[Any], now: float, counts: dict[str, int] | None
    ) -> None:
        deliver = binding.deliver
        held = binding.held
        for entry_id, fields in entries:
            if fields is None:  # deleted (trimmed) while pending: nothing left to handle
                self.settler.ack(binding, entry_id)
                continue
            if entry_id in held or not binding.active:
                continue
            held[entry_id] = now
            count = 1 if counts is None else counts.get(entry_id, 1)
            deliver(Delivery(binding, entry_id, fields, count))

    # -- retries, claims, upkeep ------------------------------------------------------

    async def _due_work(self, now: float) -> None:
        retries = self.settler.due(now)
        claims = []
        # At most CLAIM_RATE claims a second, however many fall due at once (a burst of
        # spawns schedules its first claims before knowing how many mailboxes there are).
        self._claim_budget = min(
            CLAIM_RATE, self._claim_budget + (now - self._budget_at) * CLAIM_RATE
        )
        self._budget_at = now
        while self._claims and self._claims[0][0] <= now and self._claim_budget >= 1:
            self._claim_budget -= 1
            _, _, place = heapq.heappop(self._claims)
            if place.binding.active and self._places.get(place.binding.stream) is place:
                claims.append(place)
                period = max(place.binding.claim_idle / 2, len(self._places) / CLAIM_RATE)
                self._schedule_claim(place, now + max(period, 0.05))
        if not retries and not claims:
            return
        await _side_by_side(
            [functools.partial(self._redeliver, d, delay) for d, delay in retries]
            + [functools.partial(self._claim, place, now) for place in claims]
        )

    def _schedule_claim(self, place: _Place, when: float) -> None:
        # Rounded up to a tenth of claim_idle, so that the claims of many mailboxes fall
        # due together and wake the loop (and re-issue its read) a few times per claim
        # period, not once per mailbox.
        tick = max(0.05, place.binding.claim_idle / 10)
        heapq.heappush(self._claims, (math.ceil(when / tick) * tick, next(self._sequence), place))

    async def _redeliver(self, delivery: Delivery, delay: float) -> None:
        """Deliver a failed entry again, once its backoff has passed."""
        binding = delivery.binding
        if not binding.active:
            return
        # min-idle: if another replica claimed the entry meanwhile, leave it to that one.
        try:
            entries = await self.client.xclaim(
                binding.stream, GROUP, self.consumer, int(delay * 900), [delivery.id]
            )
        except RedisError:
            self.settler.retry(delivery)  # still held here: try again once Redis is back
            raise
        if not entries or entries[0][1] is None:
            binding.held.pop(delivery.id, None)
            return
        entry_id, fields = entries[0]
        binding.deliver(Delivery(binding, entry_id, fields, delivery.delivery_count + 1))

    async def _claim(self, place: _Place, now: float) -> None:
        if place.problem is not None:
            await self._check_repaired(place)
            return
        binding = place.binding
        stream = binding.stream
        if not binding.owned:
            await self._claim_stale(place, now)
        if place.next_maintenance <= now:
            place.next_maintenance = now + _upkeep_interval(binding, len(self._places))
            await upkeep(self.client, stream, self.consumer, self.settings.stale_consumer_after)

    async def _claim_stale(self, place: _Place, now: float) -> None:
        """Keep this consumer's held entries fresh, and claim those idle too long with
        other consumers (presumably dead replicas)."""
        binding = place.binding
        stream = binding.stream
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
            int(binding.claim_idle * 1000),
            start_id=place.claim_cursor,
            count=self.settings.batch_size,
        )
        place.claim_cursor = cursor
        fresh = [(entry_id, fields) for entry_id, fields in entries if entry_id not in binding.held]
        if fresh:
            log.info(
                "mailbox %s: claimed %d entries idle over %.1f s from other consumers",
                stream,
                len(fresh),
                binding.claim_idle,
            )
            self._deliver(binding, fresh, now, await self._counts(stream, fresh))

    # -- what a hostile or broken Redis puts in the way ------------------------------

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
            for place in list(self._places.values()):
                binding = place.binding
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
                        if await self.settler.refused(
                            delivery, "undecodable: the entry is not UTF-8 text"
                        ):  # and out of the mailbox, where it would trip up other readers
                            await raw.xdel(binding.stream, entry_id)
                    if len(entries) < self.settings.batch_size:
                        break
                    cursor = entries[-1][0]
        self._reread_all()

    async def _set_aside_wrong_types(self) -> bool:
        """Stop reading mailboxes whose key is not a stream; True if any was found.

        One XREADGROUP reads every mailbox of this reader, and Redis fails all of it
        (WRONGTYPE) if one key holds something else — a ``SET`` on a mailbox key by
        mistake or malice. So find those keys (one TYPE each, in one round trip), read
        on without them, and look at them again at each claim period: once the key is
        deleted or a stream again, the mailbox is read again. The problem is logged, and
        shown in the registry (``ailf status``) until then.
        """
        streams = list(self._places)
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.type(stream)
        found = False
        for stream, kind in zip(streams, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(kind, str) and kind not in ("stream", "none"):
                found = True
                place = self._places[stream]
                place.problem = f"its key holds a {kind}, not a stream"
                log.error(
                    "mailbox %s: %s; agent %r reads nothing from it until the key is deleted"
                    " (DEL %s) or holds a stream again",
                    stream,
                    place.problem,
                    place.binding.agent,
                    stream,
                )
        return found

    async def _check_repaired(self, place: _Place) -> None:
        """Read a set-aside mailbox again once its key is a stream (or gone)."""
        stream = place.binding.stream
        kind = await self.client.type(stream)
        if kind not in ("stream", "none"):
            return
        await create_group(self.client, stream)
        place.problem = None
        place.start_over()
        self.ring(stream)
        log.warning("mailbox %s: its key is a stream again; reading it", stream)

    async def _recreate_groups(self) -> None:
        streams = [s for s, place in self._places.items() if place.problem is None]
        try:
            await _side_by_side([functools.partial(create_group, self.client, s) for s in streams])
        except ResponseError as exc:  # the others were created all the same
            if exc.code != "WRONGTYPE" or not await self._set_aside_wrong_types():
                raise
        for place in self._places.values():
            place.start_over()
        self._sweep()

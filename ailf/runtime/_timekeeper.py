"""The :class:`Timekeeper`: moves due timed messages into the mailboxes a process reads.

Every process keeps one. Its readers tell it which mailboxes they read; it keeps, per
mailbox, the earliest due time it knows of, in a heap, and sleeps until the first —
whatever the number of timers waiting, an idle process costs Redis nothing but a
periodic look. It learns of earlier timers three ways:

- a doorbell carrying ``t<due>``, rung by a sender whose timer became the mailbox's
  earliest (see ailf/runtime/_timers.py);
- the reply of each :data:`~ailf.runtime._timers.MOVE`, which names the next due time;
- a look at every mailbox's earliest timer (``ZRANGE timers 0 0``) when a mailbox is
  first read here, after the pub/sub session was lost (bells rung meanwhile were lost),
  and every :data:`RESYNC` seconds (a sender that died between its timer and its bell,
  or that may not publish; a process that moved timers and died before another learned
  the next time) — less often with many mailboxes, so that an idle process looks at no
  more than :data:`RESYNC_RATE` a second.

Due times are in Redis's clock; the timekeeper converts them to its own with the
offset each script reply gives (Redis's ``TIME``). A wrong offset can make it wake too
early — then the script moves nothing, and its reply corrects the offset — but never
deliver early: the script compares with Redis's time.

Several processes reading one mailbox all watch its timers; the script makes sure each
timer is moved once. After moving, the timekeeper rings the local readers at once and
the mailbox's doorbell for the others.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable

import attrs
import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.errors import DecodeError, RedisError
from ailf.runtime._broadcast import BroadcastHub, bell_command
from ailf.runtime._keys import Address
from ailf.runtime._settings import MAX_BACKOFF_STEP, MailboxSettings
from ailf.runtime._timers import (
    FIRE,
    LEASE_MS,
    MOVE,
    PEEK,
    CronUnavailable,
    Recurrence,
    is_timer_bell,
)

__all__ = ["Timekeeper"]

log = logging.getLogger("ailf.runtime")

#: Timers one script moves at most (a larger backlog takes several, back to back).
MOVE_LIMIT = 1000
#: Seconds between two rounds of moves at least: under a steady stream of timers, each
#: round moves those due in the last few milliseconds together.
MOVE_SPACING = 0.005
#: Seconds between looks at every mailbox's earliest timer, or longer with so many
#: mailboxes that the looks would exceed :data:`RESYNC_RATE` a second.
RESYNC = 10.0
RESYNC_RATE = 200
#: Mailboxes looked at per second at most (when first read here, after a lost pub/sub
#: session, at a resync), and per pipeline.
PEEK_RATE = 1000


@attrs.define(eq=False)
class _Watched:
    address: Address
    #: The local readers to ring when something was moved.
    rings: list[Callable[[str], None]]
    #: This timekeeper's listener on the mailbox's doorbell.
    listener: Callable[[str], None]


class Timekeeper:
    """Moves due timers into the mailboxes this process reads; see the module docstring."""

    def __init__(self, client: AsyncRedisClient, hub: BroadcastHub, settings: MailboxSettings):
        self.client = client
        self.hub = hub
        maxlen = settings.mailbox_maxlen
        self._maxlen = "" if maxlen is None else str(maxlen)
        self._retry = settings.read_retry
        self._watched: dict[str, _Watched] = {}
        #: (due, sequence, mailbox): the earliest due time known per mailbox.
        self._heap: list[tuple[int, int, str]] = []
        self._sequence = itertools.count()
        #: Mailbox -> the due time its live heap entry holds.
        self._earliest: dict[str, int] = {}
        self._to_peek: dict[str, None] = {}
        self._peek_at = 0.0
        self._resync_at = 0.0
        self._sessions = -1
        self._last_round = -math.inf
        #: Redis's clock minus this process's, in ms.
        self._offset = 0.0
        self._failures = 0
        #: Mailbox -> moves that failed in a row (a key of the wrong type, a refused
        #: script): each is tried again later, backing off, not at once.
        self._failed_moves: dict[str, int] = {}
        self._changed = trio.Event()

    # -- called by readers and the hub (synchronous) ----------------------------------

    def watch(self, address: Address, ring: Callable[[str], None]) -> None:
        """Move ``address``'s due timers from now on, and call ``ring("")`` after."""
        mailbox = address.mailbox
        watched = self._watched.get(mailbox)
        if watched is None:
            listener = functools.partial(self._heard, mailbox)
            watched = self._watched[mailbox] = _Watched(address, [], listener)
            self.hub.add_bell(address.bell, listener)
            self._to_peek[mailbox] = None
            self._changed.set()
        watched.rings.append(ring)

    def unwatch(self, address: Address, ring: Callable[[str], None]) -> None:
        mailbox = address.mailbox
        watched = self._watched.get(mailbox)
        if watched is None or ring not in watched.rings:
            return
        watched.rings.remove(ring)
        if not watched.rings:
            del self._watched[mailbox]
            self._earliest.pop(mailbox, None)
            self._failed_moves.pop(mailbox, None)
            self._to_peek.pop(mailbox, None)
            self.hub.remove_bell(address.bell, watched.listener)

    def _heard(self, mailbox: str, data: str) -> None:
        if is_timer_bell(data):
            try:
                due = int(data[1:])
            except ValueError:
                return  # not a bell the runtime rings: ignored, as garbage on bells is
            self._note(mailbox, due)

    def _note(self, mailbox: str, due: int) -> None:
        """``mailbox`` has a timer due at ``due`` (Redis ms)."""
        if mailbox not in self._watched:
            return
        known = self._earliest.get(mailbox)
        if known is None or due < known:
            self._earliest[mailbox] = due
            heapq.heappush(self._heap, (due, next(self._sequence), mailbox))
            self._changed.set()

    # -- the loop ---------------------------------------------------------------------

    def _redis_now(self) -> float:
        return time.time() * 1000 + self._offset

    def _learn_time(self, redis_ms: int) -> None:
        self._offset = redis_ms - time.time() * 1000

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                if self._failures or self._sessions == -1:
                    seconds, micros = await self.client.execute_command("TIME")
                    self._learn_time(int(seconds) * 1000 + int(micros) // 1000)
                await self._step()
                self._failures = 0
            except (RedisError, DecodeError) as exc:
                delay = self._retry.delay(min(self._failures, MAX_BACKOFF_STEP))
                self._failures += 1
                log.warning("timekeeper: %s; moving due timers again in %.2f s", exc, delay)
                self._to_peek.update(dict.fromkeys(self._watched))
                await trio.sleep(delay)

    async def _step(self) -> None:
        now = trio.current_time()
        self._changed = trio.Event()
        if self.hub.sessions != self._sessions or now >= self._resync_at:
            self._sessions = self.hub.sessions
            self._to_peek.update(dict.fromkeys(self._watched))
            self._resync_at = now + max(RESYNC, len(self._watched) / RESYNC_RATE)
        if self._to_peek and now >= self._peek_at:
            await self._peek()
            return
        due = self._pop_due()
        if due:
            await trio.sleep_until(self._last_round + MOVE_SPACING)
            self._last_round = trio.current_time()
            async with trio.open_nursery() as nursery:
                for mailbox in due:
                    nursery.start_soon(self._move, mailbox)
            return
        wake = self._resync_at
        if self._to_peek:
            wake = min(wake, self._peek_at)
        if self._heap:
            wake = min(wake, now + (self._heap[0][0] - self._redis_now()) / 1000)
        with trio.move_on_at(max(wake, now + 0.001)):
            await self._changed.wait()

    def _pop_due(self) -> list[str]:
        """The mailboxes whose earliest timer is due by now (as far as this process's
        clock can tell), taken off the heap."""
        due: list[str] = []
        now = self._redis_now()
        while self._heap and self._heap[0][0] <= now:
            when, _, mailbox = heapq.heappop(self._heap)
            if self._earliest.get(mailbox) == when:
                del self._earliest[mailbox]
                due.append(mailbox)
        return due

    async def _peek(self) -> None:
        """Look at the earliest timer of up to :data:`PEEK_RATE` mailboxes."""
        batch = list(itertools.islice(self._to_peek, PEEK_RATE))
        pipe = self.client.pipeline(transaction=False)
        for mailbox in batch:  # EVAL, not EVALSHA: a pipeline cannot load a script
            pipe.execute_command("EVAL", PEEK, 1, self._watched[mailbox].address.timers)
        replies = await pipe.execute(raise_on_error=False)
        for mailbox, reply in zip(batch, replies, strict=True):
            self._to_peek.pop(mailbox, None)
            if isinstance(reply, str):
                with contextlib.suppress(ValueError, OverflowError):  # +inf: never due
                    self._note(mailbox, int(float(reply)))
        self._peek_at = trio.current_time() + len(batch) / PEEK_RATE

    async def _move(self, mailbox: str) -> None:
        watched = self._watched.get(mailbox)
        if watched is None:
            return
        address = watched.address
        keys = [address.timers, address.timed, address.mailbox]
        try:
            reply = await MOVE(self.client, keys, [MOVE_LIMIT, self._maxlen, LEASE_MS])
            moved, following, redis_now = int(reply[0]), int(reply[1]), int(reply[2])
            self._learn_time(redis_now)
            for n in range(3, len(reply), 4):
                field, due, lease, spec = reply[n : n + 4]
                moved += await self._fire(keys, field, int(due), int(lease), spec, redis_now)
        # DecodeError: a leased reminder's name or recurrence that is not text, written
        # by a hostile hand; it is leased again later (the rest of the move is done).
        except (RedisError, DecodeError) as exc:
            failed = self._failed_moves[mailbox] = self._failed_moves.get(mailbox, 0) + 1
            delay = self._retry.delay(min(failed - 1, MAX_BACKOFF_STEP))
            log.warning(
                "timekeeper: moving the due timers of %s failed (%s); again in %.2f s",
                mailbox,
                exc,
                delay,
            )
            self._note(mailbox, int(self._redis_now() + delay * 1000))
            return
        self._failed_moves.pop(mailbox, None)
        if following >= 0:
            self._note(mailbox, following)
        if moved:
            for ring in list(watched.rings):
                ring("")
            try:  # the other processes reading the mailbox
                await self.client.execute_command(bell_command(self.client), address.bell, "")
            except RedisError as exc:  # they find the entries at their next sweep
                log.debug("timekeeper: could not ring %s (%s)", address.bell, exc)

    async def _fire(
        self, keys: list[str], field: str, due: int, lease: int, spec: str, now: int
    ) -> int:
        """Fire a leased recurring reminder (``spec``: its recurrence, as JSON) and
        schedule its next time; 1 if fired."""
        try:
            recurrence = Recurrence.from_text(spec)
            following = recurrence.next_ms(due, now)
        except CronUnavailable as exc:  # leased again later, for a process that can
            log.error("reminder %s of %s cannot fire here: %s", field, keys[2], exc)
            return 0
        except (ValueError, TypeError) as exc:
            # Garbled (not written by the runtime): fired once more, then dropped; the
            # reader dead-letters what is not an envelope.
            log.error(
                "reminder %s of %s is garbled (%s); firing it a last time", field, keys[2], exc
            )
            following = -1
        fired = await FIRE(self.client, keys, [field, lease, following, self._maxlen])
        if following >= 0:
            self._note(keys[2], following)
        return int(fired)

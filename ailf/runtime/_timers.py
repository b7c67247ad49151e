"""Durable time: messages that wait in Redis until they are due, and reminders.

A timed message never lives only in a process. ``send(..., delay=30)`` runs
:data:`SCHEDULE`, which writes the envelope into the mailbox's *timed* hash and its id
into the *timers* sorted set, scored by when it is due — in Redis's clock (``TIME``),
so that the senders' clocks do not matter. Both keys are in the mailbox's hash slot
(:class:`~ailf.runtime._keys.Address`), so that moving a due message into the mailbox
is one script on one node: :data:`MOVE` adds it to the stream and deletes the timer
together, and two processes watching the same timers never add it twice. From the
stream on, a timed message is an ordinary one (acks, retries, dead letters).

Who moves them is the :class:`~ailf.runtime._timekeeper.Timekeeper` of every process
that reads the mailbox: it sleeps until the earliest due time it knows, and learns of
a new earlier one from the mailbox's doorbell, which :data:`SCHEDULE`'s caller rings
with ``t<due>`` when the new timer became the mailbox's earliest.

Reminders are named timers on an agent (for a keyed agent, on one key): setting one
again replaces it. A recurring one (``every=`` seconds or ``cron=``) stays in the timers
after firing; its next time is computed in Python (cron needs a parser), so firing it
takes two steps: :data:`MOVE` *leases* the due reminder (moves its score
:data:`LEASE_MS` ahead and hands it out), then :data:`FIRE` adds the message and
schedules the next time, only if the lease is still the one handed out. A process
dying between the two leaves the reminder to fire once, :data:`LEASE_MS` late.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import attrs

from ailf.clients._async_client import AsyncRedisClient
from ailf.errors import ConfigError, DecodeError, ResponseError
from ailf.runtime._broadcast import bell_command
from ailf.runtime._keys import Address, check_name
from ailf.runtime._message import decode_envelope
from ailf.runtime._partitions import Script

__all__ = [
    "CANCEL",
    "FIRE",
    "LEASE_MS",
    "MOVE",
    "PEEK",
    "SCHEDULE",
    "CronUnavailable",
    "Recurrence",
    "Reminder",
    "TimerId",
    "cancel",
    "due_ms",
    "is_timer_bell",
    "list_reminders",
    "parse_duration",
    "reminder_field",
    "reminder_value",
    "schedule",
    "timer_bell",
]

log = logging.getLogger("ailf.runtime")

#: Milliseconds a leased recurring reminder waits before another process may fire it.
#: Only how late a crash makes a firing: safety comes from FIRE's check, which refuses
#: a process whose lease another has taken since (it fires once, whoever it is).
LEASE_MS = 2_000
#: What a doorbell carries when it announces a timer rather than an entry.
_TIMER_BELL = "t"


def timer_bell(due: int) -> str:
    """The doorbell message saying the mailbox's earliest timer is now due at ``due``."""
    return f"{_TIMER_BELL}{due}"


def is_timer_bell(data: object) -> bool:
    return isinstance(data, str) and data.startswith(_TIMER_BELL)


# -- when -----------------------------------------------------------------------------


def _seconds(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what}: expected a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{what}: expected finite seconds >= 0, got {value!r}")
    return float(value)


def _epoch(what: str, at: object) -> float:
    if isinstance(at, dt.datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise ConfigError(
                f"{what}: {at!r} is a naive datetime; give it a timezone"
                " (datetime(..., tzinfo=datetime.timezone.utc)) so that its instant is clear"
            )
        return at.timestamp()
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise ConfigError(f"{what}: expected an aware datetime or epoch seconds, got {at!r}")
    return float(at)


def due_ms(what: str, delay: object = None, at: object = None) -> tuple[int | None, int | None]:
    """Check a ``delay=`` (seconds from now) or an ``at=`` (an aware datetime or epoch
    seconds; a past one fires now); returns them in milliseconds (rounded up: never
    early), one of them None. Raises :class:`ConfigError` naming ``what`` and the
    value."""
    if (delay is None) == (at is None):
        raise ConfigError(f"{what}: give delay= (seconds) or at= (a time), not both")
    if delay is not None:
        return math.ceil(_seconds(f"{what}: delay", delay) * 1000), None
    return None, math.ceil(_epoch(f"{what}: at", at) * 1000)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in a duration as people write it: ``30``, ``30s``, ``250ms``, ``5m``,
    ``1h30m``, ``2d`` (units ms, s, m, h, d); :class:`ConfigError` naming the text."""
    spoken = text.strip().lower()
    try:
        return _seconds("duration", float(spoken))
    except (ValueError, ConfigError):
        pass
    parts = _PART.findall(spoken)
    if not spoken or "".join(number + unit for number, unit in parts) != spoken:
        raise ConfigError(
            f"duration: {text!r} is not a duration (seconds, or numbers with units ms, s,"
            " m, h, d: '30s', '1h30m')"
        )
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


# -- recurrence -----------------------------------------------------------------------


class CronUnavailable(ConfigError):
    """A cron reminder, and no croniter to compute its times in this process."""


def _cron_iterator(expression: str, timezone: str) -> Callable[[float], float]:
    """A function from epoch seconds to the expression's next time after them."""
    try:
        from croniter import croniter
    except ImportError:
        raise CronUnavailable(
            f"cron={expression!r} needs the croniter package: pip install 'ailf[cron]'"
        ) from None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"timezone: {timezone!r} is not an IANA time zone name (such as 'UTC' or"
            " 'Europe/Paris')"
        ) from None
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigError(
            f"cron: {expression!r} is not a cron expression (five fields: minute hour"
            " day-of-month month day-of-week, such as '0 9 * * mon-fri')"
        )

    def after(epoch: float) -> float:
        start = dt.datetime.fromtimestamp(epoch, zone)
        return float(croniter(expression, start).get_next(float))

    after(time.time())  # expressions that never match (30 February) fail here
    return after


@attrs.frozen
class Recurrence:
    """How a reminder repeats: every ``every`` seconds, or at the times of a ``cron``
    expression in ``timezone``; neither for a one-shot reminder."""

    every: float | None = None
    cron: str | None = None
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        if self.every is not None and self.cron is not None:
            raise ConfigError("reminder: give every= or cron=, not both")
        if self.every is not None and _seconds("reminder: every", self.every) <= 0:
            raise ConfigError(f"reminder: every must be seconds > 0, got {self.every!r}")
        if self.cron is not None:
            _cron_iterator(self.cron, self.timezone)

    @property
    def recurring(self) -> bool:
        return self.every is not None or self.cron is not None

    def next_ms(self, due: int, now: int) -> int:
        """The first time after ``now`` (ms) of a reminder that was due at ``due``: one
        firing covers every missed period (see docs/time.md#catch-up)."""
        if self.every is not None:
            period = max(1, round(self.every * 1000))
            missed = max(0, now - due) // period + 1
            return due + missed * period
        assert self.cron is not None
        return round(_cron_iterator(self.cron, self.timezone)(now / 1000) * 1000)

    def to_text(self) -> str:
        return json.dumps(attrs.asdict(self), separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> Recurrence:
        """Read back :meth:`to_text`'s JSON; ValueError if it is anything else (the
        timed hash is writable by anyone who may schedule), CronUnavailable if it is a
        cron reminder and this process cannot compute its times."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("timezone", "UTC"), str):
            raise ValueError(f"not a recurrence: {text[:80]!r}")
        try:
            return cls(
                every=data.get("every"), cron=data.get("cron"), timezone=data.get("timezone", "UTC")
            )
        except CronUnavailable:
            raise
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


# -- what the timed hash holds ----------------------------------------------------------
#
# A delayed message: its envelope (JSON text, starting with '{'). A reminder: 'O' (one
# shot) or 'R' (recurring), its Recurrence as JSON, a newline, its envelope.


def reminder_value(recurrence: Recurrence, envelope: str) -> str:
    kind = "R" if recurrence.recurring else "O"
    return f"{kind}{recurrence.to_text()}\n{envelope}"


def reminder_field(name: str, key: str | None) -> str:
    """A reminder's field in the timed hash (and member of the timers): ``r/name/key``
    (no key: ``r/name/``). Names hold no ``/``; keys may, so the key comes last."""
    return f"r/{name}/{key or ''}"


def reminder_pattern(key: str | None) -> str:
    """An HSCAN pattern for the reminders of one key (glob characters escaped)."""
    return "r/*/" + re.sub(r"([*?\[\]\\])", r"\\\1", key or "")


@attrs.frozen
class Reminder:
    """A reminder as :meth:`~ailf.runtime.Runtime.reminders` lists it."""

    name: str
    #: When it fires next.
    due: dt.datetime
    #: Seconds between firings, or the cron expression and its time zone; None for
    #: a one-shot reminder.
    every: float | None
    cron: str | None
    timezone: str
    #: The body its messages carry.
    body: Any
    #: The key it is on, for a keyed agent.
    key: str | None = None

    @classmethod
    def from_hash(cls, field: str, value: str, score: float) -> Reminder:
        """Read back one reminder of the timed hash; DecodeError if it is garbled."""
        try:
            _, name, key = field.split("/", 2)
            spec, envelope = value[1:].split("\n", 1)
            recurrence = Recurrence.from_text(spec)
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            raise DecodeError(f"timer {field!r}: not a reminder ({exc})") from None
        return cls(
            name=name,
            due=dt.datetime.fromtimestamp(score / 1000, dt.UTC),
            every=recurrence.every,
            cron=recurrence.cron,
            timezone=recurrence.timezone,
            body=decode_envelope(envelope).body,
            key=key or None,
        )


# -- ids ------------------------------------------------------------------------------

_ID = re.compile(r"(?P<agent>[^/]+)/(?:(?P<partition>\d{1,4})/)?(?P<field>[0-9a-f]{16})")


@attrs.frozen
class TimerId:
    """A delayed message's id, as ``send`` returns it: ``billing/5f0c…`` for a named
    agent, ``assistant/12/5f0c…`` for partition 12 of a keyed one — enough for
    :meth:`~ailf.runtime.Runtime.cancel_scheduled` to find its keys."""

    agent: str
    partition: int | None
    field: str

    @classmethod
    def new(cls, agent: str, partition: int | None) -> TimerId:
        return cls(agent, partition, secrets.token_hex(8))

    @classmethod
    def parse(cls, text: object) -> TimerId:
        found = _ID.fullmatch(text) if isinstance(text, str) else None
        if found is None:
            raise ConfigError(
                f"cancel_scheduled: {text!r} is not an id returned by send(..., delay=...)"
                " (agent/hex or agent/partition/hex)"
            )
        partition = found["partition"]
        return cls(
            check_name("agent", found["agent"]),
            None if partition is None else int(partition),
            found["field"],
        )

    def __str__(self) -> str:
        if self.partition is None:
            return f"{self.agent}/{self.field}"
        return f"{self.agent}/{self.partition}/{self.field}"


# -- scripts --------------------------------------------------------------------------

#: Puts a timer in. KEYS: timers, timed. ARGV: field, value, delay ms ('' if at), at ms.
#: Due: Redis's time (rounded up to the ms) plus the delay, or at; :data:`MOVE` rounds
#: its time down, so nothing moves early. Returns {due, 1 if it is now the earliest}.
SCHEDULE = Script(
    """
local due
if ARGV[3] ~= '' then
  local t = redis.call('TIME')
  due = math.ceil((tonumber(t[1]) * 1000000 + tonumber(t[2])) / 1000) + tonumber(ARGV[3])
else
  due = tonumber(ARGV[4])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
if first[2] == nil or due < tonumber(first[2]) or first[1] == ARGV[1] then
  return {due, 1}
end
return {due, 0}
"""
)

#: Moves due timers into the mailbox. KEYS: timers, timed, mailbox. ARGV: the most to
#: move, the mailbox's MAXLEN ('' for none), lease ms. Delayed messages and one-shot
#: reminders are added and forgotten; recurring reminders are leased and handed out.
#: Returns {moved, next due or -1, Redis's time, then field, due, lease, recurrence JSON
#: per lease} — never an envelope, which may hold any bytes (the reader vets it).
MOVE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local out = {0, -1, now}
local moved = 0
for i = 1, #due, 2 do
  local field = due[i]
  local value = redis.call('HGET', KEYS[2], field)
  local kind = value and string.sub(value, 1, 1)
  if kind == 'R' then
    local lease = now + tonumber(ARGV[3])
    redis.call('ZADD', KEYS[1], lease, field)
    table.insert(out, field)
    table.insert(out, tonumber(due[i + 1]))
    table.insert(out, lease)
    local newline = string.find(value, '\\n', 1, true)
    table.insert(out, string.sub(value, 2, newline and newline - 1 or -1))
  else
    if value then
      if kind == 'O' then
        value = string.sub(value, (string.find(value, '\\n', 1, true) or 0) + 1)
      end
      if ARGV[2] ~= '' then
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'envelope', value)
      else
        redis.call('XADD', KEYS[3], '*', 'envelope', value)
      end
      moved = moved + 1
    end
    redis.call('ZREM', KEYS[1], field)
    redis.call('HDEL', KEYS[2], field)
  end
end
out[1] = moved
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] ~= nil then
  out[2] = tonumber(first[2])
end
return out
"""
)

#: Fires a leased recurring reminder and schedules its next time, if the lease is still
#: the one handed out (it was not replaced, cancelled or leased again). KEYS: timers,
#: timed, mailbox. ARGV: field, lease, next due (-1: none, forget it), MAXLEN ('' for
#: none). Returns 1 if fired.
FIRE = Script(
    """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
local value = redis.call('HGET', KEYS[2], ARGV[1])
local envelope = string.sub(value, (string.find(value, '\\n', 1, true) or 0) + 1)
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'envelope', envelope)
else
  redis.call('XADD', KEYS[3], '*', 'envelope', envelope)
end
if ARGV[3] == '-1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"""
)

#: The earliest due time of a mailbox's timers, as Redis writes the score, or nil.
#: KEYS: timers. (Not ZRANGE: its member, written by anyone who may schedule, may be
#: bytes that are not text.)
PEEK = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return first[2]
"""

#: Cancels a timer. KEYS: timers, timed. ARGV: field. Returns 1 if it had not fired
#: (a recurring reminder: if it existed).
CANCEL = Script(
    """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return removed
"""
)


# -- what the runtime runs --------------------------------------------------------------


async def schedule(
    client: AsyncRedisClient,
    address: Address,
    field: str,
    value: str,
    when: tuple[int | None, int | None],
) -> int:
    """Put a timer into ``address``'s timers (``when``: from :func:`due_ms`) and, if it
    is now the earliest, ring the mailbox's bell with its due time; returns that time."""
    delay, at = when
    due, earliest = await SCHEDULE(
        client,
        [address.timers, address.timed],
        [field, value, "" if delay is None else delay, "" if at is None else at],
    )
    if earliest:
        # No rights on the channel: the timer is found at the next resync.
        with contextlib.suppress(ResponseError):
            await client.execute_command(bell_command(client), address.bell, timer_bell(int(due)))
    return int(due)


async def cancel(client: AsyncRedisClient, address: Address, field: str) -> bool:
    return bool(await CANCEL(client, [address.timers, address.timed], [field]))


async def list_reminders(
    client: AsyncRedisClient, address: Address, key: str | None
) -> list[Reminder]:
    """The reminders in ``address``'s timers on ``key`` (None: a named agent's), by
    when they fire next. A garbled one is logged and left out."""
    found: dict[str, str] = {}
    cursor: Any = 0
    while True:
        cursor, chunk = await client.execute_command(
            "HSCAN", address.timed, cursor, "MATCH", reminder_pattern(key), "COUNT", 1000
        )
        found.update(zip(chunk[::2], chunk[1::2], strict=True))
        if int(cursor) == 0:
            break
    if not found:
        return []
    fields = list(found)
    scores = await client.execute_command("ZMSCORE", address.timers, *fields)
    reminders: list[Reminder] = []
    for field, score in zip(fields, scores, strict=True):
        if score is None:
            continue  # fired (a one-shot) or cancelled between the two reads
        try:
            reminder = Reminder.from_hash(field, found[field], float(score))
        except DecodeError as exc:
            log.warning("%s: %s", address.timed, exc)
            continue
        if reminder.key == key:
            reminders.append(reminder)
    reminders.sort(key=lambda reminder: reminder.due)
    return reminders

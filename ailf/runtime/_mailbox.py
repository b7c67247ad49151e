"""A mailbox as Redis holds it: a stream and its consumer group, what they hold, their upkeep.

Every question about a mailbox's state is answered here, from its stream (XLEN, XINFO
STREAM) and its consumer group (XINFO GROUPS), so that the sender's gate
(:mod:`ailf.runtime._admission`), ``Runtime.wait_idle``, the readers' upkeep,
``spawn()`` and ``ailf status`` count the same way:

- the **backlog** is what the agent still has to do: the group's lag (entries not read
  yet) plus its pending entries (read, not acknowledged). Where Redis cannot tell the
  lag (before 7.0, or after entries were deleted from the middle of the stream) or no
  group exists yet (the agent never ran), the stream's length stands in — an
  overestimate, on the safe side;
- a mailbox is **idle** when nothing is pending and the group has read up to the
  stream's last entry (compared by id, which Redis always knows, unlike the lag);
- entries **trimmed unread**: senders cap mailboxes with MAXLEN, which drops the oldest
  entries, read or not. The stream counts every entry ever added and the group counts
  what it has read, so ``added - length > read`` means unread entries went.

Keeping a mailbox is here too: creating its group, trimming what every replica has
acknowledged, and deleting consumers that hold nothing.
"""

from __future__ import annotations

import logging
from functools import cmp_to_key
from typing import Any

import attrs

from ailf.clients._async_client import AsyncRedisClient
from ailf.errors import DecodeError, ResponseError
from ailf.runtime._keys import GROUP, Keys

__all__ = [
    "Group",
    "MailboxReport",
    "backlog",
    "busy",
    "check_unread_trimmed",
    "create_group",
    "delete_idle_consumers",
    "group_of",
    "mailbox_backlog",
    "mailbox_report",
    "open_mailbox",
    "upkeep",
]

log = logging.getLogger("ailf.runtime")


@attrs.frozen
class Group:
    """A mailbox's consumer group, as one XINFO GROUPS record reports it."""

    pending: int
    #: Entries not read yet; None where Redis cannot tell (see the module docstring).
    lag: int | None
    last_delivered: str
    #: Entries the group has read; None where Redis cannot tell.
    entries_read: int | None


def group_of(groups: Any) -> Group | None:
    """The runtime's group in an XINFO GROUPS reply; None if it has none, or the reply
    is an error (no such key: nothing was ever sent)."""
    if isinstance(groups, Exception):
        return None
    for record in groups:
        if record.get("name") == GROUP:
            lag, read = record.get("lag"), record.get("entries-read")
            return Group(
                pending=int(record.get("pending") or 0),
                lag=None if lag is None else int(lag),
                last_delivered=record["last-delivered-id"],
                entries_read=None if read is None else int(read),
            )
    return None


def backlog(length: int, group: Group | None) -> int:
    """Entries of a mailbox of ``length`` its agent has still to handle."""
    if group is None or group.lag is None:
        return length
    return group.lag + group.pending


def compare_ids(a: str, b: str) -> int:
    """-1, 0 or 1 as stream id ``a`` is before, equal to or after ``b``."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    left = (int(ams), int(aseq or 0))
    right = (int(bms), int(bseq or 0))
    return (left > right) - (left < right)


async def mailbox_backlog(client: AsyncRedisClient, stream: str) -> int:
    """The backlog of ``stream``, in one round trip (XINFO GROUPS and XLEN)."""
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_groups(stream)
    pipe.xlen(stream)
    groups, length = await pipe.execute(raise_on_error=False)
    if isinstance(length, Exception):
        raise length
    return backlog(int(length), group_of(groups))


async def busy(client: AsyncRedisClient, streams: list[str]) -> dict[str, str]:
    """Why each of ``streams`` is not idle (idle ones are left out), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
        pipe.xinfo_stream(stream)
    replies = await pipe.execute(raise_on_error=False)
    found: dict[str, str] = {}
    for index, stream in enumerate(streams):
        group, info = group_of(replies[2 * index]), replies[2 * index + 1]
        if isinstance(info, DecodeError):  # it shows an entry that is not text
            found[stream] = "an entry that is not UTF-8 text, being dead-lettered"
        elif isinstance(info, Exception):  # no stream: nothing was ever sent
            continue
        elif group is None:
            if info.get("length"):
                found[stream] = f"{info['length']} entries, no consumer group yet"
        elif group.pending:
            found[stream] = f"{group.pending} pending"
        elif compare_ids(group.last_delivered, info["last-generated-id"]) < 0:
            found[stream] = "unread entries"
    return found


_warned: dict[str, int] = {}


def _report_unread_trimmed(stream: str, lost: int) -> None:
    """Log ``lost`` entries of ``stream`` gone unread, once per growth of the loss."""
    if lost > _warned.get(stream, 0):
        _warned[stream] = lost
        log.warning(
            "mailbox %s: about %d entries were trimmed or deleted before any replica read"
            " them; raise mailbox_maxlen or add replicas",
            stream,
            lost,
        )


async def check_unread_trimmed(client: AsyncRedisClient, stream: str) -> Group | None:
    """Warn if entries of ``stream`` were trimmed before the group read them; returns
    the group (None if there is none).

    Redis can count only while the gap lasts (reading past it re-estimates the group's
    counter): the runtime checks when an agent is spawned (a mailbox flooded while no
    agent ran) and at each upkeep (replicas lagging behind), and warns once per growth
    of the loss.
    """
    group = group_of(await client.xinfo_groups(stream))
    if group is None:
        return None
    info = await client.xinfo_stream(stream)
    removed = int(info.get("entries-added") or 0) - int(info.get("length") or 0)
    if group.last_delivered == "0-0":
        lost = removed
    elif group.entries_read is not None:
        lost = removed - group.entries_read
    else:
        lost = 0
    _report_unread_trimmed(stream, lost)
    return group


async def open_mailbox(client: AsyncRedisClient, stream: str, *, check: bool) -> None:
    """Create the mailbox's group (at ``0``, so a backlog is read) unless it exists, and
    report entries trimmed before anyone read them (if the group is new, or ``check``)
    — in one round trip when the group is new."""
    pipe = client.pipeline(transaction=False)
    pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
    pipe.xinfo_stream(stream)
    created, info = await pipe.execute(raise_on_error=False)
    code = created.code if isinstance(created, ResponseError) else ""
    # A full Redis (noeviction) refuses XGROUP CREATE even where the group exists;
    # reading needs no memory, and is how a full mailbox drains.
    full = code == "OOM" and isinstance(info, dict)
    if full and group_of(await client.xinfo_groups(stream)) is not None:
        code = "BUSYGROUP"
    if code == "BUSYGROUP":
        if check:
            await check_unread_trimmed(client, stream)
    elif code == "WRONGTYPE":
        # Not this spawn's failure: its reader sets the mailbox aside (and says so)
        # until the key is repaired, while every other agent runs on.
        log.error("mailbox %s: its key is not a stream (%s)", stream, created)
    elif isinstance(created, Exception):
        raise created
    elif not isinstance(info, Exception):
        _report_unread_trimmed(stream, info["entries-added"] - info["length"])


async def create_group(client: AsyncRedisClient, stream: str) -> None:
    """Create the stream's group (and the stream) unless it exists."""
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if exc.code != "BUSYGROUP":
            raise


async def upkeep(client: AsyncRedisClient, stream: str, consumer: str, stale_after: float) -> None:
    """Trim what every replica has acknowledged, warn about entries trimmed unread, and
    delete consumers (other than ``consumer``) idle ``stale_after`` seconds and holding
    nothing."""
    group = await check_unread_trimmed(client, stream)
    if group is None:
        return
    safe = group.last_delivered
    if group.pending:
        summary = await client.xpending(stream, GROUP)
        if summary.get("min"):
            safe = summary["min"]
    await client.xtrim(stream, minid=safe, approximate=True)
    stale_ms = stale_after * 1000
    for record in await client.xinfo_consumers(stream, GROUP):
        name = record.get("name")
        if name == consumer or record.get("pending") or record["idle"] < stale_ms:
            continue
        await client.xgroup_delconsumer(stream, GROUP, name)
        log.info("mailbox %s: deleted idle consumer %s (nothing pending)", stream, name)


async def delete_idle_consumers(client: AsyncRedisClient, owned: list[tuple[str, str]]) -> None:
    """Delete each (stream, consumer) of ``owned`` that holds nothing, in two round trips
    (what a stopping process does with its own consumers)."""
    pipe = client.pipeline(transaction=False)
    for stream, consumer in owned:
        pipe.xpending_range(stream, GROUP, count=1, consumername=consumer)
    replies = await pipe.execute(raise_on_error=False)
    for (stream, consumer), pending in zip(owned, replies, strict=True):
        if pending == []:
            pipe.xgroup_delconsumer(stream, GROUP, consumer)
    await pipe.execute(raise_on_error=False)


@attrs.frozen
class MailboxReport:
    """One agent's mailbox and dead letters, as ``ailf status`` shows them."""

    length: int
    dead_letters: int
    #: Timed messages and reminders waiting to enter the mailbox (docs/time.md).
    timers: int
    #: Why nothing reads the mailbox (its key is not a stream), or None.
    problem: str | None
    group: Group | None

    @property
    def pending(self) -> int | None:
        return None if self.group is None else self.group.pending

    @property
    def lag(self) -> int | None:
        return None if self.group is None else self.group.lag

    @property
    def waiting(self) -> int:
        """Messages the mailbox still holds for its agent: its backlog."""
        return backlog(self.length, self.group)


async def mailbox_report(client: AsyncRedisClient, keys: Keys, agent: str) -> MailboxReport:
    """Agent ``agent``'s mailbox and dead letters (for a keyed agent, every partition's
    added up), in two round trips."""
    partitions = await client.hget(keys.agent(agent), "partitions")
    if partitions is not None and str(partitions).isdigit():
        addresses = [keys.partition(agent, n).address for n in range(int(partitions))]
    else:
        addresses = [keys.address(agent)]
    pipe = client.pipeline(transaction=False)
    for address in addresses:
        pipe.xlen(address.mailbox)
        pipe.xlen(address.dead)
        pipe.xinfo_groups(address.mailbox)
        pipe.execute_command("ZCARD", address.timers)
    replies = await pipe.execute(raise_on_error=False)
    total = dead_total = timers_total = 0
    problem = None
    found: list[Group] = []
    for index, address in enumerate(addresses):
        length, dead, groups, timers = replies[4 * index : 4 * index + 4]
        if isinstance(length, ResponseError) and length.code == "WRONGTYPE":
            stream = address.mailbox
            problem = f"its key holds something else than a stream; nothing reads it (DEL {stream})"
        total += length if isinstance(length, int) else 0
        dead_total += dead if isinstance(dead, int) else 0
        timers_total += timers if isinstance(timers, int) else 0
        group = group_of(groups)
        if group is not None:
            found.append(group)
    return MailboxReport(
        length=total,
        dead_letters=dead_total,
        timers=timers_total,
        problem=problem,
        group=_sum_groups(found),
    )


def _sum_groups(groups: list[Group]) -> Group | None:
    """One mailbox's group, or the partitions' groups added up."""
    if len(groups) <= 1:
        return groups[0] if groups else None
    lags = [group.lag for group in groups]
    reads = [group.entries_read for group in groups]
    return Group(
        pending=sum(group.pending for group in groups),
        lag=None if None in lags else sum(lag for lag in lags if lag is not None),
        last_delivered=max((group.last_delivered for group in groups), key=cmp_to_key(compare_ids)),
        entries_read=None if None in reads else sum(r for r in reads if r is not None),
    )

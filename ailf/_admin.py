"""Operating a namespace from outside: what ``ailf send``, ``status``, ``dlq`` and ``reset`` do.

Each operation is an async function over a client :class:`~ailf.runtime.Runtime` (one
that spawns nothing) or a plain :class:`~ailf.clients._async_client.AsyncRedisClient`,
plus a synchronous wrapper for the command line. Everything read here is in Redis,
so it works from any host: the registry of live processes (heartbeats), each
mailbox's consumer group (pending, lag), each dead-letter stream.

Listing what a namespace holds takes ``SCAN``, which a Redis user confined to one
namespace by its ACL should not have (it lists every key of the database, other
namespaces' too): without it, ``status`` of a namespace falls back on the registry
(the agents of live processes) and says so, and what needs the full list — every
namespace, ``reset`` — fails with ``NOPERM``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from ailf._text import count_of, format_table
from ailf.clients._async_client import AsyncRedisClient
from ailf.config import RedisConfig
from ailf.errors import DecodeError, ResponseError
from ailf.runtime._keys import EVERY_KEY, GROUP, Keys, check_name, parse_key
from ailf.runtime._mailbox import compare_ids, group_of, mailbox_report
from ailf.runtime._message import ENVELOPE_FIELD, DeadLetter, decode_envelope
from ailf.runtime._registry import RegistrySnapshot, read_registry
from ailf.runtime._runtime import Runtime
from ailf.runtime._supervisor import unwrap
from ailf.runtime._timers import Reminder

__all__ = [
    "Leftovers",
    "NamespaceContents",
    "ask",
    "contents",
    "dead_letter_json",
    "dead_letters",
    "describe_dead_letter",
    "format_dead_letters",
    "format_status",
    "leftovers",
    "namespace_status",
    "publish",
    "purge",
    "redrive",
    "reset",
    "send",
    "status",
]

T = TypeVar("T")

#: Called with a warning the command line prints (an agent that never ran, say).
Warn = Callable[[str], None]


def _run(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    try:
        return trio.run(async_fn, *args)
    except BaseExceptionGroup as group:
        raise unwrap(group) from None


async def _scan(client: AsyncRedisClient, pattern: str) -> list[str]:
    """Every key matching ``pattern``; ResponseError NOPERM if this user may not SCAN."""
    found: list[str] = []
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=pattern, count=1000)
        found += keys
        if not cursor:
            return found


# -- messages -------------------------------------------------------------------------------


async def _warn_if_never_ran(runtime: Runtime, agent: str, warn: Warn | None) -> None:
    """Warn when no agent ``agent`` ever ran in the namespace: a message to it waits,
    silently, for an agent that may be misspelt or live in another namespace.

    Only advice: a Redis user that may send but not look (an ACL allowing XADD alone)
    sends without it."""
    if warn is None:
        return
    try:
        if agent in await _agents_that_ran(runtime.client, runtime.keys, [agent]):
            return
        names = sorted(await _agents_that_ran(runtime.client, runtime.keys))
    except ResponseError:
        return
    there = f"agents that have: {', '.join(names)}" if names else "no agent has"
    warn(
        f"no agent named {agent!r} has ever run in namespace {runtime.namespace!r}"
        f" ({there}); the message waits in its mailbox until one does"
    )


def send(
    config: RedisConfig,
    namespace: str,
    agent: str,
    body: Any,
    count: int = 1,
    *,
    warn: Warn | None = None,
    key: str | None = None,
    delay: float | None = None,
    at: float | None = None,
) -> list[str]:
    """Add ``body`` to ``agent``'s mailbox ``count`` times; the new entry ids (with a
    ``delay`` or ``at``: the timers' ids).

    ``warn`` is called first when no agent of that name ever ran in the namespace."""
    check_name("agent", agent)  # before connecting: a bad name is not a Redis problem

    async def go() -> list[str]:
        async with Runtime(config, namespace=namespace) as client:
            await _warn_if_never_ran(client, agent, warn)
            return [
                await client.send(agent, body, key=key, delay=delay, at=at) for _ in range(count)
            ]

    return _run(go)


def ask(
    config: RedisConfig,
    namespace: str,
    agent: str,
    body: Any,
    timeout: float,
    *,
    warn: Warn | None = None,
    key: str | None = None,
) -> Any:
    """Ask ``agent`` and return its reply; raises the runtime's timeout or remote error.

    ``warn`` is called first when no agent of that name ever ran in the namespace."""
    check_name("agent", agent)

    async def go() -> Any:
        async with Runtime(config, namespace=namespace) as client:
            await _warn_if_never_ran(client, agent, warn)
            return await client.ask(agent, body, timeout=timeout, key=key)

    return _run(go)


def publish(config: RedisConfig, namespace: str, topic: str, body: Any) -> int:
    """Broadcast ``body`` on ``topic``; the number of processes that received it."""
    check_name("topic", topic)

    async def go() -> int:
        async with Runtime(config, namespace=namespace) as client:
            return await client.publish(topic, body)

    return _run(go)


# -- what a namespace holds -----------------------------------------------------------------


async def _namespaces(client: AsyncRedisClient) -> list[str]:
    """Every namespace with a mailbox, a dead-letter stream or a live process."""
    found = set()
    for key in await _scan(client, EVERY_KEY):
        name = parse_key(key)
        if name is not None and name.kind in ("mailbox", "dead", "processes"):
            found.add(name.namespace)
    return sorted(found)


async def _agent_names(
    client: AsyncRedisClient, keys: Keys, registry: RegistrySnapshot
) -> tuple[set[str], bool]:
    """Every agent name with a mailbox, dead letters or a live replica, and whether that
    is all of them: without the right to SCAN, only the registry's (live) agents."""
    names = set(registry.agents)
    try:
        found = [parse_key(key) for key in await _scan(client, keys.every_key)]
    except ResponseError as exc:
        if exc.code != "NOPERM":
            raise
        return names, False
    names.update(
        key.name for key in found if key is not None and key.kind in ("mailbox", "dead", "agent")
    )
    return names, True


async def _agents_that_ran(
    client: AsyncRedisClient, keys: Keys, names: list[str] | None = None
) -> set[str]:
    """Of ``names`` (default: every agent found), those that ever ran: their mailbox has
    the consumer group every spawn creates, or a live process hosts them."""
    registry = await read_registry(client, keys)
    if names is None:
        names = sorted((await _agent_names(client, keys, registry))[0])
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xinfo_groups(keys.mailbox(name))
    replies = await pipe.execute(raise_on_error=False) if names else []
    return {
        name
        for name, groups in zip(names, replies, strict=True)
        if name in registry.agents or group_of(groups) is not None
    }


@attrs.frozen
class Leftovers:
    """What a namespace already holds for some agents: messages waiting in their
    mailboxes and dead letters, per agent (agents with neither are left out)."""

    messages: dict[str, int]
    dead_letters: dict[str, int]

    def __bool__(self) -> bool:
        return bool(self.messages or self.dead_letters)

    def describe(self) -> str:
        """``12 messages (worker 10, collector 2) and 1 dead letter (payments)``."""
        parts = []
        for noun, counts in (("message", self.messages), ("dead letter", self.dead_letters)):
            if counts:
                each = ", ".join(f"{name} {n}" for name, n in counts.items())
                parts.append(f"{count_of(sum(counts.values()), noun)} ({each})")
        return " and ".join(parts)


async def leftovers(client: Runtime, agents: list[str]) -> Leftovers:
    """What ``agents``' mailboxes and dead-letter streams hold in the runtime's namespace."""
    messages: dict[str, int] = {}
    dead: dict[str, int] = {}
    for name in agents:
        mailbox = await mailbox_report(client.client, client.keys, name)
        if mailbox.waiting:
            messages[name] = mailbox.waiting
        if mailbox.dead_letters:
            dead[name] = mailbox.dead_letters
    return Leftovers(messages, dead)


async def namespace_status(client: AsyncRedisClient, namespace: str) -> dict[str, Any]:
    """One namespace as ``ailf status --json`` shows it (also what ``ailf top`` and
    ``ailf dashboard`` poll)."""
    keys = Keys(namespace)
    # Live processes: whose registry entries have not expired, each after its own TTL.
    registry = await read_registry(client, keys)
    now = time.time()
    names, complete = await _agent_names(client, keys, registry)
    agents = {}
    reported = {name: why for p in registry.processes for name, why in p.problems.items()}
    for name in sorted(names):
        info = registry.agents.get(name)
        stats = registry.statistics.get(name)
        mailbox = await mailbox_report(client, keys, name)
        agents[name] = {
            "replicas": info.replicas if info else 0,
            "processes": len(info.processes) if info else 0,
            "length": mailbox.length,
            "backlog": mailbox.waiting,
            "pending": mailbox.pending,
            "lag": mailbox.lag,
            "dead_letters": mailbox.dead_letters,
            "timers": mailbox.timers,
            "problem": mailbox.problem or reported.get(name),
            "statistics": stats.to_json() if stats else None,
        }
    return {
        "namespace": namespace,
        "processes": [
            {
                "id": p.id,
                "host": p.host,
                "pid": p.pid,
                "agents": p.agents,
                "heartbeat_age": round(now - p.last_heartbeat, 3),
                "uptime": round(now - p.started, 3),
            }
            for p in registry.processes
        ],
        "agents": agents,
        "complete": complete,
    }


def status(config: RedisConfig, namespace: str | None = None) -> dict[str, Any]:
    """Every namespace (or one): live processes, and per agent its backlog and counters.

    Listing every namespace needs SCAN (ResponseError NOPERM without it); one namespace
    without SCAN lists the live processes' agents only, with ``"complete": false``."""
    if namespace is not None:
        check_name("namespace", namespace)

    async def go() -> dict[str, Any]:
        async with AsyncRedisClient(config) as client:
            names = [namespace] if namespace else await _namespaces(client)
            return {
                "redis": config.url,
                "namespaces": [await namespace_status(client, name) for name in names],
            }

    return _run(go)


def key_status(config: RedisConfig, namespace: str, agent: str, key: str) -> dict[str, Any]:
    """One key of keyed agent ``agent``: its partition, the process holding that
    partition (None: none now), its messages still to handle (unread, and delivered but
    not acknowledged), whether it has saved state, and its dead letters."""
    check_name("agent", agent)

    async def go() -> dict[str, Any]:
        async with Runtime(config, namespace=namespace) as runtime:
            address = await runtime.address_of(agent, key)
            client = runtime.client
            number = await runtime.partition_of(agent, key)
            part = runtime.keys.partition(agent, number)
            lease = await client.get(part.lease)
            groups = (
                await client.xinfo_groups(part.mailbox) if await client.exists(part.mailbox) else []
            )
            group = group_of(groups)
            pending = set()
            if group is not None and group.pending:
                rows = await client.xpending_range(part.mailbox, GROUP, "-", "+", group.pending)
                pending = {row["message_id"] for row in rows}
            unread = delivered = 0
            for entry_id, fields in await client.xrange(part.mailbox):
                try:
                    if decode_envelope(fields.get(ENVELOPE_FIELD)).key != key:
                        continue
                except DecodeError:
                    continue
                if entry_id in pending:
                    delivered += 1
                elif group is None or compare_ids(entry_id, group.last_delivered) > 0:
                    unread += 1
            letters = await runtime.dead_letters(agent, 1_000_000, key=key)
            return {
                "agent": agent,
                "key": key,
                "partition": number,
                "mailbox": address.mailbox,
                "held_by": lease.rpartition("/")[0] if isinstance(lease, str) else None,
                "unread": unread,
                "pending": delivered,
                "has_state": bool(await client.hexists(part.state, key)),
                "dead_letters": len(letters),
            }

    return _run(go)


def format_key_status(report: dict[str, Any]) -> str:
    held = report["held_by"] or "no process now (it is taken when a host balances)"
    return "\n".join(
        [
            f"agent {report['agent']}  key {report['key']!r}",
            f"  partition {report['partition']} ({report['mailbox']}), held by {held}",
            f"  messages: {report['unread']} unread, {report['pending']} being handled",
            f"  state: {'saved' if report['has_state'] else 'none saved yet'}",
            f"  dead letters: {report['dead_letters']}",
        ]
    )


def format_status(report: dict[str, Any]) -> str:
    """``status()`` as text: a block per namespace."""
    if not report["namespaces"]:
        return f"no ailf namespaces on {report['redis']}"
    lines = []
    for ns in report["namespaces"]:
        live = count_of(len(ns["processes"]), "live process")
        lines.append(f"namespace {ns['namespace']}  ({live})")
        for p in ns["processes"]:
            agents = ", ".join(f"{name}({n})" for name, n in p["agents"].items()) or "no agents"
            lines.append(
                f"  process {p['id']}  host {p['host']} pid {p['pid']}"
                f"  heartbeat {p['heartbeat_age']:.1f}s ago  up {p['uptime']:.0f}s  {agents}"
            )
        if not ns["complete"]:
            lines.append(
                "  (this Redis user may not SCAN, so only the agents of live processes are listed)"
            )
        header = ("agent", "replicas", "processes", "length", "pending", "lag", "dead", "timers")
        rows = [header]
        for name, a in ns["agents"].items():
            rows.append(
                (
                    name,
                    str(a["replicas"]),
                    str(a["processes"]),
                    str(a["length"]),
                    "-" if a["pending"] is None else str(a["pending"]),
                    "-" if a["lag"] is None else str(a["lag"]),
                    str(a["dead_letters"]),
                    str(a["timers"]),
                )
            )
        lines.append(format_table(rows, indent="  "))
        for name, a in ns["agents"].items():
            if a["problem"]:
                lines.append(f"  agent {name}: mailbox not read: {a['problem']}")
        lines.append("")
    return "\n".join(lines).rstrip()


# -- resetting a namespace ------------------------------------------------------------------


@attrs.frozen
class NamespaceContents:
    """Every key of a namespace, and what they hold: what :func:`reset` would delete."""

    namespace: str
    keys: tuple[str, ...]
    mailboxes: int
    messages: int
    dead_letter_streams: int
    dead_letters: int
    live_processes: int

    def describe(self) -> str:
        """``3 keys: 2 mailboxes (12 messages), 1 dead-letter stream (1 dead letter)``."""
        other = len(self.keys) - self.mailboxes - self.dead_letter_streams
        return (
            f"{count_of(len(self.keys), 'key')}: {count_of(self.mailboxes, 'mailbox')}"
            f" ({count_of(self.messages, 'message')}),"
            f" {count_of(self.dead_letter_streams, 'dead-letter stream')}"
            f" ({count_of(self.dead_letters, 'dead letter')})"
            + (f", {other} more (registry, wake-ups)" if other else "")
        )


def contents(config: RedisConfig, namespace: str) -> NamespaceContents:
    """What namespace ``namespace`` holds (needs SCAN: ResponseError NOPERM without it)."""
    keys = Keys(namespace)

    async def go() -> NamespaceContents:
        async with AsyncRedisClient(config) as client:
            found = sorted(await _scan(client, keys.every_key))
            registry = await read_registry(client, keys)
            names = [name for name in map(parse_key, found) if name is not None]
            mailboxes = [name.name for name in names if name.kind == "mailbox"]
            dead = [keys.dead(name.name) for name in names if name.kind == "dead"]
            pipe = client.pipeline(transaction=False)
            for key in dead:
                pipe.xlen(key)
            dead_letters = sum(await pipe.execute()) if dead else 0
            messages = 0
            for agent in mailboxes:
                messages += (await mailbox_report(client, keys, agent)).waiting
        return NamespaceContents(
            namespace=namespace,
            keys=tuple(found),
            mailboxes=len(mailboxes),
            messages=messages,
            dead_letter_streams=len(dead),
            dead_letters=dead_letters,
            live_processes=len(registry.processes),
        )

    return _run(go)


def reset(config: RedisConfig, found: NamespaceContents) -> int:
    """Delete the keys :func:`contents` found (mailboxes and their groups, dead letters,
    the registry); how many were deleted. Keys made since are left alone: a namespace
    in use is not reset, it is stopped first."""

    async def go() -> int:
        async with AsyncRedisClient(config) as client:
            deleted = 0
            for start in range(0, len(found.keys), 500):
                deleted += await client.unlink(*found.keys[start : start + 500])
            return deleted

    return _run(go) if found.keys else 0


# -- dead letters ---------------------------------------------------------------------------


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as ``ailf dlq`` prints it with ``--json``: ``dead_letter_id`` is the
    id to give ``dlq show``, ``redrive`` and ``purge``; ``message_id`` the original
    mailbox entry's."""
    data = attrs.asdict(letter)
    data["message_id"] = data.pop("id")
    return {"dead_letter_id": data.pop("dead_letter_id"), **data}


def describe_dead_letter(letter: DeadLetter) -> str:
    """One line per dead letter, the same in ``ailf dlq list`` and a run's summary::

    1764120000250-0  (message 1764120000100-0, 2025-11-26 01:20:00, 5 deliveries)
    handler failed on delivery 5 of 5 — InjectedFailure: poison message
    """
    failed = "unknown time"  # missing, or not a number (see DeadLetter.from_entry)
    if letter.failed_at:
        try:
            failed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter.failed_at))
        except (OverflowError, OSError, ValueError):  # a time no calendar has
            failed = f"failed_at {letter.failed_at!r}"
    error = f" — {letter.error_type}: {letter.error_message}" if letter.error_type else ""
    return (
        f"{letter.dead_letter_id}  (message {letter.id or '?'}, {failed},"
        f" {count_of(letter.delivery_count, 'delivery')})"
        f" {letter.reason or 'no reason given'}{error}"
    )


async def _read_letters(
    client: Runtime, agent: str, count: int, ids: list[str] | None, key: str | None = None
) -> list[DeadLetter]:
    letters = await client.dead_letters(agent, count=count, key=key)
    if ids:
        wanted = set(ids)
        letters = [x for x in letters if x.id in wanted or x.dead_letter_id in wanted]
    return letters


def dead_letters(
    config: RedisConfig,
    namespace: str,
    agent: str,
    *,
    count: int = 100,
    ids: list[str] | None = None,
    key: str | None = None,
) -> list[DeadLetter]:
    """An agent's dead letters, oldest first (only ``ids`` when given: dead-letter ids,
    or the original message ids; for a keyed agent, only ``key``'s when given)."""
    check_name("agent", agent)

    async def go() -> list[DeadLetter]:
        async with Runtime(config, namespace=namespace) as client:
            return await _read_letters(client, agent, count if not ids else 1_000_000, ids, key)

    return _run(go)


def state(config: RedisConfig, namespace: str, agent: str, key: str | None) -> Any:
    """What agent ``agent`` saved (a keyed agent's for ``key``; None: nothing yet)."""
    check_name("agent", agent)

    async def go() -> Any:
        async with Runtime(config, namespace=namespace) as runtime:
            return await runtime.state(agent, key)

    return _run(go)


def reminders(config: RedisConfig, namespace: str, agent: str, key: str | None) -> list[Reminder]:
    """Agent ``agent``'s reminders (on ``key``), by when they fire next."""
    check_name("agent", agent)

    async def go() -> list[Reminder]:
        async with Runtime(config, namespace=namespace) as runtime:
            return await runtime.reminders(agent, key=key)

    return _run(go)


def cancel_reminder(
    config: RedisConfig, namespace: str, agent: str, name: str, key: str | None
) -> bool:
    """Cancel agent ``agent``'s reminder ``name`` (on ``key``); True if it was set."""
    check_name("agent", agent)

    async def go() -> bool:
        async with Runtime(config, namespace=namespace) as runtime:
            return await runtime.cancel_reminder(agent, name, key=key)

    return _run(go)


def cancel_scheduled(config: RedisConfig, namespace: str, timer_id: str) -> bool:
    """Cancel a timed message by its id; True if it had not entered its mailbox."""

    async def go() -> bool:
        async with Runtime(config, namespace=namespace) as runtime:
            return await runtime.cancel_scheduled(timer_id)

    return _run(go)


def format_reminders(agent: str, found: list[Reminder]) -> str:
    if not found:
        return f"no reminders on {agent}"
    rows = [("reminder", "key", "next (UTC)", "repeats", "body")]
    for reminder in found:
        if reminder.every is not None:
            repeats = f"every {reminder.every:g} s"
        elif reminder.cron is not None:
            repeats = f"cron {reminder.cron} ({reminder.timezone})"
        else:
            repeats = "once"
        rows.append(
            (
                reminder.name,
                reminder.key or "-",
                reminder.due.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                repeats,
                json.dumps(reminder.body, default=str)[:60],
            )
        )
    return format_table(rows)


def format_dead_letters(agent: str, letters: list[DeadLetter]) -> str:
    if not letters:
        return f"no dead letters for {agent}"
    lines = []
    for letter in letters:
        lines.append(describe_dead_letter(letter))
        lines.append(f"    body: {json.dumps(letter.body, default=str)[:200]}")
    return "\n".join(lines)


def redrive(config: RedisConfig, namespace: str, agent: str, ids: list[str]) -> list[str]:
    """Send dead letters back to the agent's mailbox as new entries and remove them.

    The original envelope is re-added as it was, so the body, its type and its sender
    are kept; the delivery count starts again at 1. Each move is one MULTI/EXEC, so a
    dead letter is never both redriven and kept, nor dropped (on a Redis Cluster, a named
    agent's: add, then delete; see docs/cluster.md). Returns the new entry ids.
    """
    check_name("agent", agent)

    async def go() -> list[str]:
        moved = []
        async with Runtime(config, namespace=namespace) as runtime:
            for letter in await _read_letters(runtime, agent, 1_000_000, ids or None):
                address = await runtime.address_of(agent, letter.key)
                fields = {ENVELOPE_FIELD: letter.envelope}
                if config.cluster and letter.key is None:
                    # A named agent's mailbox and dead letters are in different slots of
                    # a cluster, where no MULTI spans both: add first, then delete (a
                    # crash between the two redrives it twice, never zero times).
                    new_id = await runtime.client.xadd(address.mailbox, fields)
                    await runtime.client.xdel(address.dead, letter.dead_letter_id)
                else:
                    pipe = runtime.client.pipeline(transaction=True)
                    pipe.xadd(address.mailbox, fields)
                    pipe.xdel(address.dead, letter.dead_letter_id)
                    new_id, _ = await pipe.execute()
                await runtime.ring(address)
                moved.append(new_id)
        return moved

    return _run(go)


def purge(config: RedisConfig, namespace: str, agent: str, ids: list[str]) -> int:
    """Delete some dead letters (by id), or all of them; how many were deleted."""
    check_name("agent", agent)

    async def go() -> int:
        async with Runtime(config, namespace=namespace) as runtime:
            if not ids:
                deleted = 0
                for dead in await runtime.dead_letter_streams(agent):
                    pipe = runtime.client.pipeline(transaction=True)
                    pipe.xlen(dead)
                    pipe.delete(dead)
                    count, _ = await pipe.execute()
                    deleted += int(count)
                return deleted
            deleted = 0
            for letter in await _read_letters(runtime, agent, 1_000_000, ids):
                address = await runtime.address_of(agent, letter.key)
                deleted += await runtime.client.xdel(address.dead, letter.dead_letter_id)
            return deleted

    return _run(go)

"""Operating a namespace from outside: what ``ailf send``, ``status`` and ``dlq`` do.

Each operation is an async function over a client :class:`~ailf.runtime.Runtime` (one
that spawns nothing) or a plain :class:`~ailf.clients.async_client.AsyncRedisClient`,
plus a synchronous wrapper for the command line. Everything read here is in Redis,
so it works from any host: the registry of live processes (heartbeats), each
mailbox's consumer group (pending, lag), each dead-letter stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ailf.clients.async_client import AsyncRedisClient
from ailf.config import RedisConfig
from ailf.runtime.keys import GROUP, Keys, check_name
from ailf.runtime.message import ENVELOPE_FIELD, DeadLetter
from ailf.runtime.registry import read_registry
from ailf.runtime.runtime import Runtime
from ailf.runtime.supervisor import unwrap

__all__ = [
    "ask",
    "dead_letters",
    "format_dead_letters",
    "format_status",
    "publish",
    "purge",
    "redrive",
    "send",
    "status",
]


def _run(async_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    try:
        return trio.run(async_fn, *args)
    except BaseExceptionGroup as group:
        raise unwrap(group) from None


# -- messages -------------------------------------------------------------------------------


def send(config: RedisConfig, namespace: str, agent: str, body: Any, count: int = 1) -> list[str]:
    """Add ``body`` to ``agent``'s mailbox ``count`` times; the new entry ids."""
    check_name("agent", agent)  # before connecting: a bad name is not a Redis problem

    async def go() -> list[str]:
        async with Runtime(config, namespace=namespace) as client:
            return [await client.send(agent, body) for _ in range(count)]

    return _run(go)


def ask(config: RedisConfig, namespace: str, agent: str, body: Any, timeout: float) -> Any:
    """Ask ``agent`` and return its reply; raises the runtime's timeout or remote error."""
    check_name("agent", agent)

    async def go() -> Any:
        async with Runtime(config, namespace=namespace) as client:
            return await client.ask(agent, body, timeout=timeout)

    return _run(go)


def publish(config: RedisConfig, namespace: str, topic: str, body: Any) -> int:
    """Broadcast ``body`` on ``topic``; the number of processes that received it."""
    check_name("topic", topic)

    async def go() -> int:
        async with Runtime(config, namespace=namespace) as client:
            return await client.publish(topic, body)

    return _run(go)


# -- status ---------------------------------------------------------------------------------


async def _namespaces(client: AsyncRedisClient) -> list[str]:
    """Every namespace with a mailbox, a dead-letter stream or a live process."""
    found: set[str] = set()
    for marker in (":mailbox:", ":dead:", ":processes"):
        cursor = 0
        while True:
            cursor, keys = await client.scan(cursor, match=f"ailf:*{marker}*", count=1000)
            for key in keys:
                found.add(key[len("ailf:") : key.index(marker, len("ailf:"))])
            if not cursor:
                break
    return sorted(found)


async def _agent_names(client: AsyncRedisClient, keys: Keys) -> set[str]:
    names: set[str] = set()
    for kind in ("mailbox", "dead"):
        cursor = 0
        prefix = f"{keys.prefix}{kind}:"
        while True:
            cursor, found = await client.scan(cursor, match=f"{prefix}*", count=1000)
            names.update(key[len(prefix) :] for key in found)
            if not cursor:
                break
    return names


async def _mailbox(client: AsyncRedisClient, keys: Keys, agent: str) -> dict[str, Any]:
    stream = keys.mailbox(agent)
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("XLEN", stream)
    pipe.execute_command("XLEN", keys.dead(agent))
    pipe.execute_command("XINFO", "GROUPS", stream)
    length, dead, groups = await pipe.execute(raise_on_error=False)
    pending: int | None = None
    lag: int | None = None
    if isinstance(groups, list):
        for group in groups:
            info = _pairs(group)
            if info.get("name") == GROUP:
                pending = int(info.get("pending") or 0)
                lag = None if info.get("lag") is None else int(info["lag"])
    return {
        "length": length if isinstance(length, int) else 0,
        "pending": pending,
        "lag": lag,
        "dead_letters": dead if isinstance(dead, int) else 0,
    }


def _pairs(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict):
        return {str(k): v for k, v in reply.items()}
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


async def _namespace_status(client: AsyncRedisClient, namespace: str) -> dict[str, Any]:
    keys = Keys(namespace)
    # Live processes: whose registry entries have not expired, each after its own TTL.
    registry = await read_registry(client, keys)
    now = time.time()
    names = await _agent_names(client, keys) | set(registry.agents)
    agents = {}
    for name in sorted(names):
        info = registry.agents.get(name)
        stats = registry.statistics.get(name)
        agents[name] = {
            "replicas": info.replicas if info else 0,
            "processes": len(info.processes) if info else 0,
            **await _mailbox(client, keys, name),
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
    }


def status(config: RedisConfig, namespace: str | None = None) -> dict[str, Any]:
    """Every namespace (or one): live processes, and per agent its backlog and counters."""
    if namespace is not None:
        check_name("namespace", namespace)

    async def go() -> dict[str, Any]:
        async with AsyncRedisClient(config) as client:
            names = [namespace] if namespace else await _namespaces(client)
            return {
                "redis": config.url,
                "namespaces": [await _namespace_status(client, name) for name in names],
            }

    return _run(go)


def format_status(report: dict[str, Any]) -> str:
    """``status()`` as text: a block per namespace."""
    if not report["namespaces"]:
        return f"no ailf namespaces on {report['redis']}"
    lines = []
    for ns in report["namespaces"]:
        lines.append(f"namespace {ns['namespace']}  ({len(ns['processes'])} live processes)")
        for p in ns["processes"]:
            agents = ", ".join(f"{name}({n})" for name, n in p["agents"].items()) or "no agents"
            lines.append(
                f"  process {p['id']}  host {p['host']} pid {p['pid']}"
                f"  heartbeat {p['heartbeat_age']:.1f}s ago  up {p['uptime']:.0f}s  {agents}"
            )
        header = ("agent", "replicas", "processes", "length", "pending", "lag", "dead")
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
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for row in rows:
            cells = [
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  " + "  ".join(cells))
        lines.append("")
    return "\n".join(lines).rstrip()


# -- dead letters ---------------------------------------------------------------------------


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    return attrs.asdict(letter)


async def _read_letters(
    client: Runtime, agent: str, count: int, ids: list[str] | None
) -> list[DeadLetter]:
    letters = await client.dead_letters(agent, count=count)
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
) -> list[dict[str, Any]]:
    """An agent's dead letters, oldest first (only ``ids`` when given), as JSON objects."""

    async def go() -> list[dict[str, Any]]:
        async with Runtime(config, namespace=namespace) as client:
            letters = await _read_letters(client, agent, count if not ids else 1_000_000, ids)
        return [_letter_json(letter) for letter in letters]

    return _run(go)


def format_dead_letters(agent: str, letters: list[dict[str, Any]]) -> str:
    if not letters:
        return f"no dead letters for {agent}"
    lines = []
    for letter in letters:
        failed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(letter["failed_at"]))
        error = (
            f" — {letter['error_type']}: {letter['error_message']}" if letter["error_type"] else ""
        )
        lines.append(
            f"{letter['dead_letter_id']}  (message {letter['id']}, {failed},"
            f" {letter['delivery_count']} deliveries) {letter['reason']}{error}"
        )
        lines.append(f"    body: {json.dumps(letter['body'], default=str)[:200]}")
    return "\n".join(lines)


def redrive(config: RedisConfig, namespace: str, agent: str, ids: list[str]) -> list[str]:
    """Send dead letters back to the agent's mailbox as new entries and remove them.

    The original envelope is re-added as it was, so the body, its type and its sender
    are kept; the delivery count starts again at 1. Each move is one MULTI/EXEC, so a
    dead letter is never both redriven and kept, nor dropped. Returns the new entry ids.
    """

    async def go() -> list[str]:
        keys = Keys(namespace)
        moved = []
        async with Runtime(config, namespace=namespace) as runtime:
            for letter in await _read_letters(runtime, agent, 1_000_000, ids or None):
                pipe = runtime.client.pipeline(transaction=True)
                pipe.xadd(keys.mailbox(agent), {ENVELOPE_FIELD: letter.envelope})
                pipe.xdel(keys.dead(agent), letter.dead_letter_id)
                new_id, _ = await pipe.execute()
                moved.append(new_id)
        return moved

    return _run(go)


def purge(config: RedisConfig, namespace: str, agent: str, ids: list[str]) -> int:
    """Delete some dead letters (by id), or all of them; how many were deleted."""

    async def go() -> int:
        dead = Keys(namespace).dead(agent)
        if not ids:
            async with AsyncRedisClient(config) as client:
                pipe = client.pipeline(transaction=True)
                pipe.xlen(dead)
                pipe.delete(dead)
                count, _ = await pipe.execute()
                return count
        async with Runtime(config, namespace=namespace) as runtime:
            letters = await _read_letters(runtime, agent, 1_000_000, ids)
            if not letters:
                return 0
            return await runtime.client.xdel(dead, *(x.dead_letter_id for x in letters))

    return _run(go)

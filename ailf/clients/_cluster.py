"""The trio engine for a Redis Cluster: every command to the primary of its slot.

:class:`ClusterBackend` keeps the slot map (:mod:`ailf.clients._topology`) and one
:class:`~ailf.clients._trio_backend.TrioBackend` per primary — the same shared,
pipelined connection and pool of blocking connections as on one server — and routes
each command by the hash slot of its keys (:mod:`ailf.clients._slots`). Commands whose
keys span several slots raise :class:`~ailf.errors.CrossSlotError` before anything is
sent.

What the cluster answers, and what the engine does (none of these replies means the
command ran, so each is safe to send again):

- ``MOVED slot host:port``: the slot lives elsewhere now. Patch the map, send there,
  and refresh the whole map in the background.
- ``ASK slot host:port``: the slot is being migrated and this key already went. Send
  to the target once, preceded by ``ASKING`` *in the same write*, so that no other
  task's command can come between the two on the shared connection.
- ``TRYAGAIN`` (a multi-key command while its keys are split by a migration),
  ``CLUSTERDOWN``, ``LOADING``, ``MASTERDOWN``: back off and send again.
- A node that cannot be connected to (gone, failing over): nothing was sent; refresh
  the map and send to whoever owns the slot then.

Every wait is bounded by ``cluster_retry_timeout``
(:class:`~ailf.errors.ClusterUnavailableError` past it), and redirects by a hop count.
A connection that breaks while a command is in flight is not retried: the command may
have run (as on one server, ``retry_idempotent`` opts in for commands safe to repeat).

Keyless commands go to one primary, except those whose answer is per node: ``DBSIZE``
sums, ``KEYS`` concatenates and ``FLUSHDB``/``FLUSHALL`` run on every primary, and
``SCAN`` walks the primaries one after the other behind one cursor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Sequence
from typing import Any

import attrs
import trio

from ailf.clients._pubsub import PubSub
from ailf.clients._resp import pack_commands
from ailf.clients._slots import SLOTS, KeySpec, command_keys, key_slot, learn
from ailf.clients._topology import Node, SlotMap, parse_shards, parse_slots, split_address
from ailf.clients._trio_backend import TrioBackend
from ailf.config import RedisConfig
from ailf.errors import (
    ClusterUnavailableError,
    CrossSlotError,
    RedisConnectionError,
    RedisError,
    ResponseError,
    WatchError,
)

__all__ = ["ClusterBackend", "ClusterReserved"]

Command = tuple[Any, ...]

#: Redirects followed for one command before giving up (a map changing under it).
MAX_HOPS = 16
#: Replies that say the command did not run and will run if sent again, later.
_RETRY_LATER = frozenset({"TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"})
#: Keyless commands answered per node, and how the answers of every primary combine.
_EVERY_PRIMARY = frozenset({"DBSIZE", "KEYS", "FLUSHDB", "FLUSHALL"})
_PER_NODE = _EVERY_PRIMARY | {"SCAN"}
#: Pause between two refreshes of the map, so that a burst of MOVED costs one.
_REFRESH_SPACING = 0.1
#: How often the map is read again anyway (a failed replica, a new node: nothing else
#: tells a client).
_REFRESH_PERIOD = 30.0
#: SCAN's cursor carries the index of the primary it is walking above this bit.
_CURSOR_SHIFT = 64


def _name(args: Command) -> str:
    head = args[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()


def _redirect(reply: Any) -> tuple[str, int, str] | None:
    """``(kind, slot, address)`` of a MOVED or ASK error reply, else None."""
    if not isinstance(reply, ResponseError):
        return None
    parts = str(reply).split()
    if len(parts) == 3 and parts[0] in ("MOVED", "ASK"):
        return parts[0], int(parts[1]), parts[2]
    return None


def _first_trouble(replies: Sequence[Any]) -> Any:
    """The first reply that redirects or asks to retry later, else None."""
    for reply in replies:
        if isinstance(reply, ResponseError) and (
            _redirect(reply) is not None or reply.code in _RETRY_LATER
        ):
            return reply
    return None


@attrs.define(eq=False)
class _Attempt:
    """One command's (or one slot's group of commands') way through redirects."""

    slot: int | None
    deadline: float = math.inf
    hops: int = 0
    ask: Node | None = None
    backoff: float = 0.01
    last: str = ""


class ClusterBackend:
    """The :class:`~ailf.clients._backend.AsyncBackend` for ``RedisConfig(cluster=True)``
    under trio; see the module docstring."""

    def __init__(self, config: RedisConfig, nursery: trio.Nursery | None) -> None:
        self._config = config
        self._nursery = nursery
        self._links: dict[Node, TrioBackend] = {}
        self._map = SlotMap([None] * SLOTS)
        #: Bumped by every change of the map (a refresh, a MOVED): waiters compare it.
        self._generation = 0
        self._changed = trio.Event()
        self._refresh_lock = trio.Lock()
        self._refreshed_at = -math.inf
        self._refresh_wanted = False
        self._closed = False

    # -- lifetime ---------------------------------------------------------------------

    @staticmethod
    async def probe(config: RedisConfig) -> None:
        """PING every seed until one answers (for ``health_check``)."""
        failure: RedisError | None = None
        for seed in config.seeds:
            try:
                await TrioBackend.probe(seed)
                return
            except RedisError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def open(self) -> None:
        """Read the map from the seeds, so that a wrong address fails at ``async with``."""
        await self._refresh(self._generation)
        if self._nursery is not None:
            self._nursery.start_soon(self._refresh_periodically)

    async def aclose(self) -> None:
        self._closed = True
        for link in list(self._links.values()):
            await link.aclose()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    # -- routing ----------------------------------------------------------------------

    def _link(self, node: Node) -> TrioBackend:
        link = self._links.get(node)
        if link is None:
            # The engine waits out a node that will not connect itself, within
            # cluster_retry_timeout: a link fails at once instead of backing off.
            config = self._config.node(node.host, node.port)
            config = config.replace(retry=attrs.evolve(config.retry, attempts=0))
            link = self._links[node] = TrioBackend(config, self._nursery)
        return link

    async def _slot(self, commands: Sequence[Command]) -> int | None:
        """The one slot every key of ``commands`` hashes to (None: they have no key);
        :class:`CrossSlotError` naming the keys when there is more than one."""
        slots: dict[int, list[Any]] = {}
        for args in commands:
            keys = command_keys(args)
            if keys is None:
                keys = await self._learn(args)
            for key in keys:
                slots.setdefault(key_slot(key), []).append(key)
        if len(slots) > 1:
            listed = "; ".join(
                f"slot {slot}: {', '.join(repr(k) for k in keys)}" for slot, keys in slots.items()
            )
            raise CrossSlotError(
                f"keys of {len(slots)} hash slots in one {_name(commands[0])}"
                f"{' transaction' if len(commands) > 1 else ''}: {listed}. A cluster runs it"
                " only when every key is in one slot: give them a common hash tag, e.g."
                " {user-42}:cart and {user-42}:orders"
            )
        return next(iter(slots), None)

    async def _learn(self, args: Command) -> list[Any]:
        """The keys of a command the table does not know: its key positions from the
        server (``COMMAND INFO``, remembered), or ``COMMAND GETKEYS`` for commands whose
        keys move about (``first`` 0 in COMMAND INFO)."""
        name = _name(args)
        node = self._any_primary()
        [info] = await self._link(node).execute_many([("COMMAND", "INFO", name)], False)
        entry = info[0] if isinstance(info, list) and info else None
        if isinstance(entry, list) and len(entry) >= 6 and int(entry[3]) > 0:
            learn(name, KeySpec(int(entry[3]), int(entry[4]), int(entry[5]) or 1))
            return command_keys(args) or []
        if isinstance(entry, list) and len(entry) >= 6:
            [keys] = await self._link(node).execute_many([("COMMAND", "GETKEYS", *args)], False)
            return keys if isinstance(keys, list) else []
        return []  # unknown to the server too: it will say so itself

    def _any_primary(self) -> Node:
        primaries = sorted(self._map.primaries, key=lambda n: (n.host, n.port))
        if primaries:
            return primaries[0]
        seed = self._config.seeds[0]
        return Node(seed.host, seed.port)

    def _owner(self, attempt: _Attempt) -> Node | None:
        if attempt.ask is not None:
            return attempt.ask
        if attempt.slot is None:
            return self._any_primary()
        return self._map.owners[attempt.slot]

    async def _run(self, attempt: _Attempt, commands: list[Command], blocking: bool) -> list[Any]:
        """Send ``commands`` (one slot's) to the slot's owner, following redirects and
        waiting out a cluster that cannot serve the slot, within the bounds."""
        while True:
            node = self._owner(attempt)
            if node is None:
                attempt.last = f"no node serves slot {attempt.slot}"
                await self._wait_for_change(attempt)
                continue
            asking = attempt.ask is not None
            attempt.ask = None
            sent = [("ASKING",), *commands] if asking else commands
            try:
                replies = await self._send(node, sent, blocking)
            except _NotSent as exc:
                attempt.last = f"{node.address}: {exc.error}"
                self._want_refresh()
                await self._wait_for_change(attempt)
                continue
            except RedisConnectionError:
                self._want_refresh()  # may have run: not sent again, but the map is suspect
                raise
            if asking:
                replies = replies[1:]
            trouble = _first_trouble(replies)
            if trouble is None:
                return replies
            attempt.hops += 1
            attempt.last = f"{node.address} answered {trouble}"
            if attempt.hops > MAX_HOPS:
                raise ClusterUnavailableError(
                    f"gave up on slot {attempt.slot} after {MAX_HOPS} redirects; last:"
                    f" {attempt.last}"
                )
            redirect = _redirect(trouble)
            if redirect is None:  # TRYAGAIN, CLUSTERDOWN...: later
                if trouble.code == "CLUSTERDOWN":
                    self._want_refresh()
                await self._back_off(attempt)
                continue
            kind, slot, address = redirect
            host, port = split_address(address, node.host)
            target = Node(host, port)
            if kind == "ASK":
                attempt.ask = target
            else:
                self._map.move(slot, target)
                self._generation += 1
                self._want_refresh()

    async def _send(self, node: Node, commands: list[Command], blocking: bool) -> list[Any]:
        """Send to one node in one write; :class:`_NotSent` when connecting failed."""
        link = self._link(node)
        if blocking or self._nursery is None:
            return await link.execute_many(commands, blocking)
        try:
            shared = await link.connected()
        except RedisConnectionError as exc:
            raise _NotSent(exc) from exc
        if len(commands) == 1:
            return [await shared.request(pack_commands(commands))]
        replies: list[Any] = await shared.request(pack_commands(commands), len(commands))
        return replies

    async def _back_off(self, attempt: _Attempt) -> None:
        self._start_clock(attempt)
        if trio.current_time() + attempt.backoff > attempt.deadline:
            self._unavailable(attempt)
        await trio.sleep(attempt.backoff)
        attempt.backoff = min(attempt.backoff * 2, 1.0)

    async def _wait_for_change(self, attempt: _Attempt) -> None:
        """Wait for a newer map (or a backoff), within the attempt's deadline."""
        self._start_clock(attempt)
        seen = self._generation
        with trio.move_on_at(min(attempt.deadline, trio.current_time() + attempt.backoff)):
            while self._generation == seen:
                await self._changed.wait()
        attempt.backoff = min(attempt.backoff * 2, 1.0)
        if trio.current_time() >= attempt.deadline:
            self._unavailable(attempt)
        if self._nursery is None or self._generation == seen:
            await self._refresh(seen)

    def _start_clock(self, attempt: _Attempt) -> None:
        if attempt.deadline == math.inf:
            attempt.deadline = trio.current_time() + self._config.cluster_retry_timeout

    def _unavailable(self, attempt: _Attempt) -> None:
        raise ClusterUnavailableError(
            f"no node of the cluster served slot {attempt.slot} within"
            f" cluster_retry_timeout={self._config.cluster_retry_timeout} s; last:"
            f" {attempt.last}"
        )

    # -- the map ------------------------------------------------------------------------

    def _want_refresh(self) -> None:
        """Refresh the map soon, in the background (at once when there is no nursery)."""
        if self._nursery is None or self._refresh_wanted or self._closed:
            return
        self._refresh_wanted = True
        self._nursery.start_soon(self._refresh_soon)

    async def _refresh_soon(self) -> None:
        generation = self._generation
        await trio.sleep_until(self._refreshed_at + _REFRESH_SPACING)
        self._refresh_wanted = False
        with contextlib.suppress(RedisError):  # none answers now: commands wait, ask again
            await self._refresh(generation)

    async def _refresh_periodically(self) -> None:
        while not self._closed:
            await trio.sleep(_REFRESH_PERIOD)
            with contextlib.suppress(RedisError):
                await self._refresh(self._generation)

    async def _refresh(self, seen: int) -> None:
        """Read the map from the first node that answers: the known primaries, then the
        seeds. Does nothing when another task refreshed since ``seen``."""
        async with self._refresh_lock:
            if self._generation != seen and self._map.uncovered == 0:
                return
            candidates = sorted(self._map.primaries, key=lambda n: (n.host, n.port))
            candidates += [Node(s.host, s.port) for s in self._config.seeds]
            failures = []
            for node in dict.fromkeys(candidates):
                try:
                    fresh = await self._read_map(node)
                except (RedisError, _NotSent) as exc:
                    failures.append(f"{node.address}: {getattr(exc, 'error', exc)}")
                    continue
                if fresh.uncovered == SLOTS:
                    failures.append(f"{node.address}: serves no slot (not a cluster yet?)")
                    continue
                self._install(fresh)
                return
            raise RedisConnectionError(
                "no node of the cluster answered CLUSTER SHARDS or SLOTS: " + "; ".join(failures)
            )

    async def _read_map(self, node: Node) -> SlotMap:
        [reply] = await self._send(node, [("CLUSTER", "SHARDS")], False)
        if isinstance(reply, ResponseError):
            if "cluster support disabled" in str(reply).lower():
                raise RedisConnectionError(
                    f"Redis at {node.address} is not a cluster node ({reply}): set"
                    " RedisConfig.cluster=False for a single server"
                )
            [reply] = await self._send(node, [("CLUSTER", "SLOTS")], False)  # Redis 6
            if isinstance(reply, ResponseError):
                raise reply
            return parse_slots(reply, node.host)
        return parse_shards(reply, node.host)

    def _install(self, fresh: SlotMap) -> None:
        gone = set(self._links) - fresh.primaries - {n for r in fresh.replicas.values() for n in r}
        self._map = fresh
        self._generation += 1
        self._refreshed_at = trio.current_time()
        self._changed.set()
        self._changed = trio.Event()
        for node in gone:  # a node that left: its commands in flight fail, as they would
            link = self._links.pop(node)
            if self._nursery is not None:
                self._nursery.start_soon(link.aclose)

    # -- the AsyncBackend contract ------------------------------------------------------

    def execute(self, args: Command, blocking: bool) -> Awaitable[Any]:
        return self._execute(args, blocking)

    async def _execute(self, args: Command, blocking: bool) -> Any:
        name = _name(args)
        if name in _EVERY_PRIMARY:
            return await self._on_every_primary(name, args)
        if name == "SCAN":
            return await self._scan(args)
        [reply] = await self._run(_Attempt(await self._slot([args])), [args], blocking)
        return reply

    async def execute_many(self, commands: Sequence[Command], blocking: bool) -> list[Any]:
        """A transaction (``MULTI`` … ``EXEC``) goes whole to its one slot's owner; other
        commands are grouped by node, sent to every node at once, redirected one by one
        where the cluster says so, and their replies returned in the caller's order."""
        if commands and _name(commands[0]) == "MULTI":
            return await self._run(_Attempt(await self._slot(commands)), list(commands), blocking)
        slots = [await self._slot([args]) for args in commands]
        groups: dict[Node | None, list[int]] = {}
        alone: list[int] = []  # answered per node: run as on their own
        for index, slot in enumerate(slots):
            if _name(commands[index]) in _PER_NODE:
                alone.append(index)
                continue
            owner = self._any_primary() if slot is None else self._map.owners[slot]
            groups.setdefault(owner, []).append(index)
        replies: list[Any] = [None] * len(commands)

        async def run_alone(position: int) -> None:
            replies[position] = await self._execute(commands[position], blocking)

        async def run_group(owner: Node | None, positions: list[int]) -> None:
            batch = [commands[i] for i in positions]
            if owner is not None:
                try:
                    answers = await self._send(owner, batch, blocking)
                except _NotSent:
                    answers = [None] * len(batch)  # each goes the long way below
            else:
                answers = [None] * len(batch)
            for position, answer in zip(positions, answers, strict=True):
                if answer is None or _first_trouble([answer]) is not None:
                    attempt = _Attempt(slots[position])
                    [answer] = await self._run(attempt, [commands[position]], blocking)
                replies[position] = answer

        async with trio.open_nursery() as nursery:
            for owner, positions in groups.items():
                nursery.start_soon(run_group, owner, positions)
            for position in alone:
                nursery.start_soon(run_alone, position)
        return replies

    async def _on_every_primary(self, name: str, args: Command) -> Any:
        if not self._map.primaries:
            await self._refresh(self._generation)
        answers: dict[Node, Any] = {}

        async def ask(node: Node) -> None:
            [answers[node]] = await self._send(node, [args], False)

        async with trio.open_nursery() as nursery:
            for node in self._map.primaries:
                nursery.start_soon(ask, node)
        for answer in answers.values():
            if isinstance(answer, ResponseError):
                return answer
        if name == "DBSIZE":
            return sum(answers.values())
        if name == "KEYS":
            return [key for node in sorted(answers, key=_order) for key in answers[node]]
        return next(iter(answers.values()))

    async def _scan(self, args: Command) -> Any:
        """SCAN over every primary in turn: the cursor's high bits say which one."""
        primaries = sorted(self._map.primaries, key=_order)
        cursor = int(args[1])
        index, position = cursor >> _CURSOR_SHIFT, cursor & ((1 << _CURSOR_SHIFT) - 1)
        if index >= len(primaries):
            return [b"0" if isinstance(args[1], bytes) else "0", []]
        [reply] = await self._send(primaries[index], [("SCAN", position, *args[2:])], False)
        if isinstance(reply, ResponseError):
            return reply
        next_position, keys = int(reply[0]), reply[1]
        if next_position == 0:
            index, next_position = index + 1, 0
            if index >= len(primaries):
                return ["0", keys]
        return [str((index << _CURSOR_SHIFT) | next_position), keys]

    async def reserve(self) -> ClusterReserved:
        return ClusterReserved(self)

    def pubsub(self) -> PubSub:
        """A classic pub/sub session on one node: a cluster carries every PUBLISH to
        every node, so any node's subscribers hear all of them."""
        node = self._any_primary()
        return PubSub(self._config.node(node.host, node.port))


def _order(node: Node) -> tuple[str, int]:
    return node.host, node.port


class _NotSent(Exception):
    """Connecting to a node failed: nothing was sent, so sending again is safe."""

    def __init__(self, error: RedisError) -> None:
        super().__init__(str(error))
        self.error = error


class ClusterReserved:
    """A watching pipeline's connection on a cluster (``pipe.watch()`` … ``EXEC``).

    It is bound on the first request to the owner of that request's slot (a WATCH names
    the keys), and every later request must stay in that slot: a transaction runs on
    one node. If the slot moves while watching, the transaction could not run there:
    :class:`~ailf.errors.WatchError`, which ``client.transaction()`` retries, on the
    new owner.
    """

    def __init__(self, backend: ClusterBackend) -> None:
        self._backend = backend
        self._slot: int | None = None
        self._reserved: Any = None
        self._released = False

    @property
    def closed(self) -> bool:
        return self._released or (self._reserved is not None and self._reserved.closed)

    async def request(self, commands: Sequence[Command], blocking: bool = False) -> list[Any]:
        backend = self._backend
        slot = await backend._slot(commands)
        if slot is not None:
            if self._slot is None:
                self._slot = slot
            elif slot != self._slot:
                raise CrossSlotError(
                    f"a watching pipeline bound to slot {self._slot} cannot send keys of slot"
                    f" {slot}: a transaction runs on one node; give the keys a common hash tag"
                )
        if self._reserved is None:
            owner = backend._owner(_Attempt(self._slot))
            if owner is None:
                await backend._refresh(backend._generation)
                owner = backend._owner(_Attempt(self._slot))
            if owner is None:
                raise ClusterUnavailableError(f"no node serves slot {self._slot}")
            self._reserved = await backend._link(owner).reserve()
        replies: list[Any] = await self._reserved.request(commands, blocking)
        moved = next((r for r in replies if _redirect(r) is not None), None)
        if moved is not None:
            backend._want_refresh()
            await self.release()
            raise WatchError(
                f"slot {self._slot} is moving ({moved}) while the pipeline watched it;"
                " the transaction did not run: read and try again"
            )
        return replies

    async def release(self) -> None:
        self._released = True
        if self._reserved is not None:
            await self._reserved.release()

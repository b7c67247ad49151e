"""Routing commands over a Redis Cluster, written once for every engine (sans-IO).

:class:`ClusterRouter` holds the slot map (:mod:`ailf.clients._topology`) and decides,
for each command, which node gets it, what a reply means and what to do next; it does
no I/O. Each operation is a generator of *steps* — :class:`Send` these commands to
that node, :class:`SendAll` several sends at once, :class:`Sleep`, :class:`AwaitMap`
(wait for a newer map), :class:`RefreshSoon` — that an engine carries out and answers:
the trio engine by awaiting (:mod:`ailf.clients._cluster`), the sync one by blocking
(:mod:`ailf.clients._cluster_sync`). The pipelines' :class:`~ailf.clients._pipeline.
PipelineQueue` is built the same way, for the same reason: one body cannot drift.

What the cluster answers, and what the router does (none of these replies means the
command ran, so each is safe to send again):

- ``MOVED slot host:port``: the slot lives elsewhere now. Patch the map, send there,
  and have the whole map refreshed soon.
- ``ASK slot host:port``: the slot is being migrated and this key already went. Send
  to the target once, preceded by ``ASKING`` *in the same send*, so that nothing can
  come between the two on a shared connection.
- ``TRYAGAIN`` (a multi-key command while its keys are split by a migration),
  ``CLUSTERDOWN``, ``LOADING``, ``MASTERDOWN``: back off and send again.
- :class:`~ailf.clients._errors.NotConnected` from the engine (connecting to the node
  failed, nothing was sent): the node is gone or failing over; wait for a newer map
  and send to whoever owns the slot then.

Every wait is bounded by ``cluster_retry_timeout``
(:class:`~ailf.errors.ClusterUnavailableError` past it), and redirects by
:data:`MAX_HOPS`. A connection that breaks while a command is in flight is not
retried: the command may have run (``retry_idempotent`` opts in for commands safe to
repeat, as on one server).

Keys of several slots in one command or transaction raise
:class:`~ailf.errors.CrossSlotError` before anything is sent. Keyless commands go to one
primary, except those answered per node: ``DBSIZE`` sums, ``KEYS`` concatenates,
``FLUSHDB``/``FLUSHALL`` run on every primary, and ``SCAN`` walks the primaries one
after the other behind one cursor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import attrs

from ailf.clients._errors import NotConnected
from ailf.clients._slots import SLOTS, KeySpec, command_keys, key_slot, learn
from ailf.clients._topology import Node, SlotMap, parse_shards, parse_slots, split_address
from ailf.config import RedisConfig
from ailf.errors import (
    ClusterUnavailableError,
    CrossSlotError,
    RedisConnectionError,
    RedisError,
    ResponseError,
)

__all__ = [
    "MAX_HOPS",
    "RETIRE_AFTER",
    "Attempt",
    "AwaitMap",
    "ClusterRouter",
    "RefreshSoon",
    "Send",
    "SendAll",
    "Sleep",
    "Steps",
]

Command = tuple[Any, ...]

#: Redirects followed for one command before giving up (a map changing under it).
MAX_HOPS = 16
#: Replies that say the command did not run and will run if sent again, later.
_RETRY_LATER = frozenset({"TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN"})
#: Keyless commands answered per node.
_EVERY_PRIMARY = frozenset({"DBSIZE", "KEYS", "FLUSHDB", "FLUSHALL"})
_PER_NODE = _EVERY_PRIMARY | {"SCAN"}
#: A node missing from this many maps in a row has its connections closed.
RETIRE_AFTER = 3
#: SCAN's cursor carries the index of the primary it is walking above this bit.
_CURSOR_SHIFT = 64


@attrs.frozen
class Send:
    """Send ``commands`` to ``node`` in one write; answer with their raw replies, or
    throw what failed (:class:`NotConnected` when nothing was sent)."""

    node: Node
    commands: list[Command]
    blocking: bool = False


@attrs.frozen
class SendAll:
    """Carry out several sends, at once if you can; answer with one entry per send: its
    replies, or the exception it raised."""

    sends: list[Send]


@attrs.frozen
class Sleep:
    seconds: float


@attrs.frozen
class AwaitMap:
    """Wait until the map is newer than ``seen`` (refreshing it if nobody does), or
    until ``until`` (the router's clock) at the latest."""

    seen: int
    until: float


@attrs.frozen
class RefreshSoon:
    """The map is suspect: refresh it soon, in the background if you can."""


#: What an operation yields, what it is answered with, what it returns.
Steps = Generator[Send | SendAll | Sleep | AwaitMap | RefreshSoon, Any, Any]


def name_of(args: Command) -> str:
    head = args[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()


def redirect_of(reply: Any) -> tuple[str, int, str] | None:
    """``(kind, slot, address)`` of a MOVED or ASK error reply, else None."""
    if not isinstance(reply, ResponseError):
        return None
    parts = str(reply).split()
    if len(parts) == 3 and parts[0] in ("MOVED", "ASK"):
        return parts[0], int(parts[1]), parts[2]
    return None


def trouble_in(replies: Sequence[Any]) -> ResponseError | None:
    """The first reply that redirects or asks to retry later, else None."""
    for reply in replies:
        if isinstance(reply, ResponseError) and (
            reply.code in _RETRY_LATER or redirect_of(reply) is not None
        ):
            return reply
    return None


def _order(node: Node) -> tuple[str, int]:
    return node.host, node.port


@attrs.define(eq=False)
class Attempt:
    """One command's (or one slot's group of commands') way through redirects."""

    slot: int | None
    deadline: float = math.inf
    hops: int = 0
    ask: Node | None = None
    backoff: float = 0.01
    last: str = ""


class ClusterRouter:
    """The slot map and the routing decisions; see the module docstring."""

    def __init__(self, config: RedisConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.map = SlotMap([None] * SLOTS)
        #: Bumped by every change of the map (a refresh, a MOVED): waiters compare it.
        self.generation = 0
        #: Nodes missing from the map, by how many maps in a row.
        self._missing: dict[Node, int] = {}

    # -- where things go --------------------------------------------------------------

    def any_primary(self) -> Node:
        """The node keyless commands go to: the first primary, or the first seed."""
        primaries = sorted(self.map.primaries, key=_order)
        if primaries:
            return primaries[0]
        seed = self.config.seeds[0]
        return Node(seed.host, seed.port)

    def primaries(self) -> list[Node]:
        return sorted(self.map.primaries, key=_order)

    def owner(self, slot: int | None) -> Node | None:
        return self.any_primary() if slot is None else self.map.owners[slot]

    def slot(self, commands: Sequence[Command]) -> Steps:
        """The one slot every key of ``commands`` hashes to (None: no key at all);
        :class:`CrossSlotError` naming the keys when there is more than one."""
        slots: dict[int, list[Any]] = {}
        for args in commands:
            keys = command_keys(args)
            if keys is None:
                keys = yield from self._learn(args)
            elif not keys and name_of(args) == "SPUBLISH" and len(args) > 1:
                keys = [args[1]]  # not a key, but it lives in its slot's shard as one
            for key in keys:
                slots.setdefault(key_slot(key), []).append(key)
        if len(slots) > 1:
            listed = "; ".join(
                f"slot {slot}: {', '.join(repr(k) for k in keys)}" for slot, keys in slots.items()
            )
            what = (
                f"{name_of(commands[0])} transaction" if len(commands) > 1 else name_of(commands[0])
            )
            raise CrossSlotError(
                f"keys of {len(slots)} hash slots in one {what}: {listed}. A cluster runs it"
                " only when every key is in one slot: give them a common hash tag, e.g."
                " {user-42}:cart and {user-42}:orders"
            )
        return next(iter(slots), None)

    def _learn(self, args: Command) -> Steps:
        """The keys of a command the table does not know: its key positions from the
        server (``COMMAND INFO``, remembered), or ``COMMAND GETKEYS`` for a command
        whose keys move about (``first`` is 0 in its COMMAND INFO)."""
        name = name_of(args)
        node = self.any_primary()
        [info] = yield Send(node, [("COMMAND", "INFO", name)])
        entry = info[0] if isinstance(info, list) and info else None
        if not (isinstance(entry, list) and len(entry) >= 6):
            return []  # unknown to the server too: it will say so itself
        if int(entry[3]) > 0:
            learn(name, KeySpec(int(entry[3]), int(entry[4]), int(entry[5]) or 1))
            return command_keys(args) or []
        [keys] = yield Send(node, [("COMMAND", "GETKEYS", *args)])
        return keys if isinstance(keys, list) else []

    # -- running commands -------------------------------------------------------------

    def execute(self, args: Command, blocking: bool) -> Steps:
        """One command's reply."""
        name = name_of(args)
        if name in _EVERY_PRIMARY:
            return (yield from self._on_every_primary(name, args))
        if name == "SCAN":
            return (yield from self._scan(args))
        slot = yield from self.slot([args])
        [reply] = yield from self.run(Attempt(slot), [args], blocking)
        return reply

    def execute_many(self, commands: Sequence[Command], blocking: bool) -> Steps:
        """A transaction (``MULTI`` … ``EXEC``) goes whole to its one slot's owner; other
        commands are grouped by node, sent to every node at once, redirected one by one
        where the cluster says so, and their replies returned in the caller's order."""
        commands = list(commands)
        if commands and name_of(commands[0]) == "MULTI":
            slot = yield from self.slot(commands)
            return (yield from self.run(Attempt(slot), commands, blocking))
        slots: list[int | None] = []
        for args in commands:
            if name_of(args) == "WAIT" and slots:
                # WAIT counts the replicas of this connection's earlier writes: it goes
                # with the command before it, to that command's node and connection.
                slots.append(slots[-1])
                continue
            slots.append((yield from self.slot([args])))
        groups: dict[Node, list[int]] = {}
        replies: list[Any] = [None] * len(commands)
        later: list[int] = []  # answered per node, or no node known: one by one
        for index, slot in enumerate(slots):
            owner = self.owner(slot)
            if owner is None or name_of(commands[index]) in _PER_NODE:
                later.append(index)
            else:
                groups.setdefault(owner, []).append(index)
        sends = [
            Send(node, [commands[i] for i in positions], blocking)
            for node, positions in groups.items()
        ]
        outcomes = (yield SendAll(sends)) if sends else []
        for positions, outcome in zip(groups.values(), outcomes, strict=True):
            if isinstance(outcome, NotConnected):
                later.extend(positions)
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            for position, reply in zip(positions, outcome, strict=True):
                if trouble_in([reply]) is None:
                    replies[position] = reply
                else:
                    later.append(position)
        for position in sorted(later):
            args = commands[position]
            if name_of(args) in _PER_NODE:
                replies[position] = yield from self.execute(args, blocking)
            else:
                attempt = Attempt(slots[position])
                [replies[position]] = yield from self.run(attempt, [args], blocking)
        return replies

    def run(self, attempt: Attempt, commands: list[Command], blocking: bool) -> Steps:
        """Send ``commands`` (one slot's) to the slot's owner, following redirects and
        waiting out a cluster that cannot serve the slot, within the bounds."""
        while True:
            node = attempt.ask or self.owner(attempt.slot)
            if node is None:
                attempt.last = f"no node serves slot {attempt.slot}"
                yield from self._await_map(attempt)
                continue
            asking = attempt.ask is not None
            attempt.ask = None
            sent = [("ASKING",), *commands] if asking else commands
            try:
                replies = yield Send(node, sent, blocking)
            except NotConnected as exc:
                attempt.last = f"{node.address}: {exc}"
                yield RefreshSoon()
                yield from self._await_map(attempt)
                continue
            except RedisConnectionError:
                yield RefreshSoon()  # may have run: not sent again, but the map is suspect
                raise
            if asking:
                replies = replies[1:]
            trouble = trouble_in(replies)
            if trouble is None:
                return replies
            attempt.hops += 1
            attempt.last = f"{node.address} answered {trouble}"
            if attempt.hops > MAX_HOPS:
                raise ClusterUnavailableError(
                    f"gave up on slot {attempt.slot} after {MAX_HOPS} redirects; last:"
                    f" {attempt.last}"
                )
            redirect = redirect_of(trouble)
            if redirect is None:  # TRYAGAIN, CLUSTERDOWN...: later
                if trouble.code == "CLUSTERDOWN":
                    yield RefreshSoon()
                yield from self._back_off(attempt)
                continue
            kind, slot, address = redirect
            host, port = split_address(address, node.host)
            if kind == "ASK":
                attempt.ask = Node(host, port)
            else:
                self.map.move(slot, Node(host, port))
                self.generation += 1
                yield RefreshSoon()

    def _back_off(self, attempt: Attempt) -> Steps:
        self._start_clock(attempt)
        if self.clock() + attempt.backoff > attempt.deadline:
            raise self._unavailable(attempt)
        yield Sleep(attempt.backoff)
        attempt.backoff = min(attempt.backoff * 2, 1.0)

    def _await_map(self, attempt: Attempt) -> Steps:
        self._start_clock(attempt)
        if self.clock() >= attempt.deadline:
            raise self._unavailable(attempt)
        yield AwaitMap(self.generation, min(attempt.deadline, self.clock() + attempt.backoff))
        attempt.backoff = min(attempt.backoff * 2, 1.0)

    def _start_clock(self, attempt: Attempt) -> None:
        if attempt.deadline == math.inf:
            attempt.deadline = self.clock() + self.config.cluster_retry_timeout

    def _unavailable(self, attempt: Attempt) -> ClusterUnavailableError:
        return ClusterUnavailableError(
            f"no node of the cluster served slot {attempt.slot} within"
            f" cluster_retry_timeout={self.config.cluster_retry_timeout} s; last:"
            f" {attempt.last}"
        )

    def _on_every_primary(self, name: str, args: Command) -> Steps:
        if not self.map.primaries:
            yield AwaitMap(self.generation, self.clock())
        nodes = self.primaries()
        outcomes = yield SendAll([Send(node, [args]) for node in nodes])
        answers = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            answers.append(outcome[0])
        refused = next((a for a in answers if isinstance(a, ResponseError)), None)
        if refused is not None:
            return refused
        if name == "DBSIZE":
            return sum(answers)
        if name == "KEYS":
            return [key for keys in answers for key in keys]
        return answers[0]

    def _scan(self, args: Command) -> Steps:
        """SCAN over every primary in turn: the cursor's high bits say which one."""
        if not self.map.primaries:
            yield AwaitMap(self.generation, self.clock())
        primaries = self.primaries()
        cursor = int(args[1])
        index, position = cursor >> _CURSOR_SHIFT, cursor & ((1 << _CURSOR_SHIFT) - 1)
        if index >= len(primaries):
            return ["0", []]
        [reply] = yield Send(primaries[index], [("SCAN", position, *args[2:])])
        if isinstance(reply, ResponseError):
            return reply
        next_position, keys = int(reply[0]), reply[1]
        if next_position == 0:
            index += 1
            if index >= len(primaries):
                return ["0", keys]
        return [str((index << _CURSOR_SHIFT) | next_position), keys]

    # -- the map ------------------------------------------------------------------------

    def read_map(self) -> Steps:
        """A fresh map from the first node that answers: the known primaries, then the
        seeds; :class:`RedisConnectionError` listing why when none does."""
        candidates = self.primaries() + [Node(s.host, s.port) for s in self.config.seeds]
        failures = []
        for node in dict.fromkeys(candidates):
            try:
                fresh = yield from self._read_map_at(node)
            except RedisError as exc:
                failures.append(f"{node.address}: {exc}")
                continue
            if fresh.uncovered == SLOTS:
                failures.append(f"{node.address}: serves no slot (not a cluster yet?)")
                continue
            return fresh
        raise RedisConnectionError(
            "no node of the cluster answered CLUSTER SHARDS or SLOTS: " + "; ".join(failures)
        )

    def _read_map_at(self, node: Node) -> Steps:
        [reply] = yield Send(node, [("CLUSTER", "SHARDS")])
        if isinstance(reply, ResponseError):
            if "cluster support disabled" in str(reply).lower():
                raise RedisConnectionError(
                    f"Redis at {node.address} is not a cluster node ({reply}): set"
                    " RedisConfig.cluster=False for a single server"
                )
            [reply] = yield Send(node, [("CLUSTER", "SLOTS")])  # Redis 6: no SHARDS
            if isinstance(reply, ResponseError):
                raise reply
            return parse_slots(reply, node.host)
        return parse_shards(reply, node.host)

    def install(self, fresh: SlotMap) -> set[Node]:
        """Take ``fresh`` as the map; the nodes to close links to: those missing from
        :data:`RETIRE_AFTER` maps in a row. (Not at once: a node in the middle of a
        failover can be missing from one map, or listed as not online, while its
        connections still carry commands.)"""
        known = fresh.primaries | {n for replicas in fresh.replicas.values() for n in replicas}
        old = self.map.primaries | {n for replicas in self.map.replicas.values() for n in replicas}
        self.map = fresh
        self.generation += 1
        for node in old - known:
            self._missing[node] = self._missing.get(node, 0) + 1
        for node in known:
            self._missing.pop(node, None)
        retired = {node for node, count in self._missing.items() if count >= RETIRE_AFTER}
        for node in retired:
            del self._missing[node]
        return retired

    def stale(self, seen: int) -> bool:
        """Whether the map still is the one of generation ``seen`` (or covers nothing)."""
        return self.generation == seen or self.map.uncovered == SLOTS

    # -- a watching pipeline ----------------------------------------------------------

    def bound_slot(self, bound: int | None, commands: Sequence[Command]) -> Steps:
        """The slot a watching pipeline is bound to after sending ``commands``:
        :class:`CrossSlotError` if they name another slot than the one it is bound to."""
        slot = yield from self.slot(commands)
        if slot is None:
            return bound
        if bound is not None and slot != bound:
            raise CrossSlotError(
                f"a watching pipeline bound to slot {bound} cannot send keys of slot {slot}:"
                " a transaction runs on one node; give the keys a common hash tag"
            )
        return slot

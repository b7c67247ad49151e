"""A Redis Cluster's layout: which node owns each hash slot, read from the cluster itself.

``CLUSTER SHARDS`` (Redis ≥ 7) lists each shard's slot ranges and nodes, with their
role and health; ``CLUSTER SLOTS`` (every version) lists each slot range's primary and
replicas. Either becomes a :class:`SlotMap`: one entry per slot, so routing a command
is one list index. The parsers are strict about what they use and lenient about what
they do not (a new field, an unknown role), since the reply comes from whichever node
answered, whatever its version.

What the replies are known to hold, and what the parsers do about it:

- a shard whose primary failed may list no slots (Redis #13414), and after a failover
  the dead old primary stays listed in a shard of its own, ``health fail``: shards
  without slots are skipped, and only ``online`` nodes are taken;
- a node's endpoint may be ``?`` or empty ("unknown"): the node that answered is
  meant, so its address stands in;
- ``CLUSTER SLOTS`` leaves out replicas still syncing: fine, routing needs primaries.

Slots no shard claims are ``None`` (a cluster being built or resharded); a client
waits for a newer map before sending there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ailf.clients._slots import SLOTS

__all__ = ["Node", "SlotMap", "parse_shards", "parse_slots", "split_address"]


@attrs.frozen(cache_hash=True)
class Node:
    """One cluster node, by the address clients reach it at."""

    host: str
    port: int
    id: str = attrs.field(default="", eq=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.define(eq=False)
class SlotMap:
    """The owner (primary) of each of the 16384 slots, and each primary's replicas.

    ``owners[slot]`` is the primary serving the slot, or None when no node claims it.
    A ``MOVED`` reply patches one slot in place (:meth:`move`) and bumps ``version``;
    a refresh replaces the whole map.
    """

    owners: list[Node | None]
    replicas: dict[Node, tuple[Node, ...]] = attrs.field(factory=dict)
    version: int = 0
    _primaries: frozenset[Node] | None = attrs.field(default=None, init=False, repr=False)

    @property
    def primaries(self) -> frozenset[Node]:
        """Every node that owns at least one slot (kept until the map changes: routing
        asks often, and there are 16384 slots to look at)."""
        if self._primaries is None:
            self._primaries = frozenset(node for node in self.owners if node is not None)
        return self._primaries

    @property
    def uncovered(self) -> int:
        """How many slots no node claims."""
        return self.owners.count(None)

    def move(self, slot: int, node: Node) -> None:
        """Record what a ``MOVED`` reply said: ``slot`` is served by ``node`` now."""
        self.owners[slot] = node
        self.version += 1
        self._primaries = None


def split_address(address: str, default_host: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts included: split at the last colon) as a pair; an empty
    host — ``MOVED 3999 :6380`` — means ``default_host``, the node that said it."""
    host, _, port = address.rpartition(":")
    return host or default_host, int(port)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _host(endpoint: Any, answered_by: str) -> str:
    host = _text(endpoint) if endpoint is not None else ""
    return answered_by if host in ("", "?") else host


def parse_shards(reply: Sequence[Any], answered_by: str) -> SlotMap:
    """A :class:`SlotMap` from a ``CLUSTER SHARDS`` reply (RESP2: flat field lists),
    as given by the node at host ``answered_by``."""
    owners: list[Node | None] = [None] * SLOTS
    replicas: dict[Node, tuple[Node, ...]] = {}
    for shard in reply:
        fields = _pairs(shard)
        ranges = [int(x) for x in fields.get("slots") or ()]
        if not ranges:
            continue
        primary: Node | None = None
        followers: list[Node] = []
        for raw in fields.get("nodes") or ():
            node = _pairs(raw)
            if _text(node.get("health", "online")) != "online":
                continue
            port = node.get("port") or node.get("tls-port")
            if port is None:
                continue
            found = Node(
                _host(node.get("endpoint") or node.get("ip"), answered_by),
                int(port),
                _text(node.get("id", "")),
            )
            if _text(node.get("role")) == "master":
                primary = found
            else:
                followers.append(found)
        if primary is None:
            continue
        replicas[primary] = tuple(followers)
        for start, end in zip(ranges[::2], ranges[1::2], strict=True):
            owners[start : end + 1] = [primary] * (end - start + 1)
    return SlotMap(owners, replicas)


def parse_slots(reply: Sequence[Any], answered_by: str) -> SlotMap:
    """A :class:`SlotMap` from a ``CLUSTER SLOTS`` reply, as given by the node at host
    ``answered_by`` (for servers without ``CLUSTER SHARDS``)."""
    owners: list[Node | None] = [None] * SLOTS
    replicas: dict[Node, tuple[Node, ...]] = {}
    for entry in reply:
        start, end, primary_raw, *replica_raws = entry
        nodes = [
            Node(_host(raw[0], answered_by), int(raw[1]), _text(raw[2]) if len(raw) > 2 else "")
            for raw in (primary_raw, *replica_raws)
        ]
        primary = nodes[0]
        replicas[primary] = tuple(dict.fromkeys((*replicas.get(primary, ()), *nodes[1:])))
        owners[int(start) : int(end) + 1] = [primary] * (int(end) - int(start) + 1)
    return SlotMap(owners, replicas)

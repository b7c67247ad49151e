"""Reading a cluster's layout: CLUSTER SHARDS and CLUSTER SLOTS from a real cluster give
the same map, and recorded replies with the known oddities parse as documented."""

from __future__ import annotations

import pytest
import redis

from ailf import RedisClusterServer
from ailf.clients._slots import key_slot
from ailf.clients._topology import Node, SlotMap, parse_shards, parse_slots, split_address


def raw_reply(port: int | None, *command: str) -> list:
    link = redis.Redis(port=port, protocol=2)  # as ailf's clients speak
    link.response_callbacks.clear()
    try:
        return link.execute_command(*command)
    finally:
        link.close()


def test_shards_and_slots_give_the_same_map(cluster: RedisClusterServer) -> None:
    port = cluster.nodes[0].port
    shards = parse_shards(raw_reply(port, "CLUSTER", "SHARDS"), "127.0.0.1")
    slots = parse_slots(raw_reply(port, "CLUSTER", "SLOTS"), "127.0.0.1")
    assert shards.owners == slots.owners
    assert shards.uncovered == 0
    assert {node.port for node in shards.primaries} == {n.port for n in cluster.nodes[:3]}
    for primary, replicas in shards.replicas.items():
        assert len(replicas) == 1 and replicas[0].port in {n.port for n in cluster.nodes[3:]}
        assert replicas == slots.replicas[primary]


def test_the_map_routes_keys_where_the_cluster_does(cluster: RedisClusterServer) -> None:
    layout = parse_shards(raw_reply(cluster.nodes[1].port, "CLUSTER", "SHARDS"), "127.0.0.1")
    for n in range(200):
        key = f"user-{n}"
        owner = layout.owners[key_slot(key)]
        assert owner is not None
        link = redis.Redis(port=owner.port)
        assert link.set(key, n)  # no MOVED: the owner takes the write
        link.close()


DEAD_PRIMARY_SHARDS = [
    [
        b"slots",
        [b"0", b"5460"],
        b"nodes",
        [
            [b"id", b"b" * 40, b"port", 7004, b"ip", b"127.0.0.1", b"endpoint", b"127.0.0.1",
             b"role", b"master", b"replication-offset", 10, b"health", b"online"],
        ],
    ],
    [
        b"slots",
        [],
        b"nodes",
        [
            [b"id", b"a" * 40, b"port", 7001, b"ip", b"127.0.0.1", b"endpoint", b"127.0.0.1",
             b"role", b"master", b"replication-offset", 9, b"health", b"fail"],
        ],
    ],
    [
        b"slots",
        [b"5461", b"10922", b"10923", b"16383"],
        b"nodes",
        [
            [b"id", b"c" * 40, b"port", 7002, b"ip", b"10.0.0.2", b"endpoint", b"?",
             b"hostname", b"redis-2", b"role", b"master", b"health", b"online"],
            [b"id", b"d" * 40, b"port", 7005, b"ip", b"10.0.0.5", b"endpoint", b"10.0.0.5",
             b"role", b"replica", b"health", b"loading"],
            [b"id", b"e" * 40, b"port", 7006, b"ip", b"10.0.0.6", b"endpoint", b"10.0.0.6",
             b"role", b"replica", b"health", b"online", b"future-field", b"x"],
        ],
    ],
]  # fmt: skip


def test_recorded_shards_with_a_dead_primary_and_unknown_endpoints() -> None:
    layout = parse_shards(DEAD_PRIMARY_SHARDS, "192.168.1.9")
    assert layout.owners[0] == layout.owners[5460] == Node("127.0.0.1", 7004)
    assert layout.owners[5461] == layout.owners[16383] == Node("192.168.1.9", 7002)
    assert Node("127.0.0.1", 7001) not in layout.primaries  # failed: not routed to
    assert layout.replicas[Node("192.168.1.9", 7002)] == (Node("10.0.0.6", 7006),)
    assert layout.uncovered == 0


def test_uncovered_slots_are_none_and_a_move_patches_one_slot() -> None:
    layout = parse_slots([[0, 99, [b"127.0.0.1", 7000, b"x"]]], "127.0.0.1")
    assert layout.uncovered == 16384 - 100 and layout.owners[100] is None
    version = layout.version
    layout.move(100, Node("127.0.0.1", 7001))
    assert layout.owners[100] == Node("127.0.0.1", 7001) and layout.version == version + 1
    assert isinstance(layout, SlotMap)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("10.0.0.1:6379", "10.0.0.1", 6379), (":6380", "10.9.9.9", 6380), ("::1:7000", "::1", 7000)],
)
def test_addresses_in_redirects(address: str, host: str, port: int) -> None:
    assert split_address(address, "10.9.9.9") == (host, port)

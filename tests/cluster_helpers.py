"""What cluster tests do to a real RedisClusterServer: find who owns a slot, move a slot
between primaries (all of it, or only half-way, to hold it MIGRATING), fail over, and
read a node's command counters."""

from __future__ import annotations

import time
from typing import Any

import redis

from ailf import RedisClient, RedisClusterServer, RedisConfig
from ailf.clients._slots import key_slot


def link(port: int | None) -> redis.Redis:
    """A plain redis-py connection to one node, RESP2, replies as they come."""
    client = redis.Redis(port=port, decode_responses=True, protocol=2)
    client.response_callbacks.clear()
    return client


def call(port: int | None, *args: Any) -> Any:
    client = link(port)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def node_id(port: int | None) -> str:
    for line in call(port, "CLUSTER", "NODES").splitlines():
        if "myself" in line.split()[2]:
            return line.split()[0]
    raise AssertionError("no myself line")


def owner_port(cluster: RedisClusterServer, key: str) -> int:
    """The port of the primary serving ``key``'s slot, as the cluster says now."""
    slot = key_slot(key)
    for start, end, primary, *_ in call(cluster.nodes[0].port, "CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return int(primary[1])
    raise AssertionError(f"slot {slot} has no owner")


def primary_ports(cluster: RedisClusterServer) -> list[int]:
    return sorted({int(entry[2][1]) for entry in call(cluster.nodes[0].port, "CLUSTER", "SLOTS")})


def emptied(cluster: RedisClusterServer) -> RedisConfig:
    """A config for ``cluster`` after FLUSHALL on every primary (a test's clean start)."""
    for port in primary_ports(cluster):
        RedisClient(cluster.nodes[0].config.replace(port=port)).execute_command("FLUSHALL")
    return RedisConfig.from_url(cluster.url)


def wait_until(predicate: Any, seconds: float = 15.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if predicate():
                return time.monotonic() - started
        except redis.RedisError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"not true within {seconds} s")


def begin_migration(slot: int, source: int, target: int) -> None:
    """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on ``source``."""
    call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))


def migrate_keys(slot: int, source: int, target: int, keys: list[str] | None = None) -> None:
    """MIGRATE the given keys (default: every key of the slot) from source to target."""
    if keys is None:
        keys = call(source, "CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if keys:
        call(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)


def end_migration(cluster: RedisClusterServer, slot: int, target: int) -> None:
    """Give ``slot`` to ``target`` on every primary, and wait until all agree."""
    owner = node_id(target)
    for port in primary_ports(cluster):
        call(port, "CLUSTER", "SETSLOT", slot, "NODE", owner)
    wait_until(lambda: all(_owner_of(n.port, slot) == target for n in cluster.nodes[:3]))


def _owner_of(port: int | None, slot: int) -> int | None:
    for start, end, primary, *_ in call(port, "CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return int(primary[1])
    return None


def move_slot(cluster: RedisClusterServer, slot: int, target: int) -> None:
    """Move ``slot`` with its keys to the primary at ``target``."""
    source = _owner_of(cluster.nodes[0].port, slot)
    assert source is not None and source != target
    begin_migration(slot, source, target)
    migrate_keys(slot, source, target)
    end_migration(cluster, slot, target)


def replica_of(cluster: RedisClusterServer, primary: int) -> int:
    for node in cluster.nodes:
        info = call(node.port, "INFO", "replication")
        if "role:slave" in info and f"master_port:{primary}" in info:
            assert node.port is not None
            return node.port
    raise AssertionError(f"no replica of {primary}")


def fail_over(cluster: RedisClusterServer, replica: int) -> None:
    """CLUSTER FAILOVER on ``replica`` (a planned one: no write is lost), then wait until
    every node sees it as a primary."""
    for _ in range(3):
        call(replica, "CLUSTER", "FAILOVER")
        try:
            wait_until(lambda: replica in primary_ports(cluster), 3)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{replica} did not take over")


def calls(port: int | None, command: str) -> int:
    """How many times the node ran ``command`` (INFO commandstats)."""
    stats = call(port, "INFO", "commandstats")
    for line in stats.splitlines():
        if line.startswith(f"cmdstat_{command.lower()}:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0

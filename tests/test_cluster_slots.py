"""Hash slots and the key table a cluster client routes by, pinned to a real server:
``key_slot`` to ``CLUSTER KEYSLOT`` on a cluster-enabled node, and every command's keys
to ``COMMAND GETKEYS``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from ailf import RedisClusterServer
from ailf.clients._slots import SLOTS, KeySpec, command_keys, key_slot, learn


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[redis.Redis]:
    """A one-node cluster, to answer CLUSTER KEYSLOT."""
    with RedisClusterServer(primaries=1, replicas=0) as cluster:
        client = redis.Redis(port=cluster.nodes[0].port)
        yield client
        client.close()


EDGES = [
    b"123456789",
    b"foo",
    b"{user1000}.following",
    b"{user1000}.followers",
    b"foo{}{bar}",
    b"foo{{bar}}zap",
    b"foo{bar}{zap}",
    b"{}",
    b"{a",
    b"",
    "clé-ünïcode".encode(),
    b"ailf:{shop}:mailbox:echo",
]


@pytest.mark.parametrize("key", EDGES)
def test_key_slot_is_the_servers(cluster_node: redis.Redis, key: bytes) -> None:
    assert key_slot(key) == cluster_node.execute_command("CLUSTER", "KEYSLOT", key)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=20).map(str.encode))
def test_key_slot_of_any_key_is_the_servers(cluster_node: redis.Redis, key: bytes) -> None:
    assert key_slot(key) == cluster_node.execute_command("CLUSTER", "KEYSLOT", key)


def test_str_bytes_and_numbers_hash_as_sent() -> None:
    assert key_slot("é") == key_slot("é".encode())
    assert key_slot(42) == key_slot(b"42")
    assert 0 <= key_slot(b"x") < SLOTS
    assert key_slot("{t}a") == key_slot("{t}b") == key_slot("t")


#: Commands as ailf's clients send them, with their keys named k1, k2...
COMMANDS: list[tuple[Any, ...]] = [
    ("GET", "k1"),
    ("SET", "k1", "v", "PX", "100", "NX"),
    ("MGET", "k1", "k2", "k3"),
    ("MSET", "k1", "a", "k2", "b"),
    ("DEL", "k1", "k2"),
    ("UNLINK", "k1"),
    ("EXISTS", "k1", "k2"),
    ("HSET", "k1", "f", "v"),
    ("HGETALL", "k1"),
    ("LPUSH", "k1", "a", "b"),
    ("BLPOP", "k1", "k2", "0"),
    ("BRPOP", "k1", "1"),
    ("BLMOVE", "k1", "k2", "LEFT", "RIGHT", "0"),
    ("BLMPOP", "0", "2", "k1", "k2", "LEFT"),
    ("RPOPLPUSH", "k1", "k2"),
    ("SADD", "k1", "m"),
    ("ZADD", "k1", "1", "m"),
    ("ZRANGEBYSCORE", "k1", "-inf", "+inf"),
    ("XADD", "k1", "MAXLEN", "~", "10", "*", "f", "v"),
    ("XREAD", "COUNT", "10", "STREAMS", "k1", "k2", "0", "0"),
    ("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "BLOCK", "10", "STREAMS", "k1", ">"),
    ("XACK", "k1", "g", "1-0", "2-0"),
    ("XPENDING", "k1", "g", "-", "+", "10"),
    ("XCLAIM", "k1", "g", "c", "0", "1-0"),
    ("XAUTOCLAIM", "k1", "g", "c", "0", "0-0"),
    ("XGROUP", "CREATE", "k1", "g", "0", "MKSTREAM"),
    ("XGROUP", "DELCONSUMER", "k1", "g", "c"),
    ("XINFO", "STREAM", "k1"),
    ("XINFO", "GROUPS", "k1"),
    ("XTRIM", "k1", "MINID", "~", "0"),
    ("EVAL", "return 1", "2", "k1", "k2", "arg"),
    ("EXPIRE", "k1", "10"),
    ("TYPE", "k1"),
    ("WATCH", "k1", "k2"),
    ("OBJECT", "ENCODING", "k1"),
    ("MEMORY", "USAGE", "k1"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(map(str, c[:2])) for c in COMMANDS])
def test_the_key_table_agrees_with_the_server(redis_config: Any, args: tuple[Any, ...]) -> None:
    client = redis.Redis(port=redis_config.port, decode_responses=True)
    client.set_response_callback("COMMAND", lambda reply, **_: reply)  # raw, not parsed
    try:
        expected = client.execute_command("COMMAND", "GETKEYS", *args)
    finally:
        client.close()
    assert command_keys(args) == expected


@pytest.mark.parametrize(
    "args", [("PING",), ("PUBLISH", "ch", "x"), ("DBSIZE",), ("WAIT", "1", "0"), ("XREAD", "COUNT")]
)
def test_keyless_commands(args: tuple[Any, ...]) -> None:
    assert command_keys(args) == []


def test_an_unknown_command_is_learned_once() -> None:
    assert command_keys(("NOSUCHCMD", "k1", "k2")) is None
    learn("nosuchcmd", KeySpec(1, -1))
    assert command_keys(("NOSUCHCMD", "k1", "k2")) == ["k1", "k2"]

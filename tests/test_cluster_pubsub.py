"""Pub/sub on a real cluster: classic channels on one node, sharded channels on their
slots' primaries, and both subscribed again where they live when a slot moves, a
primary fails over or dies."""

from __future__ import annotations

from typing import Any

import trio
from cluster_helpers import fail_over, move_slot, owner_port, primary_ports, replica_of

from ailf import AsyncRedisClient, RedisClusterServer, RedisConfig
from ailf.clients._slots import key_slot


async def heard(session: Any, kind: str, channel: str, seconds: float = 10) -> list[Any]:
    """Every message of ``kind`` on ``channel`` that arrives within ``seconds``, stopping
    at the first."""
    with trio.move_on_after(seconds):
        async for message in session:
            if message["type"] == kind and message["channel"] == channel:
                return [message["data"]]
    return []


async def publish_until_heard(
    client: AsyncRedisClient, session: Any, channel: str, sharded: bool, seconds: float = 15
) -> int:
    """Publish numbered messages until the session hears one; how many were lost first."""
    publish = client.spublish if sharded else client.publish
    kind = "smessage" if sharded else "message"
    with trio.fail_after(seconds):
        sent = 0
        while True:
            await publish(channel, str(sent))
            got = await heard(session, kind, channel, 0.1)
            if got:
                return int(got[0])
            sent += 1


async def test_classic_and_sharded_channels_across_the_cluster(
    fresh_cluster: RedisClusterServer,
) -> None:
    config = RedisConfig.from_url(fresh_cluster.url)
    channels = [f"room-{n}" for n in range(12)]
    assert len({owner_port(fresh_cluster, c) for c in channels}) == 3  # every primary has some
    async with AsyncRedisClient(config) as client, client.pubsub() as session:
        await session.subscribe("news")
        await session.ssubscribe(*channels)
        assert session.shard_channels == set(channels)
        await client.publish("news", "hello")
        assert await heard(session, "message", "news") == ["hello"]
        for channel in channels:
            assert await client.spublish(channel, f"to {channel}") == 1
            assert await heard(session, "smessage", channel) == [f"to {channel}"]
        await session.sunsubscribe(channels[0])
        assert await client.spublish(channels[0], "nobody") == 0


async def test_messages_handed_to_a_handler_from_every_node(
    fresh_cluster: RedisClusterServer,
) -> None:
    config = RedisConfig.from_url(fresh_cluster.url)
    channels = [f"room-{n}" for n in range(6)]
    handled: list[Any] = []
    async with AsyncRedisClient(config) as client, client.pubsub() as session:
        session.deliver_to(lambda message: handled.append((message["type"], message["data"])))
        await session.subscribe("news")
        await session.ssubscribe(*channels)
        await client.publish("news", "hello")
        for channel in channels:
            await client.spublish(channel, channel)
        with trio.fail_after(10):
            while len(handled) < 7:  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert sorted(handled) == [("message", "hello")] + [("smessage", c) for c in channels]


async def test_a_sharded_channel_follows_its_slot(fresh_cluster: RedisClusterServer) -> None:
    config = RedisConfig.from_url(fresh_cluster.url)
    async with AsyncRedisClient(config) as client, client.pubsub() as session:
        await session.ssubscribe("{moving}chat")
        slot = key_slot("{moving}chat")
        source = owner_port(fresh_cluster, "{moving}chat")
        target = next(p for p in primary_ports(fresh_cluster) if p != source)
        await trio.to_thread.run_sync(move_slot, fresh_cluster, slot, target)
        lost = await publish_until_heard(client, session, "{moving}chat", sharded=True)
        assert lost <= 20  # only while it was between nodes (milliseconds)


async def test_channels_survive_a_planned_failover(fresh_cluster: RedisClusterServer) -> None:
    config = RedisConfig.from_url(fresh_cluster.url)
    async with AsyncRedisClient(config) as client, client.pubsub() as session:
        await session.subscribe("classic")
        await session.ssubscribe("{fo}chat")
        primary = owner_port(fresh_cluster, "{fo}chat")
        await trio.to_thread.run_sync(fail_over, fresh_cluster, replica_of(fresh_cluster, primary))
        await publish_until_heard(client, session, "{fo}chat", sharded=True)
        await publish_until_heard(client, session, "classic", sharded=False)


async def test_channels_survive_a_killed_primary(fresh_cluster: RedisClusterServer) -> None:
    """The classic session's node and a sharded channel's primary are SIGKILLed: both
    are subscribed again once the replica took over (about two node timeouts)."""
    config = RedisConfig.from_url(fresh_cluster.url)
    async with AsyncRedisClient(config) as client, client.pubsub() as session:
        await session.subscribe("classic")
        await session.ssubscribe("{kill}chat")
        await client.spublish("{kill}chat", "before")
        assert await heard(session, "smessage", "{kill}chat") == ["before"]
        victim = owner_port(fresh_cluster, "{kill}chat")
        next(n for n in fresh_cluster.nodes if n.port == victim).kill()
        await publish_until_heard(client, session, "{kill}chat", sharded=True, seconds=20)
        await publish_until_heard(client, session, "classic", sharded=False, seconds=20)

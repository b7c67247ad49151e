"""``Runtime(wait_replicas=N)``: a send returns once N replicas have the message, and
raises NotReplicated, naming the entry, when they do not confirm in time
(docs/reliability.md#replication)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from cluster_helpers import wait_until

from ailf import Agent, ConfigError, Message, NotReplicated, RedisServer, Runtime


class Echo(Agent):
    async def on_message(self, message: Message[Any]) -> Any:
        return message.body


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as primary, RedisServer() as replica:
        link = redis.Redis(port=replica.port, decode_responses=True)
        link.replicaof("127.0.0.1", primary.port)
        wait_until(lambda: link.info("replication")["master_link_status"] == "up")
        link.close()
        yield primary, replica


async def test_a_send_returns_once_a_replica_has_it(
    primary_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = primary_and_replica
    async with Runtime(primary.config, namespace="w", wait_replicas=1) as runtime:
        await runtime.spawn(Echo, name="echo")
        entry = await runtime.send("echo", "kept")
        copy = redis.Redis(port=replica.port, decode_responses=True)
        assert copy.xrange("ailf:w:mailbox:echo")[0][0] == entry
        copy.close()
        assert await runtime.ask("echo", "asked too") == "asked too"


async def test_no_replica_in_time_is_a_clear_error_and_the_message_is_sent(
    primary_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = primary_and_replica
    replica.kill()
    async with Runtime(primary.config, namespace="w", wait_replicas=1, wait_timeout=0.2) as runtime:
        with pytest.raises(NotReplicated, match="0 of the 1 replica") as caught:
            await runtime.send("echo", "alone")
        assert caught.value.mailbox == "ailf:w:mailbox:echo" and caught.value.confirmed == 0
        entries = await runtime.client.xrange("ailf:w:mailbox:echo")
        assert [entry_id for entry_id, _ in entries] == [caught.value.entry_id]


def test_bad_durability_settings_are_config_errors(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError, match="wait_replicas"):
        Runtime(redis_server.config, wait_replicas=-1)
    with pytest.raises(ConfigError, match="wait_timeout"):
        Runtime(redis_server.config, wait_timeout=0)

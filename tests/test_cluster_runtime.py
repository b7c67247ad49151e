"""The runtime on a real local Redis Cluster (3 primaries, 3 replicas): named and keyed
agents, asks, broadcasts, retries and dead letters, state, and a primary killed under
load while a worker process is killed too (docs/cluster.md#the-runtime-on-a-cluster)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from cluster_helpers import emptied, owner_port
from runtime_helpers import child_process, ready

from ailf import Agent, Message, RedisClusterServer, RedisConfig, Runtime

KEYED_CHILD = Path(__file__).with_name("keyed_child.py")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServer]:
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def config(cluster: RedisClusterServer) -> RedisConfig:
    return emptied(cluster)


class Echo(Agent):
    topics = ("news",)
    heard: list[Any] = []

    async def on_message(self, message: Message[Any]) -> Any:
        if message.topic is not None:
            Echo.heard.append(message.body)
            return None
        if message.body == "fail":
            raise ValueError("always")
        return {"echo": message.body, "agent": self.name}


@attrs.define
class Tally:
    count: int = 0


class Counter(Agent):
    state_type = Tally

    async def on_message(self, message: Message[Any]) -> int:
        self.state.count += message.body
        return int(self.state.count)


async def test_named_and_keyed_agents_on_a_cluster(config: RedisConfig) -> None:
    Echo.heard = []
    async with Runtime(config, namespace="c", retry_backoff=0.01) as runtime:
        names = [f"echo-{n}" for n in range(12)]  # mailboxes on every primary
        for name in names:
            await runtime.spawn(Echo, name=name)
        await runtime.spawn(Counter, name="counter", keyed=True, replicas=4, partitions=16)
        for name in names:
            assert await runtime.ask(name, 1) == {"echo": 1, "agent": name}
        for n in range(30):
            await runtime.send(names[n % len(names)], n)
            await runtime.send("counter", 1, key=f"user-{n % 5}")
        assert await runtime.ask("counter", 10, key="user-0") == 16
        await runtime.send("echo-3", "fail")
        with trio.fail_after(10):
            while len(Echo.heard) < len(names):
                await runtime.publish("news", "hello")
                await trio.sleep(0.2)
        await runtime.wait_idle(timeout=20)
        assert [await runtime.state("counter", f"user-{n}") for n in range(5)] == [
            {"count": 16},
            {"count": 6},
            {"count": 6},
            {"count": 6},
            {"count": 6},
        ]
        (letter,) = await runtime.dead_letters("echo-3")
        assert letter.body == "fail" and "failed on delivery 5 of 5" in letter.reason
        redrive = ["dlq", "redrive", "echo-3", "-n", "c", "--redis", config.url]
        await trio.run_process([sys.executable, "-m", "ailf", *redrive], capture_stdout=True)
        await runtime.wait_idle(timeout=20)
        (again,) = await runtime.dead_letters("echo-3")  # redriven, failed, dead again
        assert again.id != letter.id and again.body == "fail"
        assert runtime.statistics()["counter"].processed == 31


async def test_sends_wait_for_a_replica_when_asked(config: RedisConfig) -> None:
    async with Runtime(config, namespace="w", wait_replicas=1) as runtime:
        await runtime.spawn(Echo, name="echo")
        await runtime.spawn(Counter, name="counter", keyed=True, partitions=4)
        assert await runtime.ask("echo", "durable") == {"echo": "durable", "agent": "echo"}
        assert await runtime.ask("counter", 5, key="k") == 5
        await runtime.send("counter", 2, key="k")
        assert await runtime.ask("counter", 0, key="k") == 7


@pytest.mark.slow
async def test_a_killed_primary_and_a_killed_worker_lose_nothing() -> None:
    """Keyed work over two worker processes while the primary of some partitions is
    SIGKILLed (its replica takes over) and one worker is SIGKILLed: every key's state
    ends with every message once, in order."""
    keys = [f"user-{n}" for n in range(12)]
    messages = 20
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        config = RedisConfig.from_url(cluster.url)
        worker = (KEYED_CHILD, cluster.url, "kp", "2.0")
        with child_process(*worker) as first, child_process(*worker) as second:
            await ready(first)
            await ready(second)
            async with Runtime(config, namespace="kp") as runtime:
                for body in range(messages):
                    for key in keys:
                        await runtime.send("ledger", body, key=key)
                    if body == 5:
                        victim = owner_port(cluster, "ailf:kp:keyed:{ledger:0}:mailbox")
                        next(n for n in cluster.nodes if n.port == victim).kill()
                    if body == 10:
                        first.send_signal(signal.SIGKILL)
                    await trio.sleep(0.05)
                with trio.fail_after(60):
                    while True:
                        states = [await runtime.state("ledger", key) for key in keys]
                        if all(s and len(s["bodies"]) >= messages for s in states):
                            break
                        await trio.sleep(0.2)
    for key, state in zip(keys, states, strict=True):
        assert state == {"bodies": list(range(messages))}, key

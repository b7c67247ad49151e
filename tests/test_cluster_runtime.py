"""The runtime on a real local Redis Cluster (3 primaries, 3 replicas): named and keyed
agents, asks, broadcasts, retries and dead letters, state, and a primary killed under
load while a worker process is killed too (docs/cluster.md#the-runtime-on-a-cluster)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from cluster_helpers import emptied, owner_port
from runtime_helpers import child_process, ready

from ailf import Agent, Message, RedisClusterServer, RedisConfig, Runtime
from ailf.clients._slots import key_slot

KEYED_CHILD = Path(__file__).with_name("keyed_child.py")


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


class Timed(Agent):
    seen: list[tuple[Any, str | None, str | None]] = []

    async def on_message(self, message: Message[Any]) -> None:
        Timed.seen.append((message.body, message.key, message.reminder))


async def test_timers_on_a_cluster_live_on_their_mailboxs_slot(config: RedisConfig) -> None:
    """Delayed sends and reminders of named agents on every primary and of a keyed
    agent's partitions: each timer key hashes to its mailbox's slot, and all arrive."""
    Timed.seen = []
    async with Runtime(config, namespace="c") as runtime:
        names = [f"timed-{n}" for n in range(9)]
        for name in names:
            await runtime.spawn(Timed, name=name)
        await runtime.spawn(Timed, name="keyed", keyed=True, replicas=4, partitions=8)
        for name in names:
            address = runtime.keys.address(name)
            assert key_slot(address.timers) == key_slot(address.timed) == key_slot(address.mailbox)
            await runtime.send(name, name, delay=0.2)
        for n in range(16):
            await runtime.send("keyed", n, key=f"k{n}", delay=0.1)
        partition = runtime.keys.partition("keyed", 3)
        assert key_slot(partition.timers) == key_slot(partition.mailbox)
        await runtime.set_reminder(names[0], "tick", "tock", every=0.1)
        with trio.fail_after(20):
            arrived = {body for body, _, reminder in Timed.seen if reminder is None}
            while len(arrived) < 25:
                await trio.sleep(0.02)
                arrived = {body for body, _, reminder in Timed.seen if reminder is None}
            while sum(1 for *_, reminder in Timed.seen if reminder == "tick") < 3:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert await runtime.cancel_reminder(names[0], "tick") is True
        assert sorted(key for _, key, _ in Timed.seen if key) == sorted(f"k{n}" for n in range(16))


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

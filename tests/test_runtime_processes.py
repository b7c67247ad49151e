"""Real processes and real failures: SIGKILL, SIGTERM, a Redis restart, many agents.

Child runtimes run ``tests/runtime_child.py``; their ``Recorder`` agents push a JSON line
per handled message to a Redis list, which the tests read back.
"""

from __future__ import annotations

import json
import signal
import subprocess
from contextlib import AbstractContextManager
from typing import Any

import attrs
import pytest
import redis
import trio
from runtime_helpers import Echo, child_runtime, ready

from ailf import AskTimeout, RedisConfig, RedisConnectionError, RedisServer
from ailf.runtime import Runtime
from ailf.runtime._keys import GROUP


def child(config: RedisConfig, **spec: Any) -> AbstractContextManager[subprocess.Popen[str]]:
    return child_runtime(f"redis://127.0.0.1:{config.port}/0", "p", **spec)


def raw(config: RedisConfig) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=config.port, decode_responses=True)


def lines(config: RedisConfig, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw(config).lrange(key, 0, -1)]


async def wait_for(predicate: Any, interval: float = 0.02) -> None:
    """Poll a condition that lives in Redis or in another process."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(interval)


async def test_sigkill_of_one_replica_loses_nothing(redis_config: RedisConfig) -> None:
    key = "test:killed"
    spec = {"agent": "worker", "options": {"key": key, "delay": 0.004}, "claim_idle": 0.5}
    total = 600
    with trio.fail_after(60), child(redis_config, **spec) as doomed:
        await ready(doomed)
        with child(redis_config, **spec) as survivor:
            await ready(survivor)
            async with Runtime(redis_config, namespace="p") as runtime:
                for n in range(total):
                    await runtime.send("worker", n)
                await wait_for(
                    lambda: (
                        sum(line["pid"] == doomed.pid for line in lines(redis_config, key)) >= 30
                    )
                )
                doomed.send_signal(signal.SIGKILL)
                await trio.to_thread.run_sync(doomed.wait)
                await runtime.wait_idle(["worker"], timeout=40)
            handled = lines(redis_config, key)
    assert {line["body"] for line in handled} == set(range(total))
    pids = {line["pid"] for line in handled}
    assert pids == {doomed.pid, survivor.pid}


async def test_broadcast_reaches_every_instance_in_every_process(
    redis_config: RedisConfig,
) -> None:
    key = "test:broadcast"
    spec = {"agent": "listener", "replicas": 2, "topics": ["news"], "options": {"key": key}}
    with (
        trio.fail_after(30),
        child(redis_config, **spec) as one,
        child(redis_config, **spec) as two,
    ):
        await ready(one)
        await ready(two)
        async with Runtime(redis_config, namespace="p") as runtime:
            for n in range(3):
                assert await runtime.publish("news", n) == 2
            await wait_for(lambda: raw(redis_config).llen(key) >= 12)
            await trio.sleep(0.1)  # nothing more arrives: each instance heard each once
    heard: dict[tuple[int, int], list[int]] = {}
    for line in lines(redis_config, key):
        assert line["topic"] == "news"
        heard.setdefault((line["pid"], line["replica"]), []).append(line["body"])
    assert heard == {
        (one.pid, 0): [0, 1, 2],
        (one.pid, 1): [0, 1, 2],
        (two.pid, 0): [0, 1, 2],
        (two.pid, 1): [0, 1, 2],
    }


async def test_sigterm_stops_gracefully_and_loses_nothing(redis_config: RedisConfig) -> None:
    key = "test:graceful"
    spec = {"agent": "graceful", "options": {"key": key, "delay": 0.05}, "claim_idle": 0.3}
    total = 60
    with trio.fail_after(60):
        async with Runtime(redis_config, namespace="p") as runtime:
            ids = [await runtime.send("graceful", n) for n in range(total)]
        with child(redis_config, **spec) as first:
            await ready(first)
            await wait_for(lambda: raw(redis_config).llen(key) >= 5)
            first.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(first.wait) == 0
        done = {line["id"] for line in lines(redis_config, key)}
        pending = {
            row["message_id"]
            for row in raw(redis_config).xpending_range(
                "ailf:p:mailbox:graceful", GROUP, "-", "+", 1000
            )
        }
        # every finished message was acknowledged, every other one is still pending
        assert done and pending and not done & pending and done | pending == set(ids)
        with child(redis_config, **spec) as second:
            await ready(second)
            await wait_for(lambda: raw(redis_config).llen(key) >= total)
    handled = lines(redis_config, key)
    assert sorted(line["body"] for line in handled) == list(range(total))  # no duplicates


async def test_second_signal_forces(redis_config: RedisConfig) -> None:
    key = "test:forced"
    spec = {"agent": "stuck", "options": {"key": key, "delay": 3600}, "grace_period": 60}
    with trio.fail_after(30), child(redis_config, **spec) as process:
        await ready(process)
        async with Runtime(redis_config, namespace="p") as runtime:
            await runtime.send("stuck", 1)
            await wait_for(
                lambda: raw(redis_config).xpending("ailf:p:mailbox:stuck", GROUP)["pending"]
            )
        process.send_signal(signal.SIGINT)
        await trio.sleep(0.3)
        assert process.poll() is None  # waiting for the handler, within the grace period
        process.send_signal(signal.SIGINT)
        await trio.to_thread.run_sync(process.wait)
    assert raw(redis_config).xpending("ailf:p:mailbox:stuck", GROUP)["pending"] == 1


async def test_recovers_from_a_redis_restart_without_persistence(
    fresh_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    Echo.heard = []
    with trio.fail_after(60):
        async with Runtime(fresh_server.config, namespace="p") as runtime:
            await runtime.spawn(Echo, name="echo")
            assert await runtime.ask("echo", "before", timeout=5) == "before"
            await trio.to_thread.run_sync(lambda: fresh_server.restart(kill=True))
            while True:  # the mailbox and its group are gone: the reader re-creates them
                try:
                    assert await runtime.ask("echo", "after", timeout=1) == "after"
                    break
                except (AskTimeout, RedisConnectionError):
                    await trio.sleep(0.1)
            groups = raw(fresh_server.config).xinfo_groups("ailf:p:mailbox:echo")
            assert [g["name"] for g in groups] == [GROUP]
            while not Echo.heard:  # the broadcast subscription came back too
                await runtime.publish("news", "hello again")
                await trio.sleep(0.1)
    assert "re-creating it" in caplog.text


async def test_a_thousand_agents_in_one_process(redis_config: RedisConfig) -> None:
    count = 1000
    answers: dict[str, Any] = {}
    with trio.fail_after(90):
        async with Runtime(redis_config, namespace="p") as runtime:
            for n in range(count):
                await runtime.spawn(Echo, name=f"agent-{n}")

            async def ask(name: str) -> None:
                answers[name] = await runtime.ask(name, name, timeout=30)

            async with trio.open_nursery() as nursery:
                for n in range(count):
                    nursery.start_soon(ask, f"agent-{n}")
            connections = len(raw(redis_config).client_list()) - 1
    assert answers == {f"agent-{n}": f"agent-{n}" for n in range(count)}
    assert connections <= 8


async def test_unreachable_redis_fails_cleanly_at_start() -> None:
    config = RedisConfig(port=1, retry=attrs.evolve(RedisConfig().retry, attempts=0))
    runtime = Runtime(config, namespace="p")
    with pytest.raises(RuntimeError, match="async with Runtime"):
        await runtime.send("x", 1)
    with trio.fail_after(20), pytest.raises(RedisConnectionError):
        async with runtime:
            pass


async def test_shutdown_is_bounded_when_redis_is_gone(fresh_server: RedisServer) -> None:
    with trio.fail_after(30):
        async with Runtime(fresh_server.config, namespace="p", grace_period=1) as runtime:
            await runtime.spawn(Echo, name="echo", replicas=2)
            assert await runtime.ask("echo", 1, timeout=5) == 1
            fresh_server.kill()
            await trio.sleep(0.2)

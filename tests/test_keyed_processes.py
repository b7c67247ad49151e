"""Keyed agents over real processes: a SIGKILLed holder's keys are taken over, in order,
with no message lost and no state change doubled; a host joining or leaving hands
partitions over; never two live handlers of one key at once.

Children run ``tests/keyed_child.py``: a ``Ledger`` agent appends each body to its key's
state and records every handling in the Redis list ``handled``.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
from contextlib import AbstractContextManager
from pathlib import Path

import redis
import trio
from runtime_helpers import child_process, ready

from ailf import RedisConfig, Runtime

CHILD = Path(__file__).with_name("keyed_child.py")
KEYS = [f"user-{n}" for n in range(24)]
MESSAGES = 25


def host(
    config: RedisConfig, lease: float = 1.5, *extra: str
) -> AbstractContextManager[subprocess.Popen[str]]:
    url = f"redis://127.0.0.1:{config.port}/0"
    return child_process(CHILD, url, "kp", str(lease), *extra)


def handled(config: RedisConfig) -> list[list]:
    raw = redis.Redis(host="127.0.0.1", port=config.port, decode_responses=True)
    return [json.loads(line) for line in raw.lrange("handled", 0, -1)]


def busy_in_both(config: RedisConfig, first: int) -> bool:
    lines = handled(config)
    return (
        len(lines) >= len(KEYS) * 5
        and len({line[2] for line in lines}) == 2
        and any(line[2] == first for line in lines[-len(KEYS) :])
    )


async def send_all(runtime: Runtime, pause: float = 0.0) -> None:
    for body in range(MESSAGES):
        for key in KEYS:
            await runtime.send("ledger", body, key=key)
        await trio.sleep(pause)


async def check_every_state(runtime: Runtime, within: float) -> None:
    """Every key's state holds every body once, in send order."""
    with trio.fail_after(within):
        while True:
            states = [await runtime.state("ledger", key) for key in KEYS]
            if all(state and len(state["bodies"]) >= MESSAGES for state in states):
                break
            await trio.sleep(0.1)
    for key, state in zip(KEYS, states, strict=True):
        assert state == {"bodies": list(range(MESSAGES))}, key


def check_one_handler_per_key(config: RedisConfig) -> None:
    """For each key: handlings never overlap in time, and bodies come in order except
    where a handling was repeated after its holder died (then it starts over from the
    first message the dead holder had not committed)."""
    by_key: dict[str, list[list]] = {}
    for line in handled(config):
        by_key.setdefault(line[0], []).append(line)
    for key, lines in by_key.items():
        lines.sort(key=lambda line: line[3])
        for before, after in itertools.pairwise(lines):
            assert before[4] <= after[3] + 0.001, f"{key}: two handlers at once: {before} {after}"
        bodies = [line[1] for line in lines]
        assert sorted(set(bodies)) == list(range(MESSAGES)), key


async def test_a_sigkilled_holder_is_taken_over_in_order_without_loss(
    redis_config: RedisConfig,
) -> None:
    with host(redis_config) as first, host(redis_config) as second:
        await ready(first)
        await ready(second)
        async with Runtime(redis_config, namespace="kp") as runtime:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, runtime, 0.02)
                with trio.fail_after(20):  # both hold partitions, and work is under way
                    while not busy_in_both(redis_config, first.pid):  # noqa: ASYNC110
                        await trio.sleep(0.02)
                first.send_signal(signal.SIGKILL)
            await check_every_state(runtime, within=30)
    check_one_handler_per_key(redis_config)
    pids = {line[2] for line in handled(redis_config)}
    assert len(pids) == 2


async def test_hosts_joining_and_leaving_hand_partitions_over(redis_config: RedisConfig) -> None:
    with host(redis_config) as first:
        await ready(first)
        async with Runtime(redis_config, namespace="kp") as runtime:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all, runtime, 0.1)
                with host(redis_config) as second:
                    await ready(second)
                    with trio.fail_after(20):  # it took partitions over, and handles them
                        while not any(line[2] == second.pid for line in handled(redis_config)):  # noqa: ASYNC110
                            await trio.sleep(0.05)
                    second.send_signal(signal.SIGTERM)  # graceful: gives its partitions back
                    assert second.wait(timeout=15) == 0
            await check_every_state(runtime, within=30)
    check_one_handler_per_key(redis_config)
    lines = handled(redis_config)
    assert len({line[2] for line in lines}) == 2, "the second host took no partition"
    assert len(lines) == len(KEYS) * MESSAGES, "a graceful handover repeated a message"


async def test_a_named_agent_with_state_moves_to_its_standby_in_order(
    redis_config: RedisConfig,
) -> None:
    """One instance at a time over two processes; the active one SIGKILLed mid-stream:
    the standby takes over after the lease, and the state holds every message once, in
    order."""
    with host(redis_config, 1.5, "named") as first, host(redis_config, 1.5, "named") as second:
        await ready(first)
        await ready(second)
        async with Runtime(redis_config, namespace="kp") as runtime:
            for body in range(40):
                await runtime.send("ledger", body)
            with trio.fail_after(20):
                while len(handled(redis_config)) < 10:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            active = handled(redis_config)[0][2]
            victim = first if first.pid == active else second
            victim.send_signal(signal.SIGKILL)
            for body in range(40, 60):
                await runtime.send("ledger", body)
            with trio.fail_after(30):
                while True:
                    state = await runtime.state("ledger")
                    if state and len(state["bodies"]) >= 60:
                        break
                    await trio.sleep(0.1)
    assert state == {"bodies": list(range(60))}
    lines = handled(redis_config)
    assert len({line[2] for line in lines}) == 2  # the standby took over
    for before, after in itertools.pairwise(sorted(lines, key=lambda line: line[3])):
        assert before[4] <= after[3] + 0.001, f"two instances at once: {before} {after}"

"""Durable time across real processes, for tests/test_timers_processes.py.

``python tests/timers_child.py URL NAMESPACE worker`` hosts agent ``clock`` (and keyed
agent ``clocks``); every message it handles is pushed onto the Redis list ``arrived``
as ``[body, entry id, pid, time handled, reminder]``. It prints ``ready`` once spawned
and serves until killed.

``python tests/timers_child.py URL NAMESPACE sender COUNT`` schedules COUNT timed
messages to ``clock`` (half of them to ``clocks``, keyed), each body ``{"n", "due"}``
with ``due`` at least what this process's clock said plus the delay, prints ``sent``,
and sleeps: the test SIGKILLs it at once.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

import trio

from ailf import Agent, Message, RedisConfig, Runtime


class Clock(Agent):
    async def on_message(self, message: Message[Any]) -> None:
        line = [message.body, message.id, os.getpid(), time.time(), message.reminder]
        await self.runtime.client.rpush("arrived", json.dumps(line))


async def worker(runtime: Runtime) -> None:
    await runtime.spawn(Clock, "clock", claim_idle=1.0)
    await runtime.spawn(Clock, "clocks", keyed=True, partitions=4, claim_idle=1.0)
    print("ready", flush=True)
    await runtime.run_forever()


async def sender(runtime: Runtime, count: int) -> None:
    for n in range(count):
        delay = random.uniform(0.3, 1.5)
        due = time.time() + delay
        if n % 2:
            await runtime.send("clocks", {"n": n, "due": due}, key=f"k{n % 7}", delay=delay)
        else:
            await runtime.send("clock", {"n": n, "due": due}, delay=delay)
    print("sent", flush=True)
    await trio.sleep_forever()


async def main(url: str, namespace: str, role: str, *rest: str) -> None:
    async with Runtime(RedisConfig.from_url(url), namespace=namespace, grace_period=2) as runtime:
        if role == "worker":
            await worker(runtime)
        else:
            await sender(runtime, int(rest[0]))


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])

"""A runtime hosting a keyed agent in a process of its own, for tests/test_keyed_processes.py.

Run as ``python tests/keyed_child.py URL NAMESPACE LEASE [named]``; prints ``ready``
once the agent is spawned (keyed, or with ``named`` a named agent with state), then
serves until SIGTERM (graceful) or SIGKILL. Each handled message appends its body to
the state and pushes ``[key, body, pid, start, end]`` onto the Redis list ``handled``,
so that tests can check order, state and single activation.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import attrs
import trio

from ailf import Agent, Message, RedisConfig, Runtime


@attrs.define
class Seen:
    bodies: list[int] = attrs.Factory(list)


class Ledger(Agent):
    state_type = Seen
    passivate_after = 0.5

    async def on_message(self, message: Message[Any]) -> int:
        start = time.time()
        await trio.sleep(0.003)
        self.state.bodies.append(message.body)
        line = [self.key or self.name, message.body, os.getpid(), start, time.time()]
        await self.runtime.client.rpush("handled", json.dumps(line))
        return len(self.state.bodies)


async def main(url: str, namespace: str, lease: float, keyed: bool) -> None:
    async with Runtime(RedisConfig.from_url(url), namespace=namespace, grace_period=5) as runtime:
        if keyed:
            await runtime.spawn(
                Ledger, name="ledger", keyed=True, replicas=4, partitions=8, claim_idle=lease
            )
        else:  # a named agent with state: one instance at a time, over every process
            await runtime.spawn(Ledger, name="ledger", claim_idle=lease)
        print("ready", flush=True)
        await runtime.run_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:] != ["named"])

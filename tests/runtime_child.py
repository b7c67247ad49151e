"""A runtime in a process of its own, for tests/test_runtime_processes.py and others.

Run as ``python tests/runtime_child.py '<json spec>'``; prints ``ready`` once its agents
have started, then serves until SIGINT/SIGTERM (graceful) or SIGKILL. The ``Recorder``
agent pushes one JSON line per handled message onto the Redis list ``options.key``;
``spec["others"]`` names more agents of the same class, spawned beside it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import attrs
import trio

from ailf import Agent, Message, RedisConfig, Runtime


@attrs.frozen
class RecorderOptions:
    key: str
    delay: float = 0.0


class Recorder(Agent):
    Options = RecorderOptions

    async def on_message(self, message: Message) -> Any:
        if self.options.delay:
            await trio.sleep(self.options.delay)
        line = {
            "pid": os.getpid(),
            "replica": self.replica,
            "body": message.body,
            "topic": message.topic,
            "id": message.id,
        }
        await self.runtime.client.rpush(self.options.key, json.dumps(line))
        return line


async def main(spec: dict[str, Any]) -> None:
    async with Runtime(
        RedisConfig.from_url(spec["url"]),
        namespace=spec["namespace"],
        grace_period=spec.get("grace_period", 10.0),
    ) as runtime:
        for name in [spec["agent"], *spec.get("others", ())]:
            await runtime.spawn(
                Recorder,
                name=name,
                replicas=spec.get("replicas", 1),
                options=spec["options"],
                topics=spec.get("topics", ()),
                claim_idle=spec.get("claim_idle"),
            )
        print("ready", flush=True)
        await runtime.run_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(main, json.loads(sys.argv[1]))

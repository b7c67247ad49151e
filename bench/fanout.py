"""Broadcast fan-out latency: one publish, ten subscribed handlers, time to the slowest.

- **ailf**: one process runs ten agents (``listener-0`` … ``listener-9``), each
  subscribed to the topic ``fanout`` through its class's ``topics``; the driver's
  ``Runtime.publish`` sends each broadcast.
- **redis-py**: one asyncio process with ten ``redis.asyncio`` pub/sub subscriptions,
  each on its own connection with a task reading it and decoding the JSON; the driver
  PUBLISHes with redis-py's sync client.

Each broadcast carries its ``time.monotonic()`` at publishing; each handler notes when
it got it. The figure per broadcast is the delay of the *slowest* of the ten handlers.
Broadcasts are paced (one every :data:`INTERVAL` seconds) so that the figure is the
latency of a broadcast, not the depth of a queue of them.

Listeners run as ``python -m bench.fanout ROLE URL COUNT 0``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import redis
import redis.asyncio
import trio

from ailf import Agent, Message, RedisConfig, Runtime
from bench.process import RoleProcess, Tally, emit

LISTENERS = 10
INTERVAL = 0.002
WARMUP = 50
NAMESPACE = "bench"
TOPIC = "fanout"
CHANNEL = "bench:fanout"


class Arrivals(Tally):
    """The slowest delivery of each broadcast so far, and how many deliveries in all."""

    def __init__(self) -> None:
        super().__init__()
        self.slowest: dict[int, float] = {}
        self.deliveries: dict[int, int] = {}

    def arrived(self, number: int, sent: float) -> None:
        delay = time.monotonic() - sent
        if number >= 0:
            self.slowest[number] = max(self.slowest.get(number, 0.0), delay)
            self.deliveries[number] = self.deliveries.get(number, 0) + 1

    def summary(self) -> dict[str, Any]:
        complete = [
            self.slowest[n] for n in sorted(self.slowest) if self.deliveries[n] == LISTENERS
        ]
        return {"slowest": complete, "incomplete": len(self.slowest) - len(complete)}


ARRIVALS = Arrivals()


class Listener(Agent):
    topics = (TOPIC,)

    async def on_message(self, message: Message) -> None:
        ARRIVALS.arrived(message.body["n"], message.body["t"])


async def ailf_listeners(config: RedisConfig) -> None:
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        for n in range(LISTENERS):
            await runtime.spawn(Listener, name=f"listener-{n}")
        emit(ready=True)
        await runtime.run_forever()


async def redis_py_listeners(config: RedisConfig) -> None:
    client = redis.asyncio.Redis(**config.redis_py_kwargs())

    async def listen(pubsub: redis.asyncio.client.PubSub) -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                body = json.loads(message["data"])
                ARRIVALS.arrived(body["n"], body["t"])

    subscriptions = [client.pubsub() for _ in range(LISTENERS)]
    for pubsub in subscriptions:
        await pubsub.subscribe(CHANNEL)
    tasks = [asyncio.create_task(listen(pubsub)) for pubsub in subscriptions]
    emit(ready=True)
    await asyncio.gather(*tasks)


# -- the driver's side ------------------------------------------------------------------


async def _publish_ailf(config: RedisConfig, count: int) -> None:
    async with Runtime(config, namespace=NAMESPACE) as runtime:
        for n in range(-WARMUP, count):
            await runtime.publish(TOPIC, {"n": n, "t": time.monotonic()})
            await trio.sleep(INTERVAL)


def _publish_redis_py(config: RedisConfig, count: int) -> None:
    with redis.Redis(**config.redis_py_kwargs()) as client:
        for n in range(-WARMUP, count):
            client.publish(CHANNEL, json.dumps({"n": n, "t": time.monotonic()}))
            time.sleep(INTERVAL)


def fan_out(kind: str, config: RedisConfig, count: int) -> dict[str, Any]:
    """Publish ``count`` broadcasts to ten listeners of ``kind`` ("ailf" or "redis-py");
    returns the slowest handler's delay per broadcast (seconds) and how many broadcasts
    did not reach all ten."""
    url = f"redis://{config.host}:{config.port}/0"
    listeners = RoleProcess("bench.fanout", kind, url, count)
    try:
        listeners.read()
        if kind == "ailf":
            trio.run(_publish_ailf, config, count)
        else:
            _publish_redis_py(config, count)
        time.sleep(0.5)
        return listeners.ask("stop")
    finally:
        listeners.close(wait=5)


def main(argv: list[str]) -> None:
    role, url, _count, _prefill = argv
    config = RedisConfig.from_url(url)
    ARRIVALS.serve()
    if role == "ailf":
        trio.run(ailf_listeners, config)
    else:
        asyncio.run(redis_py_listeners(config))


if __name__ == "__main__":
    main(sys.argv[1:])

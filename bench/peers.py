"""Peer frameworks on the suite's workloads, each used as its documentation shows.

- **FastStream** (``faststream[redis]``): a ``RedisBroker`` subscriber on a stream read
  through a consumer group (``StreamSub(stream, group=..., consumer=...)``), which
  acknowledges each message after its handler returns — FastStream's default for
  consumer groups. Two configurations: its defaults, which log two INFO lines per
  message (``Received``, ``Processed``; written to the role's log file), and
  ``log_level=logging.DEBUG`` on the broker, which moves those lines below the default
  level, so that nothing is logged per message, as for ailf. The backlog is published
  with FastStream's own publisher through a pipeline, so the entries are in its wire
  format. For latency,
  ``broker.request(body, stream=...)`` against a group subscriber that returns the body
  (FastStream replies over pub/sub), with per-message logging off.
- **Dramatiq** (``dramatiq[redis]``): an actor on a ``RedisBroker``, messages enqueued
  with ``actor.send``, consumed by one ``Worker`` process with Dramatiq's default of
  8 worker threads (what ``dramatiq module --processes 1`` runs).

Every role runs in a process of its own (``python -m bench.peers ROLE URL COUNT
PREFILL``), driven as :mod:`bench.process` describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bench.process import Tally, emit
from bench.runtime import BODY

STREAM = "bench:faststream"
REQUESTS = "bench:faststream:requests"
GROUP = "bench"
WARMUP = 200
TALLY = Tally()


def _faststream_broker(url: str, quiet: bool) -> Any:
    from faststream.redis import RedisBroker

    return RedisBroker(url, log_level=logging.DEBUG) if quiet else RedisBroker(url)


async def faststream_consumer(url: str, count: int, prefill: bool, quiet: bool) -> None:
    from faststream.redis import StreamSub

    broker = _faststream_broker(url, quiet)

    @broker.subscriber(stream=StreamSub(STREAM, group=GROUP, consumer=f"c{os.getpid()}"))
    async def sink(body: dict[str, Any]) -> None:
        TALLY.hit()

    client = await broker.connect()
    if prefill:
        await client.delete(STREAM)
        # The group exists before the backlog, so that the subscriber reads all of it.
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        for start in range(0, count, 100):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(100, count - start)):
                await broker.publish(BODY, stream=STREAM, pipeline=pipe)
            await pipe.execute()
    emit(ready=True)
    await asyncio.to_thread(TALLY.go.wait)
    await broker.start()
    await asyncio.Event().wait()


def dramatiq_consumer(url: str, count: int, prefill: bool) -> None:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)

    counting = threading.Lock()  # the worker runs handlers on 8 threads

    @dramatiq.actor(broker=broker, queue_name="bench")
    def sink(body: dict[str, Any]) -> None:
        with counting:
            TALLY.hit()

    if prefill:
        broker.flush_all()
        for _ in range(count):
            sink.send(BODY)
    emit(ready=True)
    TALLY.go.wait()
    dramatiq.Worker(broker).start()
    threading.Event().wait()


async def faststream_echo(url: str, count: int, prefill: bool) -> None:
    from faststream.redis import StreamSub

    broker = _faststream_broker(url, quiet=True)

    @broker.subscriber(stream=StreamSub(REQUESTS, group=GROUP, consumer="echo"))
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    async with broker:
        await broker.start()
        emit(ready=True)
        await asyncio.Event().wait()


async def faststream_asks(url: str, count: int, prefill: bool) -> None:
    """Sequential requests; prints the round-trip times (seconds) after the warm-up."""
    samples = []
    async with _faststream_broker(url, quiet=True) as broker:
        for n in range(count + WARMUP):
            started = time.perf_counter()
            reply = await broker.request(BODY, stream=REQUESTS, timeout=10)
            await reply.decode()
            if n >= WARMUP:
                samples.append(time.perf_counter() - started)
    emit(samples=samples)


ROLES = {
    "faststream": functools.partial(faststream_consumer, quiet=False),
    "faststream-quiet": functools.partial(faststream_consumer, quiet=True),
    "dramatiq": dramatiq_consumer,
    "faststream-echo": faststream_echo,
    "faststream-ask": faststream_asks,
}


def versions() -> dict[str, str]:
    """Installed versions of the peers (missing ones are left out)."""
    found = {}
    for name in ("faststream", "dramatiq"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def main(argv: list[str]) -> None:
    role, url, count, prefill = argv
    TALLY.serve()
    function = ROLES[role]
    if role == "dramatiq":
        function(url, int(count), prefill == "1")
    else:
        asyncio.run(function(url, int(count), prefill == "1"))


if __name__ == "__main__":
    main(sys.argv[1:])

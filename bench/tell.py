"""Tell throughput: a no-op agent against a hand-written redis-py loop, same batching.

Both drain the same pre-filled mailbox (``bench.runtime``'s envelopes, ~150 bytes) in
one or more processes of their own. The agent reads through the runtime
(``batch_size`` = ``bench.runtime.BATCH``); the hand-written loop does what a careful
user would write by hand: ``XREADGROUP COUNT`` the same batch, one ``json.loads`` per
entry, one ``XACK`` with every id of the batch.

Run as ``python -m bench.tell ROLE URL COUNT PREFILL`` by :func:`bench.process.drain`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import redis
import trio

from ailf import Agent, Message, RedisConfig, Runtime
from bench import runtime as runtime_bench
from bench.process import Tally, emit

TALLY = Tally()


class NoOp(Agent):
    """Does nothing with each message but count it."""

    async def on_message(self, message: Message) -> None:
        TALLY.hit()


async def ailf_consumer(config: RedisConfig) -> None:
    async with Runtime(
        config, namespace=runtime_bench.NAMESPACE, batch_size=runtime_bench.BATCH
    ) as runtime:
        emit(ready=True)
        await trio.to_thread.run_sync(TALLY.go.wait)
        await runtime.spawn(NoOp, name="sink")
        await runtime.run_forever()


def redis_py_consumer(config: RedisConfig) -> None:
    client = redis.Redis(**config.redis_py_kwargs())
    group, consumer, stream = "baseline", f"c{os.getpid()}", runtime_bench.MAILBOX
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(stream, group, id="0", mkstream=True)
    emit(ready=True)
    TALLY.go.wait()
    while True:
        reply = client.xreadgroup(
            group, consumer, {stream: ">"}, count=runtime_bench.BATCH, block=1000
        )
        for _, entries in reply or ():
            for _, fields in entries:
                json.loads(fields["envelope"])
                TALLY.hit()
            client.xack(stream, group, *[entry_id for entry_id, _ in entries])


def main(argv: list[str]) -> None:
    role, url, count, prefill = argv
    config = RedisConfig.from_url(url)
    if prefill == "1":
        runtime_bench.prefill(config, int(count))
    TALLY.serve()
    if role == "ailf":
        trio.run(ailf_consumer, config)
    else:
        redis_py_consumer(config)


if __name__ == "__main__":
    main(sys.argv[1:])

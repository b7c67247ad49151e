"""Cancellation never leaves a reply on a connection for the next caller.

The CVE-2023-28858/28859 class of bug: a command cancelled after it was sent but
before its reply was read leaves that reply on the connection, and the next command
reads it as its own. These tests cancel many in-flight commands at random points
(large values, so that replies are split across many reads) and then check that every
later reply on the same client is the one asked for.
"""

from __future__ import annotations

import random

import pytest
import trio
from async_helpers import move_on_after, resp_parser_fixture, run_fixture, side_by_side  # noqa: F401

from ailf import AsyncRedisClient, RedisConfig

pytestmark = pytest.mark.usefixtures("resp_parser")

BIG = 2 * 1024 * 1024


def _big_value(n: int) -> str:
    return (f"value-{n}-" * (BIG // 10))[:BIG]


async def _check_every_reply(client: AsyncRedisClient, count: int) -> None:
    for n in range(count):
        assert await client.get(f"small:{n}") == f"small-{n}"
        assert await client.hgetall(f"hash:{n % 5}") == {"n": str(n % 5)}
    for n in range(3):
        assert await client.get(f"big:{n}") == _big_value(n)


def test_cancelled_gets_of_big_values_leave_no_reply_behind(run, redis_config) -> None:
    rng = random.Random(2858)

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            async with client.pipeline(transaction=False) as pipe:
                for n in range(3):
                    pipe.set(f"big:{n}", _big_value(n))
                for n in range(200):
                    pipe.set(f"small:{n}", f"small-{n}")
                for n in range(5):
                    pipe.hset(f"hash:{n}", "n", n)
                await pipe.execute()

            async def get_big(n: int) -> None:
                value = await client.get(f"big:{n % 3}")
                assert value == _big_value(n % 3)

            async def get_small(n: int) -> None:
                assert await client.get(f"small:{n}") == f"small-{n}"

            # Zero cancels before the command is queued; the rest land anywhere from
            # "queued, not sent" to "half the reply read" to "done" (100 x 2 MB takes a
            # few hundred ms to arrive).
            delays = [0.0 if n % 10 == 0 else rng.uniform(0, 0.4) for n in range(100)]
            await side_by_side(
                *(lambda n=n: move_on_after(delays[n], get_big, n) for n in range(100)),
                *(lambda n=n: get_small(n) for n in range(200)),
            )
            await _check_every_reply(client, 200)

    run(body)


def test_cancelled_pipelines_and_blocking_reads_leave_nothing_behind(run, redis_config) -> None:
    rng = random.Random(28859)

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            for n in range(200):
                await client.set(f"small:{n}", f"small-{n}")
            for n in range(5):
                await client.hset(f"hash:{n}", "n", n)
            for n in range(3):
                await client.set(f"big:{n}", _big_value(n))
            await client.xgroup_create("s", "g", mkstream=True)

            async def pipeline_of_bigs() -> None:
                pipe = client.pipeline(transaction=False)
                for n in range(3):
                    pipe.get(f"big:{n}")
                assert await pipe.execute() == [_big_value(n) for n in range(3)]

            async def blocking_read() -> None:
                await client.xreadgroup("g", "c", {"s": ">"}, block=10_000)

            await side_by_side(
                *(lambda: move_on_after(rng.uniform(0, 0.3), pipeline_of_bigs) for _ in range(20)),
                *(lambda: move_on_after(rng.uniform(0, 0.05), blocking_read) for _ in range(10)),
            )
            await _check_every_reply(client, 200)
            assert await client.xreadgroup("g", "c", {"s": ">"}, block=10) == []

    run(body)


def test_cancelled_commands_on_a_client_without_async_with(run, redis_config) -> None:
    rng = random.Random(7)

    async def body() -> None:
        client = AsyncRedisClient(redis_config.replace(max_connections=4))
        try:
            for n in range(3):
                await client.set(f"big:{n}", _big_value(n))
            for n in range(200):
                await client.set(f"small:{n}", f"small-{n}")
            for n in range(5):
                await client.hset(f"hash:{n}", "n", n)

            async def get_big(n: int) -> None:
                assert await client.get(f"big:{n % 3}") == _big_value(n % 3)

            await side_by_side(
                *(lambda n=n: move_on_after(rng.uniform(0, 0.03), get_big, n) for n in range(30))
            )
            await _check_every_reply(client, 50)
        finally:
            await client.aclose()

    run(body)


async def test_cancel_before_queueing_sends_nothing(redis_config: RedisConfig) -> None:
    async with AsyncRedisClient(redis_config) as client:
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.set("never", "sent")
        assert await client.get("never") is None


def test_a_lone_command_cancelled_mid_reply_leaves_nothing_behind(run, redis_config) -> None:
    """One task, one command at a time: the caller reads its own reply (no reader task
    hop). Cancelled half-way through a 2 MB reply, it hands the rest to the reader task,
    which must throw it away."""
    rng = random.Random(1)

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            for n in range(3):
                await client.set(f"big:{n}", _big_value(n))
            for n in range(50):
                await client.set(f"small:{n}", f"small-{n}")
            for n in range(5):
                await client.hset(f"hash:{n}", "n", n)
            for n in range(50):
                await move_on_after(rng.uniform(0, 0.004), client.get, "big:0")
                assert await client.get(f"small:{n}") == f"small-{n}"
            await _check_every_reply(client, 50)

    run(body)


def test_commands_queued_behind_a_lone_reader_get_their_own_replies(run, redis_config) -> None:
    """While the first caller waits on the socket itself for a big reply, fifty others
    queue behind it; the replies it reads past its own go to their owners."""

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.set("big:0", _big_value(0))
            for n in range(50):
                await client.set(f"small:{n}", f"small-{n}")

            async def get_big() -> None:
                assert await client.get("big:0") == _big_value(0)

            async def get_small(n: int) -> None:
                assert await client.get(f"small:{n}") == f"small-{n}"

            for _ in range(5):
                await side_by_side(get_big, *(lambda n=n: get_small(n) for n in range(50)))

    run(body)

"""Chaos for the trio engine: random cancellations while the server is killed and restarted.

Fifty tasks share one client and read and write keys whose values name the key, inside
random deadlines, in single commands and pipelines, while another task SIGKILLs and
restarts the server. Whatever happens, no reply may ever belong to another command: a
GET answers its own key's value or None (the restarted server is empty), never another
key's; and the client keeps working afterwards.
"""

from __future__ import annotations

import random

import pytest
import trio
from async_helpers import resp_parser_fixture  # noqa: F401 - fixtures

from ailf import AsyncRedisClient, RedisConnectionError, RedisServer, RetryPolicy

pytestmark = pytest.mark.usefixtures("resp_parser")

PAYLOAD = 20_000


def _value(n: int) -> str:
    return f"<{n}>" * (PAYLOAD // 6)


async def test_no_reply_ever_reaches_the_wrong_caller(fresh_server: RedisServer) -> None:
    retry = RetryPolicy(attempts=10, backoff_initial=0.02, backoff_max=0.1)
    config = fresh_server.config.replace(retry=retry)
    rng = random.Random(2858)
    counts = {"ok": 0, "cancelled": 0, "lost": 0}

    async def worker(seed: int, client: AsyncRedisClient, stop: trio.Event) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            n, m = local.randrange(50), local.randrange(50)
            with trio.move_on_after(local.choice([0, 0.0005, 0.002, 0.01, 1.0])) as scope:
                try:
                    kind = local.randrange(3)
                    if kind == 0:
                        assert await client.get(f"k{n}") in (None, _value(n))
                    elif kind == 1:
                        assert await client.set(f"k{n}", _value(n)) is True
                    else:
                        pipe = client.pipeline(transaction=False)
                        pipe.get(f"k{n}").set(f"k{m}", _value(m)).get(f"k{m}")
                        got_n, stored, got_m = await pipe.execute()
                        assert got_n in (None, _value(n))
                        assert stored is True and got_m == _value(m)
                    counts["ok"] += 1
                except RedisConnectionError:
                    counts["lost"] += 1
                    await trio.sleep(0.01)
            if scope.cancelled_caught:
                counts["cancelled"] += 1

    async def chaos(stop: trio.Event) -> None:
        for _ in range(3):
            await trio.sleep(rng.uniform(0.2, 0.4))
            await trio.to_thread.run_sync(lambda: fresh_server.restart(kill=True))
        await trio.sleep(0.3)
        stop.set()

    with trio.fail_after(60):
        async with AsyncRedisClient(config) as client:
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chaos, stop)
                for seed in range(50):
                    nursery.start_soon(worker, seed, client, stop)
            for n in range(50):
                await client.set(f"k{n}", _value(n))
            for n in range(50):
                assert await client.get(f"k{n}") == _value(n)

    assert counts["ok"] > 100 and counts["cancelled"] > 10 and counts["lost"] > 0, counts

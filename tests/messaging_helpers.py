"""What the async pub/sub and stream tests share: pacing, polling, a client, side by side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import sniffio
import trio
from async_helpers import sleep

from ailf import AsyncRedisClient, RedisConfig, RetryPolicy

FAST_RETRY = RetryPolicy(backoff_initial=0.02, backoff_max=0.2)

#: Seconds any one test may take before trio.fail_after ends it.
DEADLINE = 20


async def wait_until(condition: Callable[[], object]) -> None:
    """Poll ``condition`` under whichever library runs; the caller bounds the wait."""
    while not condition():
        await sleep(0.01)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll an async ``check`` until it is true; the caller bounds the wait."""
    while not await check():
        await sleep(0.01)


async def side_by_side(*functions: Callable[[], Awaitable[Any]]) -> None:
    """Run the functions concurrently until all return: a nursery, or asyncio.gather."""
    if sniffio.current_async_library() == "trio":
        async with trio.open_nursery() as nursery:
            for function in functions:
                nursery.start_soon(function)
    else:
        await asyncio.gather(*(function() for function in functions))


@pytest.fixture(name="client")
async def client_fixture(redis_config: RedisConfig) -> AsyncIterator[AsyncRedisClient]:
    """An entered AsyncRedisClient on the session's server, with quick retries."""
    async with AsyncRedisClient(redis_config.replace(retry=FAST_RETRY)) as client:
        yield client

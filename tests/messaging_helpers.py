"""What the async pub/sub and stream tests share: pacing, polling, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
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


@pytest.fixture(name="client")
async def client_fixture(redis_config: RedisConfig) -> AsyncIterator[AsyncRedisClient]:
    """An entered AsyncRedisClient on the session's server, with quick retries."""
    async with AsyncRedisClient(redis_config.replace(retry=FAST_RETRY)) as client:
        yield client

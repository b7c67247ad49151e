"""What the pub/sub and stream tests (sync and async) share: pacing, polling, a client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from async_helpers import sleep

from ailf import AsyncRedisClient, RedisConfig, RetryPolicy

FAST_RETRY = RetryPolicy(backoff_initial=0.02, backoff_max=0.2)

#: Seconds any one test may take before trio.fail_after ends it.
DEADLINE = 20


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``condition`` from a thread (the sync clients' tests) for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


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

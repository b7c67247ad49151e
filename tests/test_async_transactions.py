"""Optimistic transactions (WATCH … MULTI/EXEC) on both clients, against a real server.

The async bodies run under trio and under asyncio (the ``run`` fixture). Concurrent
changes come from a plain redis-py client, which is another connection, as another
process's would be. ``max_connections=1`` makes leaks visible: a pipeline that kept its
reserved connection would leave the next ``watch()`` waiting forever, and one that gave
back a still-watching connection would make the next transaction on it fail.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions
from async_helpers import move_on_after, run_fixture, sleep, within  # noqa: F401

import ailf
from ailf import (
    AsyncRedisClient,
    RedisClient,
    RedisConfig,
    RedisConnectionError,
    RedisError,
    RedisServer,
    WatchError,
)
from ailf.clients._pipeline import AsyncPipeline, Pipeline

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def other(redis_config: RedisConfig) -> Iterator[redis.Redis]:
    """Another client on another connection: the concurrent writer."""
    client = redis.Redis.from_url(redis_config.url, decode_responses=True)
    yield client
    client.close()


async def _connection_id(pipe: AsyncPipeline) -> int:
    """The server's id for the pipeline's reserved connection (only while watching)."""
    return await pipe.execute_command("CLIENT", "ID")


def _connected_ids(other: redis.Redis) -> set[int]:
    return {int(client["id"]) for client in other.client_list()}


async def _transfer(client: AsyncRedisClient, watched: str = "watched") -> list[Any]:
    """A transaction on ``watched`` that must go through: nothing else touches it."""
    async with client.pipeline() as pipe:
        await pipe.watch(watched)
        await pipe.get(watched)
        pipe.multi()
        pipe.incr(watched)
        return await pipe.execute()


# -- check-and-set ---------------------------------------------------------------------


def test_check_and_set_succeeds(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.set("balance", 10)
            await client.hset("account", mapping={"owner": "ada"})
            async with client.pipeline() as pipe:
                assert await pipe.watch("balance", "account") is True
                balance = int(await pipe.get("balance"))
                assert await pipe.hgetall("account") == {"owner": "ada"}  # converted
                assert await pipe.execute_command("GET", "balance") == "10"
                pipe.multi()
                assert pipe.set("balance", balance + 5).incr("deposits") is pipe
                assert len(pipe) == 2
                assert await pipe.execute() == [True, 1]
                assert len(pipe) == 0
            assert await client.get("balance") == "15"
            assert await client.get("deposits") == "1"

    run(body)


def test_a_change_between_watch_and_exec_raises_watch_error(
    run, redis_config: RedisConfig, other: redis.Redis
) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.set("balance", 10)
            async with client.pipeline() as pipe:
                await pipe.watch("balance")
                balance = int(await pipe.get("balance"))
                other.set("balance", 99)
                pipe.multi()
                pipe.set("balance", balance + 5).incr("deposits")
                with pytest.raises(WatchError, match="watched key changed"):
                    await pipe.execute()
                assert len(pipe) == 0
                # The pipeline is reset: usable again, as a plain pipeline.
                pipe.set("after", 1)
                assert await pipe.execute() == [True]
            assert await client.get("balance") == "99"
            assert await client.exists("deposits") == 0

    run(body)


def test_execute_without_multi_still_checks_the_watch(
    run, redis_config: RedisConfig, other: redis.Redis
) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            async with client.pipeline() as pipe:
                await pipe.watch("k")
                assert await pipe.set("elsewhere", 1) is True  # runs at once
                assert await pipe.execute() == []
            async with client.pipeline() as pipe:
                await pipe.watch("k")
                other.set("k", 2)
                with pytest.raises(WatchError):
                    await pipe.execute()

    run(body)


def test_unwatch_ends_immediate_mode(run, redis_config: RedisConfig, other: redis.Redis) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client, client.pipeline() as pipe:
            await pipe.watch("k")
            assert await pipe.unwatch() is True
            other.set("k", "changed")
            assert pipe.set("mine", 1) is pipe  # queued again
            assert await pipe.execute() == [True]

    run(body)


def test_watch_error_is_ailf_and_redis_py() -> None:
    assert issubclass(WatchError, RedisError)
    assert issubclass(WatchError, redis.exceptions.WatchError)
    assert ailf.WatchError is WatchError


def test_misuse_is_refused_with_a_clear_error(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            async with client.pipeline() as pipe:
                with pytest.raises(ValueError, match="at least one key"):
                    await pipe.watch()
                await pipe.watch("k")
                pipe.multi()
                with pytest.raises(RedisError, match="MULTI cannot be nested"):
                    pipe.multi()
                with pytest.raises(RedisError, match="WATCH must come before MULTI"):
                    await pipe.watch("other")
            async with client.pipeline() as pipe:
                pipe.set("k", 1)
                with pytest.raises(RedisError, match="right after watch"):
                    pipe.multi()

    run(body)


def test_raw_watch_is_refused_pointing_at_pipeline_watch(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            for command in ("WATCH", "UNWATCH"):
                with pytest.raises(ValueError, match=r"client\.pipeline\(\)\.watch\(key\)"):
                    await client.execute_command(command, "k")

    run(body)


# -- transaction() ---------------------------------------------------------------------


def test_transaction_retries_until_no_watched_key_changed(
    run, redis_config: RedisConfig, other: redis.Redis
) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.set("counter", 0)
            attempts = 0

            async def double(pipe: AsyncPipeline) -> int:
                nonlocal attempts
                attempts += 1
                value = int(await pipe.get("counter"))
                if attempts < 3:
                    other.incr("counter")  # another writer gets in first
                pipe.multi()
                pipe.set("counter", value * 2 + 1)
                return value

            seen = await client.transaction(
                double, "counter", value_from_callable=True, watch_delay=0.01
            )
            assert attempts == 3 and seen == 2
            assert await client.get("counter") == "5"

            def sync_func(pipe: AsyncPipeline) -> None:
                pipe.multi()
                pipe.incr("counter")

            assert await client.transaction(sync_func, "counter") == [6]

    run(body)


def test_transaction_without_async_with(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        client = AsyncRedisClient(redis_config)
        try:

            async def add(pipe: AsyncPipeline) -> None:
                value = int(await pipe.get("n") or 0)
                pipe.multi()
                pipe.set("n", value + 1)

            for _ in range(3):
                assert await client.transaction(add, "n") == [True]
            assert await client.get("n") == "3"
        finally:
            await client.aclose()

    run(body)


# -- the reserved connection: released, unwatched, never leaked ------------------------


def test_reset_exit_and_exceptions_give_back_an_unwatched_connection(
    run, redis_config: RedisConfig, other: redis.Redis
) -> None:
    async def body() -> None:
        config = redis_config.replace(max_connections=1)
        async with AsyncRedisClient(config) as client:
            async with client.pipeline() as pipe:
                await pipe.watch("stale")
                first = await _connection_id(pipe)
            other.set("stale", "changed")  # would abort a transaction still watching it
            assert await within(5, _transfer(client)) == [1]

            pipe = client.pipeline()
            await pipe.watch("stale")
            assert await _connection_id(pipe) == first  # the same connection, reused
            await pipe.reset()
            other.set("stale", "changed again")
            assert await within(5, _transfer(client)) == [2]

            with pytest.raises(KeyError):
                async with client.pipeline() as pipe:
                    await pipe.watch("stale")
                    raise KeyError("boom")
            other.set("stale", "and again")
            assert await within(5, _transfer(client)) == [3]

            async with client.pipeline() as pipe:
                await pipe.watch("stale")
                assert await _connection_id(pipe) == first

    run(body)


def test_a_cancelled_command_closes_the_reserved_connection(
    run, redis_config: RedisConfig, other: redis.Redis
) -> None:
    async def body() -> None:
        config = redis_config.replace(max_connections=1)
        async with AsyncRedisClient(config) as client:
            async with client.pipeline() as pipe:
                await pipe.watch("stale")
                cancelled = await _connection_id(pipe)
                await move_on_after(0.2, pipe.blpop, "nothing", 0)
                with pytest.raises(RedisConnectionError, match="reset\\(\\) it"):
                    await pipe.get("stale")
            assert cancelled not in _connected_ids(other)
            other.set("stale", "changed")
            assert await within(5, _transfer(client)) == [1]

    run(body)


def test_cancelling_transactions_anywhere_leaks_nothing(
    run, redis_config: RedisConfig, other: redis.Redis
) -> None:
    rng = random.Random(7)

    async def body() -> None:
        config = redis_config.replace(max_connections=1)
        baseline = len(_connected_ids(other))
        async with AsyncRedisClient(config) as client:

            async def check_and_set() -> None:
                async with client.pipeline() as pipe:
                    await pipe.watch("stale", "counted")
                    value = int(await pipe.get("counted") or 0)
                    await sleep(rng.random() * 0.002)
                    pipe.multi()
                    pipe.set("counted", value + 1)
                    await pipe.execute()

            for _ in range(60):
                await move_on_after(rng.random() * 0.004, check_and_set)
            other.set("stale", "changed")
            assert await within(5, _transfer(client)) == [1]
            # The shared connection (trio) or pool connection (asyncio), and at most one
            # reserved connection: none left behind by the cancelled ones.
            assert len(_connected_ids(other)) <= baseline + 2

    run(body)


def test_a_connection_lost_while_watching_is_a_connection_error(
    run, redis_config: RedisConfig, other: redis.Redis
) -> None:
    async def body() -> None:
        config = redis_config.replace(max_connections=1)
        async with AsyncRedisClient(config) as client:
            async with client.pipeline() as pipe:
                await pipe.watch("k")
                other.client_kill_filter(_id=await _connection_id(pipe))
                with pytest.raises(RedisConnectionError):
                    await pipe.get("k")
            assert await within(5, _transfer(client)) == [1]

    run(body)


# -- the sync face -----------------------------------------------------------------------


@pytest.fixture
def sync_client(redis_config: RedisConfig) -> Iterator[RedisClient]:
    with RedisClient(redis_config.replace(max_connections=1)) as client:
        yield client


def test_sync_check_and_set_and_watch_error(sync_client: RedisClient, other: redis.Redis) -> None:
    sync_client.set("balance", "10")
    with sync_client.pipeline() as pipe:
        assert pipe.watch("balance") is True
        balance = int(pipe.get("balance"))  # runs at once
        pipe.multi()
        pipe.set("balance", str(balance + 5))
        assert pipe.execute() == [True]
    assert sync_client.get("balance") == "15"

    with pytest.raises(WatchError), sync_client.pipeline() as pipe:
        pipe.watch("balance")
        other.set("balance", "99")
        pipe.multi()
        pipe.set("balance", "0")
        pipe.command("incr", "deposits")
    assert sync_client.get("balance") == "99"
    assert sync_client.exists("deposits") == 0


def test_sync_transaction_retries(sync_client: RedisClient, other: redis.Redis) -> None:
    other.set("counter", 0)
    attempts = 0

    def double(pipe: Pipeline) -> int:
        nonlocal attempts
        attempts += 1
        value = int(pipe.get("counter"))
        if attempts < 3:
            other.incr("counter")
        pipe.multi()
        pipe.set("counter", str(value * 2 + 1))
        return value

    assert sync_client.transaction(double, "counter", value_from_callable=True) == 2
    assert attempts == 3 and sync_client.get("counter") == "5"


def test_sync_pipeline_gives_back_an_unwatched_connection(
    sync_client: RedisClient, other: redis.Redis
) -> None:
    with pytest.raises(KeyError), sync_client.pipeline() as pipe:
        pipe.watch("stale")
        raise KeyError("boom")
    with sync_client.pipeline() as pipe:
        pipe.watch("stale")  # left without executing
    other.set("stale", "changed")
    with sync_client.pipeline() as pipe:  # max_connections=1: the same connection
        pipe.watch("stale", "mine")
        pipe.multi()
        pipe.set("mine", "1")
    assert pipe.results == [True]


def test_sync_connection_lost_while_watching_is_a_connection_error(
    sync_client: RedisClient, other: redis.Redis
) -> None:
    with sync_client.pipeline() as pipe:
        pipe.watch("k")
        other.client_kill_filter(_id=pipe.execute_command("CLIENT", "ID"))
        with pytest.raises(RedisConnectionError):
            pipe.get("k")


def test_sync_and_async_faces_have_the_same_names() -> None:
    names = {"watch", "unwatch", "multi", "execute", "reset"}
    assert names <= set(dir(AsyncPipeline)) & set(dir(Pipeline))
    assert {"pipeline", "transaction"} <= set(dir(AsyncRedisClient)) & set(dir(RedisClient))


# -- the docs' example --------------------------------------------------------------------


def test_the_docs_example_runs(
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    redis_config: RedisConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = (DOCS / "clients.md").read_text()
    section = text.split("## Optimistic transactions (WATCH)", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
    monkeypatch.setenv("AILF_REDIS_URL", redis_server.url)
    exec(compile(example, "docs/clients.md (WATCH)", "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out == "[True, 1]\n1\n"

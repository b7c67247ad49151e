"""Connection loss: in-flight commands fail clearly, new ones reconnect, pub/sub resubscribes.

Each test kills (SIGKILL) and restarts a throwaway redis-server of its own, under trio
and under asyncio. ``CLIENT PAUSE`` from a side connection holds commands in flight on
the server, so that the kill lands while they wait for their replies.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

import pytest
import redis
from async_helpers import (  # noqa: F401 - fixtures
    in_thread,
    resp_parser_fixture,
    run_fixture,
    side_by_side,
    sleep,
    within,
)

from ailf import AsyncRedisClient, RedisConfig, RedisConnectionError, RedisServer, RetryPolicy

pytestmark = pytest.mark.usefixtures("resp_parser")

FAST_RETRY = RetryPolicy(attempts=3, backoff_initial=0.02, backoff_max=0.1, jitter=False)
PATIENT_RETRY = RetryPolicy(attempts=20, backoff_initial=0.05, backoff_max=0.2, jitter=False)


def _pause_server(server: RedisServer, milliseconds: int = 10_000) -> None:
    side = redis.Redis(host="127.0.0.1", port=server.port)
    side.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")
    side.close()


def test_in_flight_commands_fail_and_later_ones_reconnect(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(retry=FAST_RETRY)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            await client.set("before", "1")
            outcomes: list = []

            async def in_flight(n: int) -> None:
                try:
                    await client.get(f"key{n}")
                except RedisConnectionError as exc:
                    outcomes.append(exc)

            async def kill() -> None:
                await sleep(0.2)
                fresh_server.kill()

            _pause_server(fresh_server)
            await side_by_side(*(lambda n=n: in_flight(n) for n in range(20)), kill)
            assert len(outcomes) == 20
            assert all(str(config.port) in str(exc) for exc in outcomes)

            with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{config.port}"):
                await client.get("down")

            fresh_server.start()
            assert await client.set("after", "2") is True
            assert await client.get("after") == "2"
            assert await client.get("before") is None  # a new, empty server

    run(body)


def test_blocking_read_fails_when_server_dies(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(retry=FAST_RETRY)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            await client.xgroup_create("s", "g", mkstream=True)

            async def read() -> Exception | None:
                try:
                    await client.xreadgroup("g", "c", {"s": ">"}, block=0)
                except RedisConnectionError as exc:
                    return exc
                return None

            async def kill() -> None:
                await sleep(0.2)
                fresh_server.kill()

            error, _ = await side_by_side(read, kill)
            assert isinstance(error, RedisConnectionError)
            fresh_server.start()
            assert await client.ping() is True

    run(body)


def test_retry_idempotent_retries_only_safe_commands(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(retry=PATIENT_RETRY)

    async def body() -> None:
        async with AsyncRedisClient(config, retry_idempotent=True) as client:
            await client.set("k", "v")

            async def restart_after_kill() -> None:
                await sleep(0.2)
                fresh_server.kill()
                await sleep(0.3)
                await in_thread(fresh_server.start)

            async def get_in_flight() -> object:
                return await client.get("k")

            _pause_server(fresh_server)
            value, _ = await side_by_side(get_in_flight, restart_after_kill)
            assert value is None  # retried on the restarted (empty) server

            async def incr_in_flight() -> object:
                try:
                    return await client.incr("n")
                except RedisConnectionError as exc:
                    return exc

            _pause_server(fresh_server)
            error, _ = await side_by_side(incr_in_flight, restart_after_kill)
            assert isinstance(error, RedisConnectionError)  # INCR is never retried

    run(body)


def test_without_retry_idempotent_nothing_is_retried(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(retry=PATIENT_RETRY)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            await client.set("k", "v")

            async def get_in_flight() -> object:
                try:
                    return await client.get("k")
                except RedisConnectionError as exc:
                    return exc

            async def kill() -> None:
                await sleep(0.2)
                fresh_server.kill()

            _pause_server(fresh_server)
            error, _ = await side_by_side(get_in_flight, kill)
            assert isinstance(error, RedisConnectionError)

    run(body)


def test_an_idle_connection_the_server_closed_is_replaced(run, fresh_server: RedisServer) -> None:
    """Nobody reads an idle shared connection, so the client checks it before use: a
    command right after the server dropped it goes to a new connection, not to the
    dead one (where it would fail although it never reached the server)."""
    config = fresh_server.config.replace(client_name="victim")

    def kill_victim() -> None:
        side = redis.Redis(host="127.0.0.1", port=fresh_server.port)
        side.execute_command("CLIENT", "KILL", "SKIPME", "yes")
        side.close()

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            for n in range(20):
                assert await client.set("k", n) is True
                await in_thread(kill_victim)
                assert await client.get("k") == str(n)

    run(body)


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Hold enough files open that the next sockets get descriptors past 1023, the
    largest one ``select()`` accepts (FD_SETSIZE): large runtimes get there."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        pytest.skip(f"RLIMIT_NOFILE is {soft}; this test needs 2048 open files")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)


def test_connections_past_descriptor_1023_are_kept(
    run, redis_config: RedisConfig, high_descriptors: None
) -> None:
    """The idle-connection check works on any descriptor: a healthy connection whose
    socket is numbered past select()'s limit is reused, not taken for a closed one
    and replaced before every command."""

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            ids = {await client.execute_command("CLIENT", "ID") for _ in range(5)}
            assert len(ids) == 1
        client = AsyncRedisClient(redis_config)  # no nursery: pooled connections
        try:
            ids = {await client.execute_command("CLIENT", "ID") for _ in range(5)}
            assert len(ids) == 1
        finally:
            await client.aclose()

    run(body)


def test_pubsub_resubscribes_after_restart(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(retry=FAST_RETRY)

    async def body() -> None:
        async with AsyncRedisClient(config) as client, client.pubsub() as ps:
            await ps.subscribe("news")
            await ps.psubscribe("events.*")
            await client.publish("news", "before")
            assert (await ps.get_message(timeout=5))["data"] == "before"

            await in_thread(lambda: fresh_server.restart(kill=True))

            received: dict[str, object] = {}
            for _ in range(200):
                if "news" not in received:
                    await client.publish("news", "after")
                if "events.x" not in received:
                    await client.publish("events.x", "after")
                message = await ps.get_message(timeout=0.05)
                if message is not None:
                    received[message["channel"]] = message
                if len(received) == 2:
                    break
            assert received["news"]["data"] == "after"
            assert received["events.x"]["pattern"] == "events.*"
            assert ps.reconnects >= 1

    run(body)


def test_many_tasks_fail_together_while_the_server_is_down(run, fresh_server: RedisServer) -> None:
    # Each connection attempt sequence takes ~0.6 s here; forty tasks must not run forty
    # of them one after the other.
    slow_retry = RetryPolicy(attempts=3, backoff_initial=0.2, backoff_max=0.2, jitter=False)
    config = fresh_server.config.replace(retry=slow_retry)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            await client.set("k", "v")
            await in_thread(fresh_server.kill)
            failures: list[Exception] = []

            async def command(n: int) -> None:
                try:
                    await client.get(f"k{n}")
                except RedisConnectionError as exc:
                    failures.append(exc)

            await within(5.0, side_by_side(*(lambda n=n: command(n) for n in range(40))))
            assert len(failures) == 40
            fresh_server.start()
            assert await client.get("k") is None

    run(body)

"""AsyncRedisStream against real servers: the sync tests' behaviours, awaited.

Trio tests (pytest-trio) first; the last ones run one body under ``trio.run`` and under
``asyncio.run``, since the async client — and so the twin — runs on both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from functools import partial
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from async_helpers import run_fixture, side_by_side, sleep  # noqa: F401 - fixtures
from messaging_helpers import (  # noqa: F401 - fixtures
    DEADLINE,
    FAST_RETRY,
    client_fixture,
    eventually,
    wait_until,
)

from ailf import (
    AsyncRedisClient,
    AsyncRedisStream,
    RedisConfig,
    RedisConnectionError,
    RedisServer,
    ResponseError,
)
from ailf.messaging._stream_steps import NO_GROUP_MESSAGE, Entry, Read, StreamOperations


@pytest.fixture
def stream(client: AsyncRedisClient) -> AsyncRedisStream:
    return AsyncRedisStream("tasks", client)


# -- the shared steps -------------------------------------------------------------------


def test_a_group_read_that_never_returned_is_followed_by_a_history_read() -> None:
    """A read cancelled or broken after it was sent may have delivered entries."""
    operations = StreamOperations("s", None)
    operations.group, operations.consumer = "g", "c"
    steps = operations._read_group_steps(10, 100)
    assert next(steps) == Read("s", ">", 10, 100, "g", "c")
    with pytest.raises(RedisConnectionError):
        steps.throw(RedisConnectionError("connection lost"))
    assert next(operations._read_group_steps(10, 100)) == Read("s", "0", 10, None, "g", "c")

    steps = operations._read_group_steps(10, 100)  # history empty: then ">"
    next(steps)
    assert steps.send([]) == Read("s", ">", 10, 100, "g", "c")
    with pytest.raises(StopIteration):
        steps.send([["s", [("1-0", {"n": "1"})]]])
    assert next(operations._read_group_steps(10, 100)).last_id == ">"  # it returned


# -- writing and reading ----------------------------------------------------------------


async def test_add_read_trim_and_inspect(stream: AsyncRedisStream) -> None:
    with trio.fail_after(DEADLINE):
        first = await stream.add({"type": "analysis", "priority": 1, "tags": ["a"]})
        assert (await stream.read())[0] == {
            "id": first,
            "data": {"type": "analysis", "priority": 1, "tags": ["a"]},
        }
        ids = [first] + [await stream.add({"i": i}) for i in range(19)]
        assert [e["id"] for e in await stream.read(count=2, last_id=ids[2])] == ids[3:5]
        assert await stream.read(block=50, last_id="$") == []
        assert await stream.trim(maxlen=15, approximate=False) == 5
        assert await stream.trim(minid=ids[10], approximate=False) == 5
        assert await stream.length() == 10
        with pytest.raises(ValueError, match="exactly one"):
            await stream.trim()
        await stream.create_consumer_group("workers", "w1")
        info = await stream.info()
        assert info["length"] == 10 and info["first-entry"]["id"] == ids[10]
        assert [g["name"] for g in await stream.groups()] == ["workers"]
        assert await AsyncRedisStream("missing", stream.client).read() == []
        assert repr(stream) == "<AsyncRedisStream 'tasks' group='workers' consumer='w1'>"


async def test_maxlen_trims_on_add(client: AsyncRedisClient) -> None:
    with trio.fail_after(DEADLINE):
        capped = AsyncRedisStream("capped", client, maxlen=10)
        for i in range(300):
            await capped.add({"i": i})
        assert 10 <= await capped.length() < 300
    with pytest.raises(ValueError, match="maxlen"):
        AsyncRedisStream("bad", client, maxlen=0)


async def test_a_blocking_read_does_not_hold_up_other_commands(
    stream: AsyncRedisStream, client: AsyncRedisClient
) -> None:
    await stream.create_consumer_group("workers", "w1")
    got: list[list[Entry]] = []
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await stream.read_group(block=10_000))

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()  # the XREADGROUP BLOCK is out
            with trio.fail_after(5):  # had it taken the shared connection: 10 s
                for _ in range(20):
                    assert await client.ping() is True
            entry_id = await AsyncRedisStream("tasks", client).add({"n": 1})
    assert [e["id"] for e in got[0]] == [entry_id]


# -- consumer groups --------------------------------------------------------------------


async def test_group_operations_need_a_group(stream: AsyncRedisStream) -> None:
    calls = [
        stream.read_group,
        stream.acknowledge,
        stream.pending,
        stream.pending_entries,
        partial(stream.claim_idle, 0),
        partial(stream.process, print),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            await call()
        assert str(info.value) == NO_GROUP_MESSAGE


async def test_group_read_acknowledge_pending_and_history(
    stream: AsyncRedisStream, client: AsyncRedisClient
) -> None:
    with trio.fail_after(DEADLINE):
        ids = [await stream.add({"i": i}) for i in range(4)]
        await stream.create_consumer_group("workers", "w1")
        await stream.create_consumer_group("workers", "w1")  # BUSYGROUP is success
        assert [m["id"] for m in await stream.read_group(count=3, block=100)] == ids[:3]
        summary = await stream.pending()
        assert (summary.count, summary.consumers) == (3, {"w1": 3})
        assert await stream.acknowledge(ids[0]) == 1
        assert await stream.acknowledge() == 0
        [first, _] = await stream.pending_entries()
        assert (first.id, first.consumer, first.deliveries) == (ids[1], "w1", 1)

        again = AsyncRedisStream("tasks", client)  # w1 restarted: its history first
        await again.create_consumer_group("workers", "w1")
        assert [m["id"] for m in await again.read_group(count=1)] == ids[1:2]
        assert [m["id"] for m in await again.read_group(count=5)] == ids[2:3]
        assert [m["id"] for m in await again.read_group(count=5)] == ids[3:]
        assert await again.read_group(block=50) == []


async def test_competing_consumers_split_ten_messages_exactly_once(
    client: AsyncRedisClient,
) -> None:
    producer = AsyncRedisStream("jobs", client)
    sent = [await producer.add({"n": n}) for n in range(10)]
    handled: dict[str, list[str]] = {"a": [], "b": []}
    stop = trio.Event()

    async def worker(name: str) -> None:
        stream = AsyncRedisStream("jobs", client)
        await stream.create_consumer_group("workers", name)

        async def handler(entry: Entry) -> None:
            handled[name].append(entry["id"])
            await trio.sleep(0.01)  # let the other consumer take its turn
            if sum(map(len, handled.values())) == len(sent):
                stop.set()

        await stream.process(handler, count=1, block=100, stop_event=stop)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, "a")
            nursery.start_soon(worker, "b")
    assert handled["a"] and handled["b"]
    assert sorted(handled["a"] + handled["b"]) == sorted(sent)
    assert (await producer.client.xpending("jobs", "workers"))["pending"] == 0


DOOMED_CONSUMER = textwrap.dedent(
    """
    import trio
    from ailf import AsyncRedisStream

    async def main():
        async with AsyncRedisStream("tasks") as stream:
            await stream.create_consumer_group("workers", "doomed")
            messages = await stream.read_group(count=3)
            print(" ".join(m["id"] for m in messages), flush=True)
            await trio.sleep(600)

    trio.run(main)
    """
)


async def test_entries_of_a_killed_consumer_are_claimed_by_another(
    stream: AsyncRedisStream, redis_server: RedisServer
) -> None:
    ids = [await stream.add({"job": n}) for n in range(5)]
    env = {**os.environ, "AILF_REDIS_URL": redis_server.url}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", DOOMED_CONSUMER], env=env, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    output = b""
    try:
        with trio.fail_after(DEADLINE):
            while not output.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the consumer ended before printing what it took"
                output += chunk
    finally:
        process.kill()  # SIGKILL: no chance to acknowledge or clean up
        await process.wait()
        await process.stdout.aclose()
    assert process.returncode == -signal.SIGKILL
    taken = output.decode().split()
    assert taken == ids[:3]

    with trio.fail_after(DEADLINE):
        rescuer = AsyncRedisStream("tasks", stream.client)
        await rescuer.create_consumer_group("workers", "rescuer")
        assert (await rescuer.pending()).consumers == {"doomed": 3}
        assert await rescuer.claim_idle(min_idle_ms=60_000) == []
        await trio.sleep(0.05)
        claimed = await rescuer.claim_idle(min_idle_ms=20, count=2)
        claimed += await rescuer.claim_idle(min_idle_ms=20, count=10)
        assert [m["id"] for m in claimed] == taken
        assert {e.consumer for e in await rescuer.pending_entries()} == {"rescuer"}
        assert await rescuer.acknowledge(*taken) == 3
        assert [m["data"]["job"] for m in await rescuer.read_group()] == [3, 4]


# -- the processing loop ----------------------------------------------------------------


async def test_process_acks_only_what_the_handler_finished(
    stream: AsyncRedisStream, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(4):
        await stream.add({"n": n})
    await stream.create_consumer_group("workers", "w1")
    seen: list[int] = []

    async def handler(entry: Entry) -> None:
        await trio.lowlevel.checkpoint()
        seen.append(entry["data"]["n"])
        if entry["data"]["n"] == 2:
            raise RuntimeError("cannot do 2")

    with caplog.at_level(logging.ERROR, logger="ailf.stream"), trio.fail_after(DEADLINE):
        acked = await stream.process(handler, block=50, max_messages=4)
    assert seen == [0, 1, 2, 3]
    assert acked == 3
    [pending] = await stream.pending_entries()
    assert (await stream.read())[2]["id"] == pending.id
    [record] = caplog.records
    assert pending.id in record.getMessage() and record.exc_info is not None


async def test_process_retries_failed_entries_through_claim_idle(
    stream: AsyncRedisStream,
) -> None:
    await stream.add({"n": 1})
    await stream.create_consumer_group("workers", "w1")
    attempts: list[str] = []

    def flaky(entry: Entry) -> None:  # a plain handler works too
        attempts.append(entry["id"])
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    with trio.fail_after(DEADLINE):
        assert await stream.process(flaky, block=50, max_messages=2, claim_idle_ms=10) == 1
        assert len(attempts) == 2 and attempts[0] == attempts[1]
        assert (await stream.pending()).count == 0


async def test_process_stops_on_the_event_or_on_cancellation(stream: AsyncRedisStream) -> None:
    await stream.create_consumer_group("workers", "w1")
    stop = trio.Event()
    handled: list[str] = []
    result: list[int] = []

    async def until_stopped() -> None:
        result.append(await stream.process(lambda e: handled.append(e["id"]), stop_event=stop))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_stopped)
            await stream.add({"n": 1})
            await wait_until(lambda: handled)
            stop.set()  # within block=2000 ms
        assert result == [1]

        async with trio.open_nursery() as nursery:  # cancelled while blocked in a read
            nursery.start_soon(partial(stream.process, handled.append, block=10_000))
            await stream.add({"n": 2})
            await wait_until(lambda: len(handled) == 2)

            async def acknowledged() -> bool:
                return (await stream.pending()).count == 0

            await eventually(acknowledged)
            nursery.cancel_scope.cancel()
        # The cancelled XREADGROUP may still take n=3 on the server: it comes back
        # as this consumer's history.
        await stream.add({"n": 3})
        assert await stream.process(handled.append, block=50, max_messages=1) == 1
        assert handled[-1]["data"] == {"n": 3}


async def test_process_raises_unexpected_error_replies(
    stream: AsyncRedisStream, client: AsyncRedisClient
) -> None:
    await stream.create_consumer_group("workers", "w1")
    await client.delete("tasks")
    await client.set("tasks", "not a stream")
    with trio.fail_after(DEADLINE), pytest.raises(ResponseError):
        await stream.process(lambda e: None, block=50, max_messages=1)


async def test_process_refuses_a_count_of_zero_instead_of_spinning(
    stream: AsyncRedisStream,
) -> None:
    await stream.create_consumer_group("workers", "w1")
    with trio.fail_after(DEADLINE), pytest.raises(ValueError, match="count must be an integer"):
        await stream.process(lambda e: None, count=0, max_messages=1)


async def test_process_recreates_a_group_lost_in_a_server_restart(
    fresh_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[int] = []
    stop = trio.Event()
    config = fresh_server.config.replace(retry=FAST_RETRY)
    with caplog.at_level(logging.WARNING, logger="ailf.stream"), trio.fail_after(DEADLINE):
        async with AsyncRedisClient(config) as client, trio.open_nursery() as nursery:
            stream = AsyncRedisStream("mailbox", client)
            await stream.create_consumer_group("workers", "w1")
            nursery.start_soon(
                partial(
                    stream.process,
                    lambda e: handled.append(e["data"]["n"]),
                    block=200,
                    stop_event=stop,
                )
            )
            await stream.add({"n": 1})
            await wait_until(lambda: handled == [1])

            await trio.to_thread.run_sync(partial(fresh_server.restart, kill=True))

            await wait_until(lambda: any("lost its group" in r.message for r in caplog.records))
            await stream.add({"n": 2})  # after the loss: the re-created group at "0" sees it
            await wait_until(lambda: handled == [1, 2])
            stop.set()
        async with AsyncRedisClient(config) as client:
            assert [g["name"] for g in await AsyncRedisStream("mailbox", client).groups()] == [
                "workers"
            ]


async def test_bytes_replies_decode_the_same(redis_config: RedisConfig) -> None:
    config = redis_config.replace(decode_responses=False)
    with trio.fail_after(DEADLINE):
        async with AsyncRedisClient(config) as client:
            stream = AsyncRedisStream("raw", client)
            entry_id = await stream.add({"n": 1, "s": "x"})
            await stream.create_consumer_group("workers", "w1")
            assert await stream.read_group(block=10) == [
                {"id": entry_id, "data": {"n": 1, "s": "x"}}
            ]
            assert (await stream.pending()).consumers == {"w1": 1}
            assert (await stream.claim_idle(0))[0]["id"] == entry_id
            assert (await stream.groups())[0]["name"] == "workers"


# -- its own client -----------------------------------------------------------------------


async def test_without_a_client_it_owns_one_from_the_environment(
    redis_server: RedisServer, redis_config: RedisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AILF_REDIS_URL", redis_server.url)
    with trio.fail_after(DEADLINE):
        async with AsyncRedisStream("owned") as stream:
            entry_id = await stream.add({"n": 1})
        with pytest.raises(RedisConnectionError, match="closed"):  # closed with the block
            await stream.length()
        async with AsyncRedisClient(redis_config) as client:
            async with AsyncRedisStream("owned", client) as borrowed:
                assert (await borrowed.read())[0]["id"] == entry_id
            assert await client.ping() is True  # a client passed in stays open

        unentered = AsyncRedisStream("owned")  # no `async with`: pooled connections
        assert await unentered.length() == 1
        await unentered.aclose()


# -- under trio and under asyncio -------------------------------------------------------------


def _event() -> Any:
    import sniffio

    return trio.Event() if sniffio.current_async_library() == "trio" else asyncio.Event()


def test_group_round_trip_and_process_under_both_libraries(
    run, redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config.replace(retry=FAST_RETRY)) as client:
            await client.delete("both")
            producer = AsyncRedisStream("both", client)
            ids = [await producer.add({"n": n}) for n in range(6)]
            a, b = AsyncRedisStream("both", client), AsyncRedisStream("both", client)
            await a.create_consumer_group("workers", "a")
            await b.create_consumer_group("workers", "b")
            first = await a.read_group(count=2, block=100)
            assert [m["id"] for m in first] == ids[:2]
            assert await a.acknowledge(first[0]["id"]) == 1
            assert [m["id"] for m in await b.claim_idle(0)] == ids[1:2]

            seen: list[int] = []

            async def handler(entry: Entry) -> None:
                await sleep(0)
                seen.append(entry["data"]["n"])
                if entry["data"]["n"] == 3:
                    raise RuntimeError("cannot do 3")

            assert await b.process(handler, block=50, max_messages=5) == 4
            assert seen == [1, 2, 3, 4, 5]
            assert (await b.pending()).count == 1

            stop = _event()
            stop.set()
            assert await a.process(handler, stop_event=stop) == 0

    with caplog.at_level(logging.ERROR, logger="ailf.stream"):
        run(body)
    assert len(caplog.records) == 1


def test_nogroup_recovery_under_both_libraries(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(retry=FAST_RETRY)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            stream = AsyncRedisStream("mailbox", client)
            await stream.create_consumer_group("workers", "w1")
            await stream.add({"n": 1})
            assert await stream.process(print, block=50, max_messages=1) == 1
            fresh_server.restart(kill=True)  # blocks the loop briefly: nothing else runs
            for _ in range(100):  # the first command after the kill may meet the dead socket
                try:
                    await stream.add({"n": 2})  # the stream is back, its group is not
                    break
                except RedisConnectionError:
                    await sleep(0.02)
            handled: list[int] = []
            await stream.process(lambda e: handled.append(e["data"]["n"]), max_messages=1)
            assert handled == [2]

    run(body)


def test_a_polling_read_moves_on_and_waits_under_both_libraries(
    run, redis_config: RedisConfig
) -> None:
    """The async twin reads as a cursor too, and keeps the upstream names."""

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.delete("polled")
            stream = AsyncRedisStream("polled", client)
            assert stream.stream_name == "polled"
            ids = [await stream.add({"i": i}) for i in range(3)]
            assert [e["id"] for e in await stream.read(count=2)] == ids[:2]
            assert [e["id"] for e in await stream.read(count=2, block=1000)] == ids[2:]
            assert await stream.read(count=2, block=100) == []

            async def add_late() -> str:
                await sleep(0.1)
                return await stream.add({"i": 3})

            read, added = await side_by_side(lambda: stream.read(block=5000), add_late)
            assert [e["id"] for e in read] == [added]
            assert await stream.read(last_id="$") == []
            newest = await stream.add({"i": 4})
            assert [e["id"] for e in await stream.read()] == [newest]
            assert len(await stream.read(last_id="0")) == 5
            assert await stream.create_consumer_group("workers", "w1") is True
            assert await stream.create_consumer_group("workers", "w2") is True

    run(body)

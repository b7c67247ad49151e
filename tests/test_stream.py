"""RedisStream against real servers: entries, groups, pending work, crashes, restarts."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from messaging_helpers import FAST_RETRY, wait_for

from ailf import (
    AsyncRedisStream,
    AuthenticationError,
    RedisClient,
    RedisConfig,
    RedisConnectionError,
    RedisServer,
    RedisStream,
    ResponseError,
    RetryPolicy,
)
from ailf.messaging._stream_steps import (
    NO_GROUP_MESSAGE,
    Call,
    LoopBackoff,
    PendingEntry,
    PendingSummary,
    StreamOperations,
    decode_fields,
    encode_fields,
    entries_of,
    info_of,
    pending_entries_of,
    pending_summary_of,
)


@pytest.fixture
def client(redis_config: RedisConfig) -> Iterator[RedisClient]:
    with RedisClient(redis_config.replace(retry=FAST_RETRY)) as client:
        yield client


@pytest.fixture
def stream(client: RedisClient) -> RedisStream:
    return RedisStream("tasks", client)


# -- the pure half ----------------------------------------------------------------------


def test_fields_round_trip_with_their_types() -> None:
    data = {"n": 1, "f": 0.5, "s": "text", "b": False, "none": None, "deep": {"l": [1, "2"]}}
    fields = encode_fields(data)
    assert list(fields.items())[:1] == [("n", "1")]
    assert decode_fields(fields) == data
    assert decode_fields({b"n": b"1", b"s": b"plain words"}) == {"n": 1, "s": "plain words"}
    assert decode_fields({"k": "[1]"}) == {"k": [1]}


def test_encode_fields_rejects_what_xadd_cannot_take() -> None:
    with pytest.raises(ValueError, match="non-empty dict"):
        encode_fields({})
    with pytest.raises(ValueError, match="field names"):
        encode_fields({1: "x"})  # type: ignore[dict-item]


def test_steps_call_the_surface_and_shape_its_replies() -> None:
    """The steps name the command surface's methods, whose replies are parsed already:
    the stream helpers only turn them into entry dicts and records."""
    operations = StreamOperations("s", 100)
    steps = operations._add_steps({"a": 1})
    assert next(steps) == Call("xadd", ("s", {"a": "1"}), {"maxlen": 100})
    assert next(StreamOperations("s", None)._add_steps({"a": 1})) == Call(
        "xadd", ("s", {"a": "1"}), {"maxlen": None}
    )
    entries = [("1-0", {"a": "1"}), ("2-0", None)]
    assert entries_of(entries) == [{"id": "1-0", "data": {"a": 1}}]
    assert entries_of([]) == []
    summary = {
        "pending": 2,
        "min": "1-0",
        "max": "2-0",
        "consumers": [{"name": "w1", "pending": 2}],
    }
    assert pending_summary_of(summary) == PendingSummary(2, "1-0", "2-0", {"w1": 2})
    empty = {"pending": 0, "min": None, "max": None, "consumers": []}
    assert pending_summary_of(empty) == PendingSummary(0, None, None, {})
    pending = [
        {"message_id": "1-0", "consumer": "w1", "time_since_delivered": 5, "times_delivered": 2}
    ]
    assert pending_entries_of(pending) == [PendingEntry("1-0", "w1", 5, 2)]
    assert info_of({"name": b"g", "pending": 3, "first-entry": None}) == {
        "name": "g",
        "pending": 3,
        "first-entry": None,
    }


def test_loop_backoff_paces_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    backoff = LoopBackoff("s", RetryPolicy(backoff_initial=0.1, backoff_max=0.3, jitter=False))
    assert backoff.handled(0) == 0.0
    assert [backoff.handled(1), backoff.handled(2)] == [0.1, 0.2]
    assert backoff.handled(0) == 0.0  # a clean round resets the delay
    down = RedisConnectionError("gone")
    with caplog.at_level(logging.DEBUG, logger="ailf.stream"):
        delays = [backoff.redis_failed(down) for _ in range(4)]
        assert backoff.handled(0) == 0.0
    assert delays == [0.1, 0.2, 0.3, 0.3]
    levels = [r.levelname for r in caplog.records if r.levelno >= logging.INFO]
    assert levels == ["WARNING", "INFO"]  # once when the outage starts, once when it ends
    assert backoff.redis_failed(ResponseError("NOGROUP no such group")) == 0.1
    for fatal in (AuthenticationError("wrong password"), ResponseError("WRONGTYPE no")):
        with pytest.raises(type(fatal)):
            backoff.redis_failed(fatal)


# -- writing and reading ----------------------------------------------------------------


def test_add_keeps_field_types(stream: RedisStream) -> None:
    entry_id = stream.add({"type": "analysis", "priority": 1, "tags": ["a"], "done": False})
    assert entry_id.count("-") == 1
    [entry] = stream.read()
    assert entry == {
        "id": entry_id,
        "data": {"type": "analysis", "priority": 1, "tags": ["a"], "done": False},
    }
    assert entry["data"]["priority"] == 1


def test_entries_written_by_other_programs_read_as_strings(
    stream: RedisStream, client: RedisClient
) -> None:
    client.client.xadd("tasks", {"text": "hello world", "count": "3", "raw": "{oops"})
    [entry] = stream.read()
    assert entry["data"] == {"text": "hello world", "count": 3, "raw": "{oops"}


def test_read_from_an_id_with_count_and_block(stream: RedisStream) -> None:
    ids = [stream.add({"i": i}) for i in range(5)]
    assert [e["data"]["i"] for e in stream.read(count=2)] == [0, 1]
    assert [e["id"] for e in stream.read(last_id=ids[2])] == ids[3:]
    started = time.monotonic()
    assert stream.read(block=100, last_id="$") == []
    assert time.monotonic() - started >= 0.09
    assert RedisStream("missing", stream.client).read() == []


def test_a_polling_read_returns_each_entry_once_and_waits_when_nothing_is_new(
    stream: RedisStream,
) -> None:
    """The upstream library's monitor loop: ``read(count, block)`` over and over."""
    ids = [stream.add({"i": i}) for i in range(3)]
    assert [e["id"] for e in stream.read(count=2)] == ids[:2]
    assert [e["id"] for e in stream.read(count=2, block=1000)] == ids[2:]
    started = time.monotonic()
    assert stream.read(count=2, block=200) == []  # nothing new: it waits, once
    assert time.monotonic() - started >= 0.19
    late = threading.Timer(0.1, stream.add, [{"i": 3}])
    late.start()
    assert [e["data"]["i"] for e in stream.read(block=5000)] == [3]
    late.join()
    handed_out = sum(len(stream.read(count=10, block=20)) for _ in range(10))
    assert handed_out == 0  # a busy loop would hand the same four out again and again


def test_an_explicit_last_id_moves_the_reading_position(stream: RedisStream) -> None:
    old = stream.add({"i": 0})
    assert stream.read(last_id="$") == []  # only what comes after this call...
    new = stream.add({"i": 1})
    assert [e["id"] for e in stream.read()] == [new]  # ...even when added between calls
    assert [e["id"] for e in stream.read(last_id="0")] == [old, new]  # from the start again
    assert stream.read() == []
    fresh = RedisStream("tasks", stream.client)
    assert [e["id"] for e in fresh.read()] == [old, new]  # a new object starts at "0"
    assert RedisStream("nothing-yet", stream.client).read(block=50, last_id="$") == []


def test_upstream_names_and_returns_keep_working(stream: RedisStream) -> None:
    assert stream.stream_name == stream.name == "tasks"
    assert stream.create_consumer_group("workers", "w1") is True
    assert stream.create_consumer_group("workers", "w2") is True  # it exists: still success


def test_maxlen_trims_on_add(client: RedisClient) -> None:
    capped = RedisStream("capped", client, maxlen=10)
    for i in range(500):
        capped.add({"i": i})
    assert 10 <= capped.length() < 500
    assert capped.read(count=1, last_id="0")[0]["data"]["i"] > 0
    with pytest.raises(ValueError, match="maxlen"):
        RedisStream("bad", client, maxlen=0)
    with pytest.raises(ValueError, match="maxlen: expected an integer >= 1 or None, got '10'"):
        RedisStream("bad", client, maxlen="10")  # type: ignore[arg-type]


def test_a_config_where_the_client_belongs_is_refused(redis_config: RedisConfig) -> None:
    with pytest.raises(TypeError, match="RedisStream: client takes RedisClient or None"):
        RedisStream("tasks", redis_config)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncRedisStream: client takes AsyncRedisClient"):
        AsyncRedisStream("tasks", redis_config)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", 5, None])
def test_a_stream_needs_a_key(client: RedisClient, name: object) -> None:
    with pytest.raises(ValueError, match="name: expected the stream's key"):
        RedisStream(name, client)  # type: ignore[arg-type]


def test_trim_by_maxlen_and_minid(stream: RedisStream) -> None:
    ids = [stream.add({"i": i}) for i in range(20)]
    assert stream.trim(maxlen=15, approximate=False) == 5
    assert stream.length() == 15
    assert stream.trim(minid=ids[10], approximate=False) == 5
    assert stream.read(count=1)[0]["id"] == ids[10]
    assert stream.trim(maxlen=1000) == 0
    with pytest.raises(ValueError, match="exactly one"):
        stream.trim()


def test_info_and_groups(stream: RedisStream) -> None:
    first = stream.add({"i": 0})
    stream.add({"i": 1})
    stream.create_consumer_group("workers", "w1")
    info = stream.info()
    assert info["length"] == 2
    assert info["first-entry"] == {"id": first, "data": {"i": 0}}
    [group] = stream.groups()
    assert group["name"] == "workers" and group["pending"] == 0


# -- consumer groups --------------------------------------------------------------------


def test_group_operations_need_a_group(stream: RedisStream) -> None:
    for call in (
        stream.read_group,
        stream.acknowledge,
        stream.pending,
        stream.pending_entries,
        lambda: stream.claim_idle(0),
        lambda: stream.process(print),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == NO_GROUP_MESSAGE
    with pytest.raises(ValueError) as info:
        stream.acknowledge("1-0")
    assert str(info.value) == "No consumer group set. Call create_consumer_group first."


def test_create_group_makes_the_stream_without_a_dummy_entry(stream: RedisStream) -> None:
    stream.create_consumer_group("workers", "w1")
    assert stream.length() == 0
    assert stream.client.exists("tasks") == 1
    stream.create_consumer_group("workers", "w1")  # BUSYGROUP is success
    assert [g["name"] for g in stream.groups()] == ["workers"]


def test_default_start_reads_the_backlog_and_dollar_does_not(
    stream: RedisStream, client: RedisClient
) -> None:
    stream.add({"task": "early"})
    stream.create_consumer_group("backlog", "w1")
    assert [m["data"]["task"] for m in stream.read_group()] == ["early"]
    only_new = RedisStream("tasks", client)
    only_new.create_consumer_group("new-only", "w1", start_id="$")
    assert only_new.read_group() == []
    stream.add({"task": "late"})
    assert [m["data"]["task"] for m in only_new.read_group()] == ["late"]


def test_read_group_acknowledge_and_pending(stream: RedisStream) -> None:
    ids = [stream.add({"i": i}) for i in range(3)]
    stream.create_consumer_group("workers", "w1")
    messages = stream.read_group(count=10, block=100)
    assert [m["id"] for m in messages] == ids
    summary = stream.pending()
    assert (summary.count, summary.min_id, summary.max_id) == (3, ids[0], ids[2])
    assert summary.consumers == {"w1": 3}
    assert stream.acknowledge(ids[0], ids[1]) == 2
    assert stream.acknowledge(ids[0]) == 0
    assert stream.acknowledge() == 0
    [entry] = stream.pending_entries()
    assert (entry.id, entry.consumer, entry.deliveries) == (ids[2], "w1", 1)
    assert stream.pending_entries(consumer="nobody") == []
    assert stream.pending_entries(idle=60_000) == []
    assert stream.read_group(block=50) == []


def test_a_restarted_consumer_gets_its_unacknowledged_entries_first(
    stream: RedisStream, client: RedisClient
) -> None:
    ids = [stream.add({"i": i}) for i in range(4)]
    stream.create_consumer_group("workers", "w1")
    assert len(stream.read_group(count=3)) == 3  # never acknowledged: the worker "dies"
    stream.add({"i": 4})

    again = RedisStream("tasks", client)
    again.create_consumer_group("workers", "w1")
    assert [m["id"] for m in again.read_group(count=2)] == ids[:2]
    assert [m["id"] for m in again.read_group(count=2)] == ids[2:3]
    assert [m["data"]["i"] for m in again.read_group(count=10)] == [3, 4]


def test_history_skips_and_acknowledges_entries_trimmed_while_pending(
    stream: RedisStream, client: RedisClient
) -> None:
    ids = [stream.add({"i": i}) for i in range(3)]
    stream.create_consumer_group("workers", "w1")
    stream.read_group()
    client.client.xdel("tasks", ids[0], ids[1])
    again = RedisStream("tasks", client)
    again.create_consumer_group("workers", "w1")
    assert [m["id"] for m in again.read_group()] == [ids[2]]
    assert again.pending().count == 1


def test_two_consumers_split_ten_messages_exactly_once(client: RedisClient) -> None:
    producer = RedisStream("jobs", client)
    sent = {producer.add({"n": n}) for n in range(10)}
    a, b = RedisStream("jobs", client), RedisStream("jobs", client)
    a.create_consumer_group("workers", "a")
    b.create_consumer_group("workers", "b")
    seen: dict[str, list[str]] = {"a": [], "b": []}
    while True:
        batch_a, batch_b = a.read_group(count=3), b.read_group(count=3)
        if not batch_a and not batch_b:
            break
        for name, stream, batch in (("a", a, batch_a), ("b", b, batch_b)):
            seen[name] += [m["id"] for m in batch]
            stream.acknowledge(*(m["id"] for m in batch))
    assert seen["a"] and seen["b"]
    assert sorted(seen["a"] + seen["b"]) == sorted(sent)
    assert a.pending().count == 0


def test_competing_consumers_in_threads_process_each_message_once(client: RedisClient) -> None:
    producer = RedisStream("jobs", client)
    sent = [producer.add({"n": n}) for n in range(10)]
    handled: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(name: str) -> None:
        stream = RedisStream("jobs", client)
        stream.create_consumer_group("workers", name)

        def handler(entry: dict[str, Any]) -> None:
            with lock:
                handled.append(entry["id"])
                if len(handled) == len(sent):
                    stop.set()

        stream.process(handler, count=1, block=100, stop_event=stop)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(handled) == sorted(sent)
    assert producer.client.execute_command("XPENDING", "jobs", "workers")[0] == 0


DOOMED_CONSUMER = textwrap.dedent(
    """
    import sys, time
    from ailf import RedisStream

    stream = RedisStream("tasks")
    stream.create_consumer_group("workers", "doomed")
    messages = stream.read_group(count=3)
    print(" ".join(m["id"] for m in messages), flush=True)
    time.sleep(600)
    """
)


def test_entries_of_a_killed_consumer_are_claimed_by_another(
    stream: RedisStream, redis_server: RedisServer
) -> None:
    ids = [stream.add({"job": n}) for n in range(5)]
    env = {**os.environ, "AILF_REDIS_URL": redis_server.url}
    process = subprocess.Popen(
        [sys.executable, "-c", DOOMED_CONSUMER], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        taken = process.stdout.readline().split()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdout:
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert taken == ids[:3]

    rescuer = RedisStream("tasks", stream.client)
    rescuer.create_consumer_group("workers", "rescuer")
    assert rescuer.pending().consumers == {"doomed": 3}
    assert rescuer.claim_idle(min_idle_ms=60_000) == []  # not idle long enough yet
    time.sleep(0.05)
    claimed = rescuer.claim_idle(min_idle_ms=20, count=10)
    assert [m["id"] for m in claimed] == taken
    assert [m["data"]["job"] for m in claimed] == [0, 1, 2]
    assert {e.consumer for e in rescuer.pending_entries()} == {"rescuer"}
    assert rescuer.acknowledge(*taken) == 3
    assert [m["data"]["job"] for m in rescuer.read_group()] == [3, 4]


def test_claim_idle_respects_count(stream: RedisStream, client: RedisClient) -> None:
    for n in range(5):
        stream.add({"n": n})
    stream.create_consumer_group("workers", "first")
    stream.read_group()
    other = RedisStream("tasks", client)
    other.create_consumer_group("workers", "second")
    assert len(other.claim_idle(0, count=2)) == 2
    assert len(other.claim_idle(0, count=10)) == 5


# -- the processing loop ----------------------------------------------------------------


def test_process_acks_only_what_the_handler_finished(
    stream: RedisStream, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(4):
        stream.add({"n": n})
    stream.create_consumer_group("workers", "w1")
    seen: list[int] = []

    def handler(entry: dict[str, Any]) -> None:
        seen.append(entry["data"]["n"])
        if entry["data"]["n"] == 2:
            raise RuntimeError("cannot do 2")

    with caplog.at_level(logging.ERROR, logger="ailf.stream"):
        acked = stream.process(handler, block=50, max_messages=4)
    assert seen == [0, 1, 2, 3]
    assert acked == 3
    [pending] = stream.pending_entries()
    assert stream.read(last_id="0")[2]["id"] == pending.id
    [record] = caplog.records
    assert pending.id in record.getMessage() and record.exc_info is not None


def test_process_retries_failed_entries_through_claim_idle(stream: RedisStream) -> None:
    stream.add({"n": 1})
    stream.create_consumer_group("workers", "w1")
    attempts: list[str] = []

    def flaky(entry: dict[str, Any]) -> None:
        attempts.append(entry["id"])
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    assert stream.process(flaky, block=50, max_messages=2, claim_idle_ms=10) == 1
    assert len(attempts) == 2 and attempts[0] == attempts[1]
    assert stream.pending().count == 0


def test_process_stops_on_the_event(stream: RedisStream) -> None:
    stream.create_consumer_group("workers", "w1")
    stop = threading.Event()
    handled: list[str] = []
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            stream.process(lambda e: handled.append(e["id"]), block=100, stop_event=stop)
        )
    )
    thread.start()
    stream.add({"n": 1})
    wait_for(lambda: handled and stream.pending().count == 0)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert result == [1]


def test_process_raises_unexpected_error_replies(stream: RedisStream, client: RedisClient) -> None:
    stream.create_consumer_group("workers", "w1")
    client.delete("tasks")
    client.set("tasks", "not a stream")
    with pytest.raises(ResponseError):
        stream.process(lambda e: None, block=50, max_messages=1)


@pytest.mark.parametrize(
    ("handler", "options", "error"),
    [
        ("print", {}, "handler must be callable"),
        (print, {"count": 0}, "count must be an integer >= 1, got 0"),
        (print, {"block": -1}, "block must be milliseconds >= 0, got -1"),
    ],
    ids=["handler", "count", "block"],
)
def test_process_refuses_bad_arguments_before_reading(
    stream: RedisStream, handler: Any, options: dict[str, int], error: str
) -> None:
    stream.create_consumer_group("workers", "w1")
    stream.add({"n": 1})
    with pytest.raises((TypeError, ValueError), match=error):
        stream.process(handler, max_messages=1, **options)
    assert stream.pending().count == 0


def test_process_recreates_a_group_lost_in_a_server_restart(
    fresh_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = RedisClient(fresh_server.config.replace(retry=FAST_RETRY))
    stream = RedisStream("mailbox", client)
    stream.create_consumer_group("workers", "w1")
    handled: list[int] = []
    stop = threading.Event()

    def handler(entry: dict[str, Any]) -> None:
        handled.append(entry["data"]["n"])

    with caplog.at_level(logging.WARNING, logger="ailf.stream"):
        thread = threading.Thread(
            target=stream.process, args=(handler,), kwargs={"block": 200, "stop_event": stop}
        )
        thread.start()
        stream.add({"n": 1})
        wait_for(lambda: handled == [1])

        fresh_server.restart(kill=True)  # no persistence: stream and group are gone

        wait_for(lambda: any("lost its group" in r.getMessage() for r in caplog.records))
        stream.add({"n": 2})
        wait_for(lambda: handled == [1, 2])
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert [g["name"] for g in stream.groups()] == ["workers"]
    client.close()


def test_bytes_replies_decode_the_same(redis_config: RedisConfig) -> None:
    with RedisClient(redis_config.replace(decode_responses=False)) as client:
        stream = RedisStream("raw", client)
        entry_id = stream.add({"n": 1, "s": "x"})
        stream.create_consumer_group("workers", "w1")
        assert stream.read_group() == [{"id": entry_id, "data": {"n": 1, "s": "x"}}]
        assert stream.pending().consumers == {"w1": 1}
        assert stream.claim_idle(0)[0]["id"] == entry_id
        assert stream.groups()[0]["name"] == "workers"

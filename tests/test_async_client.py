"""AsyncRedisClient's commands, pipelines and pub/sub, under trio and asyncio alike.

Every test body here is an ``async def`` run by the ``run`` fixture once under
``trio.run`` and once under ``asyncio.run``, and (through ``resp_parser``) with hiredis
and with the pure-Python RESP parser, against a real throwaway redis-server.
"""

from __future__ import annotations

import math
import socket
import time
import warnings

import pytest
import redis
from async_helpers import (  # noqa: F401 - fixtures
    move_on_after,
    resp_parser_fixture,
    run_fixture,
    side_by_side,
    sleep,
)

from ailf import (
    AsyncRedisClient,
    AuthenticationError,
    ConfigError,
    RedisConfig,
    RedisConnectionError,
    RedisServer,
    RedisTimeoutError,
    ResponseError,
    WatchError,
)

pytestmark = pytest.mark.usefixtures("resp_parser")


def test_strings_and_keys(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            assert await client.ping() is True
            assert await client.get("missing") is None
            assert await client.set("k", "v") is True
            assert await client.get("k") == "v"
            assert await client.set("k", "w", nx=True) is None
            assert await client.set("k", "w", xx=True) is True
            assert await client.set("t", 1, expire=100) is True
            assert 0 < await client.ttl("t") <= 100
            assert await client.set("p", 1, px=50_000) is True
            assert await client.exists("k", "t", "missing") == 2
            assert await client.incr("n") == 1
            assert await client.incr("n", amount=5) == 6
            assert await client.expire("n", 60) is True
            assert await client.delete("k", "t", "missing") == 2
            assert await client.execute_command("ECHO", "raw") == "raw"

    run(body)


def test_a_nan_or_infinite_expiry_is_refused_before_sending(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            for endless in (float("nan"), float("inf")):
                with pytest.raises(ValueError, match="expected a finite number of seconds"):
                    await client.set("k", "v", expire=endless)
                with pytest.raises(ValueError, match="expected a finite number of seconds"):
                    await client.expire("k", endless)
            assert await client.exists("k") == 0

    run(body)


def test_decode_responses_off_gives_bytes(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        config = redis_config.replace(decode_responses=False)
        async with AsyncRedisClient(config) as client:
            await client.set("b", b"\xff\x00")
            assert await client.get("b") == b"\xff\x00"
            await client.hset("h", "f", "v")
            assert await client.hgetall("h") == {b"f": b"v"}

    run(body)


def test_hashes_and_json(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            assert await client.hset("h", "a", "1") == 1
            assert await client.hset("h", mapping={"b": "2", "c": "3"}) == 2
            assert await client.hget("h", "a") == "1"
            assert await client.hget("h", "zz") is None
            assert await client.hgetall("h") == {"a": "1", "b": "2", "c": "3"}
            assert await client.hgetall("nothing") == {}
            assert await client.hincrby("h", "a", 4) == 5
            assert await client.hdel("h", "b", "c") == 2
            user = {"name": "Alice", "settings": {"theme": "dark", "on": True}}
            assert await client.set_json("user:1", user, expire=60) is True
            assert await client.get_json("user:1") == user
            assert await client.get_json("user:missing") is None

    run(body)


def test_error_reply_has_code_and_client_stays_usable(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.set("s", "text")
            with pytest.raises(ResponseError) as caught:
                await client.incr("s")
            assert caught.value.code == "ERR"
            await client.xgroup_create("stream", "group", mkstream=True)
            with pytest.raises(ResponseError) as caught:
                await client.xgroup_create("stream", "group")
            assert caught.value.code == "BUSYGROUP"
            with pytest.raises(ResponseError) as caught:
                await client.xreadgroup("nogroup", "c", {"stream": ">"})
            assert caught.value.code == "NOGROUP"
            assert await client.get("s") == "text"

    run(body)


def test_streams_and_consumer_groups(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            assert await client.xgroup_create("jobs", "workers", id="0", mkstream=True) is True
            first = await client.xadd("jobs", {"n": "1"})
            second = await client.xadd("jobs", {"n": "2"}, maxlen=1000)
            assert isinstance(first, str) and first < second
            assert await client.xlen("jobs") == 2
            assert await client.xrange("jobs") == [(first, {"n": "1"}), (second, {"n": "2"})]
            assert await client.xrange("jobs", count=1) == [(first, {"n": "1"})]
            assert await client.xread({"jobs": "0"}, count=1) == [["jobs", [(first, {"n": "1"})]]]
            assert await client.xread({"jobs": second}, block=10) == []

            read = await client.xreadgroup("workers", "alice", {"jobs": ">"}, count=10)
            assert read == [["jobs", [(first, {"n": "1"}), (second, {"n": "2"})]]]
            summary = await client.xpending("jobs", "workers")
            assert summary["pending"] == 2
            assert (summary["min"], summary["max"]) == (first, second)
            assert summary["consumers"] == [{"name": "alice", "pending": 2}]
            detail = await client.xpending_range("jobs", "workers", count=10)
            assert [d["message_id"] for d in detail] == [first, second]
            assert detail[0]["consumer"] == "alice" and detail[0]["times_delivered"] == 1
            assert await client.xpending_range("jobs", "workers", consumername="bob") == []

            claimed = await client.xautoclaim("jobs", "workers", "bob", 0, count=1)
            assert claimed[1] == [(first, {"n": "1"})] and claimed[2] == []
            ids = await client.xautoclaim("jobs", "workers", "bob", 0, justid=True)
            assert set(ids) == {first, second}
            assert await client.xack("jobs", "workers", first, second) == 2
            assert (await client.xpending("jobs", "workers"))["pending"] == 0

            info = await client.xinfo_stream("jobs")
            assert info["length"] == 2 and info["first-entry"] == (first, {"n": "1"})
            groups = await client.xinfo_groups("jobs")
            assert groups[0]["name"] == "workers"
            assert await client.xgroup_createconsumer("jobs", "workers", "carol") == 1
            consumers = await client.xinfo_consumers("jobs", "workers")
            assert {c["name"] for c in consumers} == {"alice", "bob", "carol"}
            assert await client.xgroup_delconsumer("jobs", "workers", "carol") == 0
            assert await client.xdel("jobs", first) == 1
            await client.xadd("jobs", {"n": "3"})
            assert await client.xtrim("jobs", maxlen=1, approximate=False) == 1
            assert await client.xgroup_destroy("jobs", "workers") is True
            assert await client.xadd("nostream", {"a": 1}, nomkstream=True) is None
            for n in range(10):
                await client.xadd("capped", {"n": n}, maxlen=3, approximate=False)
            assert await client.xlen("capped") == 3
            last = (await client.xrange("capped"))[-1][0]
            await client.xadd("capped", {"n": 10}, minid=last, approximate=False)
            assert await client.xlen("capped") == 2

    run(body)


def test_deleted_entry_in_pending_read_is_none(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.xgroup_create("s", "g", id="0", mkstream=True)
            entry = await client.xadd("s", {"a": "b"})
            await client.xreadgroup("g", "c", {"s": ">"})
            await client.xdel("s", entry)
            assert await client.xreadgroup("g", "c", {"s": "0"}) == [["s", [(entry, None)]]]

    run(body)


def test_pipeline_sends_queued_commands(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            async with client.pipeline() as pipe:
                pipe.set("a", 1).incr("a").get("a").hgetall("none")
                assert len(pipe) == 4
                assert await pipe.execute() == [True, 2, "2", {}]
            pipe = client.pipeline(transaction=False)
            for n in range(100):
                pipe.xadd("s", {"n": n})
            ids = await pipe.execute()
            assert len(ids) == 100 and await client.xlen("s") == 100
            assert await pipe.execute() == []

    run(body)


def test_pipeline_errors(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.set("text", "x")
            for transaction in (True, False):
                pipe = client.pipeline(transaction=transaction)
                pipe.set("k", "v").incr("text").get("k")
                with pytest.raises(ResponseError):
                    await pipe.execute()
                pipe.set("k", "v").incr("text").get("k")
                result = await pipe.execute(raise_on_error=False)
                assert result[0] is True and result[2] == "v"
                assert isinstance(result[1], ResponseError)

    run(body)


def test_pipeline_not_sent_when_block_raises(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            with pytest.raises(KeyError):
                async with client.pipeline() as pipe:
                    pipe.set("never", 1)
                    raise KeyError("boom")
            assert await client.get("never") is None

    run(body)


def test_commands_left_queued_run_when_the_block_ends(run, redis_config: RedisConfig) -> None:
    """As with the sync client's pipeline: a queued command is never dropped silently."""

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            async with client.pipeline() as pipe:
                pipe.set("a", 1).incr("a")
                assert pipe.queued == 2
            assert pipe.results == [True, 2] and await client.get("a") == "2"

            async with client.pipeline(transaction=False) as pipe:
                pipe.incr("a")
                assert await pipe.execute() == [3]
                pipe.incr("a").get("a")
            assert pipe.results == [3, 4, "4"]  # every execute's replies, in order

            async with client.pipeline() as pipe:
                pipe.set("dropped", 1)
                await pipe.reset()  # discarding is said out loud
            assert await client.exists("dropped") == 0

            await client.set("stock", 3)
            async with client.pipeline() as pipe:
                await pipe.watch("stock")
                stock = int(await pipe.get("stock"))
                pipe.multi()
                pipe.set("stock", stock - 1)
            assert pipe.results == [True] and await client.get("stock") == "2"

            with pytest.raises(WatchError):
                async with client.pipeline() as pipe:
                    await pipe.watch("stock")
                    await client.set("stock", 10)  # another writer
                    pipe.multi()
                    pipe.set("stock", 0)
            assert await client.get("stock") == "10"

    run(body)


def test_pipeline_not_sent_when_the_block_is_cancelled(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:

            async def queue_then_hang() -> None:
                async with client.pipeline() as pipe:
                    pipe.set("never", 1)
                    await sleep(10)

            await move_on_after(0.05, queue_then_hang)
            assert await client.get("never") is None

    run(body)


def test_health_check_and_close_as_upstream_spelled_them(run, redis_config: RedisConfig) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        down = RedisConfig(host="127.0.0.1", port=sock.getsockname()[1])

    async def body() -> None:
        client = AsyncRedisClient(redis_config)
        assert await client.health_check() is True  # no async with needed: a probe of its own
        async with AsyncRedisClient(redis_config) as entered:
            assert await entered.health_check() is True
            await entered.close()
            assert await entered.health_check() is True  # the server, not the client
        with pytest.raises(RedisConnectionError, match="closed"):
            await entered.get("k")
        assert await AsyncRedisClient(down).health_check() is False
        await client.close()

    run(body)


def test_health_check_of_a_hung_server_is_false_and_bounded(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(socket_connect_timeout=0.3)

    async def body() -> None:
        side = redis.Redis(host="127.0.0.1", port=fresh_server.port)
        side.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        side.close()
        started = time.monotonic()
        assert await AsyncRedisClient(config).health_check() is False
        assert time.monotonic() - started < 1.2

    run(body)


def test_health_check_raises_on_wrong_credentials(run) -> None:
    with RedisServer(args=["--requirepass", "right"]) as server:

        async def body() -> None:
            with pytest.raises(AuthenticationError):
                await AsyncRedisClient(server.config.replace(password="wrong")).health_check()
            assert await AsyncRedisClient(server.config.replace(password="right")).health_check()

        run(body)


def test_a_blocking_command_on_a_server_that_stops_answering_times_out(
    run, fresh_server: RedisServer
) -> None:
    config = fresh_server.config.replace(socket_timeout=0.3)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            assert await client.blpop("empty", timeout=0.1) is None  # its connection is up
            side = redis.Redis(host="127.0.0.1", port=fresh_server.port)
            side.execute_command("CLIENT", "PAUSE", 3000, "ALL")
            side.close()
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError, match="did not answer"):
                await client.blpop("empty", timeout=0.2)
            assert time.monotonic() - started < 1.5  # 0.2 s of its own + 0.3 s

    run(body)


def test_no_warnings_under_either_library(run, redis_config: RedisConfig) -> None:
    """redis-py >= 8.2 warns about a sync Retry given to an asyncio client; none is."""

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client, client.pubsub() as ps:
            await ps.subscribe("quiet")
            await client.ping()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(body)


def test_publish_and_pubsub(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client, client.pubsub() as ps:
            await ps.subscribe("news", "other")
            await ps.psubscribe("events.*")
            assert await client.publish("news", {"a": 1}) == 1
            assert await client.publish("events.x", "plain") == 1
            assert await client.publish("nobody", "x") == 0
            first = await ps.get_message(timeout=5)
            assert first == {
                "type": "message",
                "pattern": None,
                "channel": "news",
                "data": '{"a":1}',
            }
            async for message in ps:
                assert message == {
                    "type": "pmessage",
                    "pattern": "events.*",
                    "channel": "events.x",
                    "data": "plain",
                }
                break
            await ps.unsubscribe("news")
            assert await client.publish("news", "lost") == 0
            assert await ps.get_message(timeout=0.05) is None

    run(body)


def test_blocking_read_does_not_hold_up_other_commands(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            await client.xgroup_create("s", "g", mkstream=True)
            results = []

            async def reader() -> None:
                results.append(await client.xreadgroup("g", "c", {"s": ">"}, block=5000))

            async def writer() -> None:
                for n in range(20):
                    await client.set(f"k{n}", n)
                await client.xadd("s", {"hello": "world"})

            await side_by_side(reader, writer)
            assert results[0][0][1][0][1] == {"hello": "world"}
            assert await client.blpop("nothing", timeout=0.05) is None
            await client.rpush("list", "x")
            assert await client.blpop(["list"], timeout=1) == ("list", "x")

    run(body)


def test_many_tasks_share_the_client(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:

            async def task(n: int) -> None:
                for i in range(50):
                    key = f"task{n}"
                    assert await client.incr(key) == i + 1
                    assert await client.get(key) == str(i + 1)

            await side_by_side(*(lambda n=n: task(n) for n in range(50)))

    run(body)


def test_client_without_async_with(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        client = AsyncRedisClient(redis_config)
        try:
            assert await client.set("lazy", "yes") is True
            assert await client.get("lazy") == "yes"
            pipe = client.pipeline()
            pipe.incr("count").incr("count")
            assert await pipe.execute() == [1, 2]
            await side_by_side(*(lambda: client.incr("c") for _ in range(10)))
            assert await client.get("c") == "10"
        finally:
            await client.aclose()

    run(body)


def test_config_defaults_from_environment(monkeypatch, redis_config: RedisConfig) -> None:
    monkeypatch.setenv("AILF_REDIS_URL", f"redis://127.0.0.1:{redis_config.port}/3")
    assert AsyncRedisClient().config.db == 3


def test_a_url_in_place_of_a_config_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="AsyncRedisClient: expected a RedisConfig or None"):
        AsyncRedisClient("redis://localhost:6379/0")  # type: ignore[arg-type]


def test_raw_commands_that_would_break_a_shared_connection_are_refused(
    run, redis_config: RedisConfig
) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            for command in (
                ("MULTI",),
                ("SUBSCRIBE", "c"),
                ("SELECT", 1),
                ("WATCH", "k"),
                ("client", "reply", "off"),
            ):
                with pytest.raises(ValueError, match="not allowed on a shared client"):
                    await client.execute_command(*command)
            assert await client.ping() is True

    run(body)


def test_raw_blocking_read_runs_on_its_own_connection(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            results = []

            async def reader() -> None:
                raw = await client.execute_command("XREAD", "BLOCK", 5000, "STREAMS", "s", "0")
                results.append(raw)

            async def writer() -> None:
                for n in range(20):
                    await client.set(f"k{n}", n)
                await client.xadd("s", {"a": "b"})

            await side_by_side(reader, writer)
            assert results[0][0][0] == "s"

    run(body)


def test_which_commands_retry_idempotent_may_repeat() -> None:
    from ailf.clients._command_kinds import is_idempotent

    assert is_idempotent(("GET", "k"))
    assert is_idempotent(("SET", "k", "v", "EX", 10))
    assert is_idempotent((b"xack", "s", "g", "1-0"))
    assert not is_idempotent(("SET", "k", "v", "NX"))
    assert not is_idempotent(("SET", "k", "v", "get"))
    assert not is_idempotent(("INCR", "k"))
    assert not is_idempotent(("XADD", "s", "*", "a", "b"))


def test_how_long_the_reply_of_a_blocking_command_may_take() -> None:
    """Its own wait (BLOCK in ms, the others' timeouts in s) plus socket_timeout."""
    from ailf.clients._command_kinds import blocking_reply_timeout as limit

    read = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 1, "block", 2000, "STREAMS", "s", ">")
    assert limit([read], 5.0) == 7.0
    assert limit([("BLPOP", "a", "b", 1.5)], 5.0) == 6.5
    assert limit([("BLMOVE", "a", "b", "LEFT", "RIGHT", "0.5")], 1.0) == 1.5
    assert limit([("BLMPOP", 2, 1, "l", "LEFT")], 1.0) == 3.0
    assert limit([("WAIT", 1, 500)], 1.0) == 1.5
    assert limit([("GET", "k"), ("BLPOP", "a", 1), ("XREAD", "STREAMS", "s", "0")], 2.0) == 3.0
    assert limit([("BLPOP", "a", 0)], 5.0) == math.inf  # 0 waits for ever
    assert limit([("BLPOP", "a", "soon")], 5.0) == math.inf  # unreadable: never cut short
    assert limit([("XREAD", "BLOCK", 100, "STREAMS", "s", "$")], None) == math.inf


def test_subscribe_returns_once_confirmed_even_while_another_task_iterates(
    run, redis_config: RedisConfig
) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client, client.pubsub() as ps:
            await ps.subscribe("first")
            received: list[str] = []

            async def iterate() -> None:
                async for message in ps:
                    received.append(message["channel"])
                    if len(received) == 21:
                        return

            async def subscribe_and_publish() -> None:
                for n in range(20):
                    await ps.subscribe(f"late{n}")
                    assert await client.publish(f"late{n}", "x") == 1
                await client.publish("first", "done")

            await side_by_side(iterate, subscribe_and_publish)
            assert received == [*(f"late{n}" for n in range(20)), "first"]
            assert ps.channels >= {"first", "late0", "late19"}

    run(body)


def test_sharded_channels_on_one_server(run, redis_config: RedisConfig) -> None:
    """SSUBSCRIBE and SPUBLISH (Redis ≥ 7) on one server, under both libraries: sharded
    messages arrive as ``smessage``, apart from classic ones on the same name."""

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client, client.pubsub() as ps:
            await ps.ssubscribe("orders", "refunds")
            await ps.subscribe("orders")
            assert ps.shard_channels == {"orders", "refunds"} and ps.channels == {"orders"}
            assert await client.spublish("orders", {"id": 1}) == 1
            assert await client.publish("orders", "classic") == 1
            first, second = await ps.get_message(timeout=5), await ps.get_message(timeout=5)
            assert first == {
                "type": "smessage",
                "pattern": None,
                "channel": "orders",
                "data": '{"id":1}',
            }
            assert second is not None and second["type"] == "message"
            await ps.sunsubscribe("orders")
            assert ps.shard_channels == {"refunds"}
            assert await client.spublish("orders", "nobody") == 0

    run(body)

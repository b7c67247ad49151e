"""AsyncRedisPubSub against real servers: delivery, handlers, stopping, restarts.

Trio tests (pytest-trio) first; the last ones run one body under ``trio.run`` and under
``asyncio.run``, since the async client — and so the twin — runs on both: among them,
what the client's pub/sub session does when Redis refuses a subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis
import sniffio
import trio
import trio.lowlevel
from async_helpers import run_fixture, side_by_side, sleep, within  # noqa: F401 - fixtures
from messaging_helpers import (  # noqa: F401 - fixtures
    DEADLINE,
    FAST_RETRY,
    client_fixture,
    wait_until,
)

from ailf import (
    AsyncRedisClient,
    AsyncRedisPubSub,
    AuthenticationError,
    RedisConfig,
    RedisConnectionError,
    RedisServer,
    ResponseError,
    Runtime,
)


def subscribers(server: RedisServer, channel: str) -> int:
    raw = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        [(_, count)] = raw.pubsub_numsub(channel)
        return count
    finally:
        raw.close()


@pytest.fixture
def pubsub(client: AsyncRedisClient) -> AsyncRedisPubSub:
    return AsyncRedisPubSub(client)


# -- delivery -----------------------------------------------------------------------------


async def test_sync_and_async_handlers_get_decoded_payloads(pubsub: AsyncRedisPubSub) -> None:
    received: list[tuple[str, Any]] = []

    async def on_agent(payload: Any) -> None:
        await trio.lowlevel.checkpoint()
        received.append(("agent", payload))

    await pubsub.subscribe("notifications", lambda payload: received.append(("note", payload)))
    await pubsub.psubscribe("agent.*", on_agent)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(pubsub.run)  # returns once subscribed
            assert pubsub.listening
            assert await pubsub.publish("notifications", {"level": "info"}) == 1
            assert await pubsub.publish("agent.7", "ready") == 1
            assert await pubsub.publish("notifications", "42") == 1
            assert await pubsub.publish("elsewhere", "nobody") == 0
            await wait_until(lambda: len(received) == 3)
            pubsub.stop()
    assert received == [("note", {"level": "info"}), ("agent", "ready"), ("note", "42")]
    assert not pubsub.listening


async def test_handler_exceptions_are_logged_and_listening_goes_on(
    pubsub: AsyncRedisPubSub, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Any] = []

    async def handler(payload: Any) -> None:
        if payload == "bad":
            raise RuntimeError("handler broke")
        received.append(payload)

    await pubsub.subscribe("c", handler)
    with caplog.at_level(logging.ERROR, logger="ailf.pubsub"), trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(pubsub.run)
            for payload in ("one", "bad", "two"):
                await pubsub.publish("c", payload)
            await wait_until(lambda: received == ["one", "two"])
            pubsub.stop()
    [record] = caplog.records
    assert "'c'" in record.getMessage() and "still listening" in record.getMessage()
    assert record.exc_info is not None and "handler broke" in str(record.exc_info[1])


async def test_subscribing_and_unsubscribing_while_running(
    pubsub: AsyncRedisPubSub, redis_server: RedisServer
) -> None:
    received: list[tuple[str, Any]] = []

    async def first(payload: Any) -> None:  # subscribes from inside a handler
        received.append(("first", payload))
        await pubsub.subscribe("second", lambda p: received.append(("second", p)))

    await pubsub.subscribe("first", first)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(pubsub.run)
            await pubsub.publish("first", "go")
            await wait_until(lambda: subscribers(redis_server, "second") == 1)
            await pubsub.publish("second", "hello")
            await pubsub.psubscribe("p.*", lambda p: received.append(("pattern", p)))
            await pubsub.publish("p.x", "matched")
            await wait_until(lambda: len(received) == 3)

            await pubsub.unsubscribe("first")
            await pubsub.unsubscribe("p.*")
            assert await pubsub.publish("first", "ignored") == 0
            assert await pubsub.publish("p.x", "ignored") == 0
            await pubsub.publish("second", "still")
            await wait_until(lambda: len(received) == 4)
            pubsub.stop()
    assert received == [
        ("first", "go"),
        ("second", "hello"),
        ("pattern", "matched"),
        ("second", "still"),
    ]
    assert list(pubsub.subscriptions.channels) == ["second"]


# -- stopping -----------------------------------------------------------------------------


async def test_stop_from_a_handler_ends_after_it(
    pubsub: AsyncRedisPubSub, redis_server: RedisServer
) -> None:
    calls: list[str] = []

    async def handler(payload: Any) -> None:
        pubsub.stop()
        await trio.sleep(0.01)  # the rest of the handler still runs
        calls.append(payload)

    await pubsub.subscribe("c", handler)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(pubsub.run)
            await pubsub.publish("c", "last")
        assert calls == ["last"]
        assert subscribers(redis_server, "c") == 0  # the session's connection is closed
        async with trio.open_nursery() as nursery:  # and listening can start again
            await nursery.start(pubsub.run)
            await pubsub.publish("c", "again")
        assert calls == ["last", "again"]


async def test_cancellation_stops_it_too(
    pubsub: AsyncRedisPubSub, redis_server: RedisServer
) -> None:
    await pubsub.subscribe("c", print)
    with trio.fail_after(DEADLINE):
        with trio.move_on_after(0.2) as scope:
            await pubsub.run()
        assert scope.cancelled_caught
        assert not pubsub.listening
        assert subscribers(redis_server, "c") == 0


async def test_listening_twice_at_once_is_an_error(pubsub: AsyncRedisPubSub) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(pubsub.run)
            with pytest.raises(RuntimeError, match="already listening"):
                await pubsub.run()
            pubsub.stop()


# -- outages ------------------------------------------------------------------------------


async def test_survives_a_redis_kill_and_restart(
    fresh_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Any] = []
    config = fresh_server.config.replace(retry=FAST_RETRY)
    with caplog.at_level(logging.INFO), trio.fail_after(DEADLINE):
        async with AsyncRedisClient(config) as client, trio.open_nursery() as nursery:
            pubsub = AsyncRedisPubSub(client)
            await pubsub.subscribe("news", received.append)
            await pubsub.psubscribe("events.*", received.append)
            await nursery.start(pubsub.run)
            await pubsub.publish("news", "before")
            await wait_until(lambda: received == ["before"])

            await trio.to_thread.run_sync(partial(fresh_server.restart, kill=True))

            while "after" not in received or "pattern after" not in received:
                # Until the listener is back: messages sent while it is away are lost.
                with trio.move_on_after(1), contextlib.suppress(RedisConnectionError):
                    await pubsub.publish("news", "after")
                    await pubsub.publish("events.x", "pattern after")
                await trio.sleep(0.05)
            pubsub.stop()
    messages = [r.getMessage() for r in caplog.records]
    restored = "subscribed again to 1 channel(s) and 1 pattern(s)"
    assert any(restored in m for m in messages), messages


async def test_waits_for_a_server_that_is_down_at_start(
    fresh_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Any] = []
    config = fresh_server.config.replace(retry=FAST_RETRY, socket_connect_timeout=0.5)
    fresh_server.stop()
    pubsub = AsyncRedisPubSub(AsyncRedisClient(config))
    await pubsub.subscribe("news", received.append)
    with caplog.at_level(logging.INFO, logger="ailf.pubsub"), trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pubsub.run)
            await wait_until(lambda: ours(caplog))  # the outage is logged, once
            await trio.to_thread.run_sync(fresh_server.start)
            await wait_until(lambda: pubsub.listening)
            await pubsub.publish("news", "up")
            await wait_until(lambda: received == ["up"])
            pubsub.stop()
        await pubsub.client.aclose()
    [lost, back] = ours(caplog)
    assert lost.levelname == "WARNING" and "lost its connection" in lost.getMessage()
    assert back.levelname == "INFO" and "re-subscribed" in back.getMessage()


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ailf.pubsub"]


# -- its own client -------------------------------------------------------------------------


async def test_without_a_client_it_owns_one_from_the_environment(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AILF_REDIS_URL", redis_server.url)
    received: list[Any] = []
    with trio.fail_after(DEADLINE):
        async with AsyncRedisPubSub() as pubsub, trio.open_nursery() as nursery:
            await pubsub.subscribe("c", received.append)
            await nursery.start(pubsub.run)
            await pubsub.publish("c", {"n": 1})
            await wait_until(lambda: received)
            pubsub.stop()
    assert received == [{"n": 1}]
    assert "AsyncRedisPubSub" in repr(pubsub) and "1 channels" in repr(pubsub)


# -- under trio and under asyncio -------------------------------------------------------------


def test_delivery_errors_and_stop_under_both_libraries(
    run, redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> list[Any]:
        received: list[Any] = []

        async def handler(payload: Any) -> None:
            await sleep(0)
            if payload == "bad":
                raise RuntimeError("handler broke")
            received.append(payload)

        async with AsyncRedisClient(redis_config) as client:
            pubsub = AsyncRedisPubSub(client)
            await pubsub.subscribe("c", handler)
            await pubsub.psubscribe("p.*", received.append)

            async def publish_and_stop() -> None:
                await wait_until(lambda: pubsub.listening)
                for channel, payload in (("c", {"a": 1}), ("c", "bad"), ("p.1", [1, 2])):
                    await pubsub.publish(channel, payload)
                await wait_until(lambda: len(received) == 2)
                pubsub.stop()

            await side_by_side(pubsub.run, publish_and_stop)
            assert not pubsub.listening
        return received

    with caplog.at_level(logging.ERROR, logger="ailf.pubsub"):
        assert run(body) == [{"a": 1}, [1, 2]]
    assert len(caplog.records) == 1


def test_cancellation_under_asyncio(redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            pubsub = AsyncRedisPubSub(client)
            await pubsub.subscribe("c", print)
            task = asyncio.create_task(pubsub.run())
            await wait_until(lambda: pubsub.listening)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not pubsub.listening

    asyncio.run(asyncio.wait_for(body(), DEADLINE))


def test_survives_a_restart_under_both_libraries(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(retry=FAST_RETRY)

    async def body() -> None:
        received: list[Any] = []
        async with AsyncRedisClient(config) as client:
            pubsub = AsyncRedisPubSub(client)
            await pubsub.subscribe("news", received.append)

            async def restart_and_publish() -> None:
                await wait_until(lambda: pubsub.listening)
                fresh_server.restart(kill=True)  # blocks the loop briefly
                while "after" not in received:
                    with contextlib.suppress(RedisConnectionError):
                        await pubsub.publish("news", "after")
                    await sleep(0.05)
                pubsub.stop()

            await side_by_side(pubsub.run, restart_and_publish)

    run(body)


def test_messages_handed_to_a_handler_as_they_are_read(run, redis_config: RedisConfig) -> None:
    """``deliver_to``: each message goes to the handler, in order, and none is kept for
    the iterator."""

    async def body() -> tuple[list[Any], Any]:
        handled: list[Any] = []
        async with AsyncRedisClient(redis_config) as client, client.pubsub() as ps:
            ps.deliver_to(lambda message: handled.append((message["channel"], message["data"])))
            await ps.subscribe("a")
            await ps.psubscribe("b*")
            for n in range(3):
                await client.publish("a", f"a{n}")
                await client.publish("bee", f"b{n}")
            # under asyncio the task asking for messages is the one reading them
            kept = await ps.get_message(timeout=0.3)
            await wait_until(lambda: len(handled) == 6)
        return handled, kept

    handled, kept = run(body)
    assert handled == [(c, f"{c[0]}{n}") for n in range(3) for c in ("a", "bee")]
    assert kept is None


def test_iterating_while_another_task_waits_for_its_confirmation(
    run, fresh_server: RedisServer
) -> None:
    """The session has one reader at a time: a task that subscribes while the iterating
    task is busy with a message reads its confirmation itself; the iterator, coming
    back meanwhile, waits for it instead of reading the same connection at once."""
    port = fresh_server.port

    async def body() -> list[Any]:
        async with AsyncRedisClient(fresh_server.config) as client, client.pubsub() as ps:
            await ps.subscribe("a")
            received: list[Any] = []
            subscribing = False

            async def iterate() -> None:
                async for message in ps:
                    received.append(message["data"])
                    while not subscribing:  # busy with the message until then
                        await sleep(0.01)
                    if len(received) == 2:
                        return

            async def subscribe_while_busy() -> None:
                nonlocal subscribing
                await client.publish("a", "1")
                while not received:
                    await sleep(0.01)
                side = redis.Redis(port=port)
                side.execute_command("CLIENT", "PAUSE", 500, "ALL")  # holds the confirmation
                side.close()

                async def let_the_iterator_go() -> None:
                    nonlocal subscribing
                    await sleep(0.1)  # this task is reading by now
                    subscribing = True

                await side_by_side(partial(ps.subscribe, "b"), let_the_iterator_go)
                await client.publish("b", "2")

            await side_by_side(iterate, subscribe_while_busy)
            return received

    assert run(body) == ["1", "2"]


# -- subscriptions Redis refuses (the client's session, under both libraries) ------------------


class ChannelUser:
    """An ACL user that may run any command on any key, and use only the channels (and
    patterns) given to :meth:`allow`."""

    name = "channel-user"

    def __init__(self, config: RedisConfig) -> None:
        self.admin = redis.Redis(port=config.port)
        self.config = config.replace(username=self.name, password="pw", retry=FAST_RETRY)

    def allow(self, *channels: str) -> None:
        rights = [f"&{channel}" for channel in channels]
        self.admin.execute_command(
            "ACL", "SETUSER", self.name, "on", ">pw", "~*", "+@all", "resetchannels", *rights
        )


@pytest.fixture
def channel_user(redis_config: RedisConfig) -> Iterator[ChannelUser]:
    user = ChannelUser(redis_config)
    user.allow("ok*")
    yield user
    user.admin.execute_command("ACL", "DELUSER", user.name)
    user.admin.close()


def test_a_refused_subscribe_fails_that_call_and_the_session_goes_on(
    run, channel_user: ChannelUser
) -> None:
    async def body() -> None:
        async with AsyncRedisClient(channel_user.config) as client, client.pubsub() as ps:
            await ps.subscribe("ok1")
            await ps.psubscribe("ok*")
            with pytest.raises(ResponseError) as refused:
                await ps.subscribe("ok1", "ok2", "forbidden")
            assert refused.value.code == "NOPERM"
            assert "refused SUBSCRIBE 'ok1' 'ok2' 'forbidden'" in str(refused.value)
            with pytest.raises(ResponseError, match=r"^NOPERM .* PSUBSCRIBE 'forbidden\.\*'"):
                await ps.psubscribe("forbidden.*")
            # Redis subscribed none of a refused command's names; ok1 was subscribed before.
            assert ps.channels == {"ok1"} and ps.patterns == {"ok*"}
            await ps.subscribe("ok3")  # nothing of the refusals is left to count against it
            assert ps.channels == {"ok1", "ok3"}
            assert await client.publish("ok2", "pattern only") == 1
            assert await client.publish("ok1", "both") == 2
            received = [await ps.get_message(timeout=5) for _ in range(3)]
            assert [(m["type"], m["channel"], m["data"]) for m in received] == [
                ("pmessage", "ok2", "pattern only"),
                ("message", "ok1", "both"),
                ("pmessage", "ok1", "both"),
            ]

    run(body)


def test_a_listener_forgets_a_refused_subscription_and_survives_a_reconnect(
    run, channel_user: ChannelUser, redis_server: RedisServer
) -> None:
    """AsyncRedisPubSub on top of the session: the refused channel raises to the caller
    and is not restored after a reconnect (where it would be refused again)."""
    server = redis_server

    async def body() -> None:
        received: list[Any] = []
        async with AsyncRedisClient(channel_user.config) as client:
            pubsub = AsyncRedisPubSub(client)
            await pubsub.subscribe("ok1", received.append)

            async def scenario() -> None:
                while not pubsub.listening:
                    await sleep(0.01)
                with pytest.raises(ResponseError, match="NOPERM"):
                    await pubsub.subscribe("forbidden", received.append)
                with pytest.raises(ResponseError, match="NOPERM"):
                    await pubsub.psubscribe("forbidden.*", received.append)
                assert list(pubsub.subscriptions.channels) == ["ok1"]
                assert not pubsub.subscriptions.patterns
                channel_user.admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                while subscribers(server, "ok1") != 1:
                    await sleep(0.01)
                while not received:
                    await client.publish("ok1", "after")
                    await sleep(0.02)
                pubsub.stop()

            await side_by_side(pubsub.run, scenario)
        assert received[0] == "after"

    run(body)


def test_a_refusal_keeps_a_channel_that_a_concurrent_subscribe_wants(
    run, channel_user: ChannelUser
) -> None:
    """``subscribe("ok1", "forbidden")`` and ``subscribe("ok1")`` at once, in either order
    on the wire: the first is refused, the second is not, so ok1 is subscribed."""

    async def body() -> None:
        async with AsyncRedisClient(channel_user.config) as client, client.pubsub() as ps:

            async def refused() -> None:
                with pytest.raises(ResponseError, match="NOPERM"):
                    await ps.subscribe("ok1", "forbidden")

            async def allowed() -> None:
                await ps.subscribe("ok1")

            await side_by_side(refused, allowed)
            assert ps.channels == {"ok1"}
            assert await client.publish("ok1", "x") == 1
            assert (await ps.get_message(timeout=5))["data"] == "x"

    run(body)


def test_a_subscription_refused_after_a_reconnect_is_dropped_and_logged(
    run, channel_user: ChannelUser, caplog: pytest.LogCaptureFixture
) -> None:
    """Revoking a channel makes Redis disconnect the session; subscribing again, it
    keeps every channel but the revoked one, and says so."""
    channel_user.allow("ok*", "revoked")

    async def body() -> int:
        async with AsyncRedisClient(channel_user.config) as client, client.pubsub() as ps:
            await ps.subscribe("ok1", "revoked")
            channel_user.allow("ok*")
            message = None
            while message is None:  # until the session is back (reading notices the loss)
                await client.publish("ok1", "back")
                message = await ps.get_message(timeout=0.1)
            assert message["channel"] == "ok1"
            assert ps.channels == {"ok1"}
            return ps.reconnects

    with caplog.at_level(logging.WARNING, logger="ailf.clients"):
        assert run(body) >= 1
    [warning] = [r.getMessage() for r in caplog.records if "subscribing again" in r.getMessage()]
    assert "NOPERM" in warning and "SUBSCRIBE 'revoked'" in warning


def test_a_session_whose_user_is_deleted_ends_with_the_refusal(
    run, channel_user: ChannelUser
) -> None:
    """An error that answers no subscription (here the new connection's AUTH) is fatal."""

    async def body() -> None:
        async with AsyncRedisClient(channel_user.config) as client, client.pubsub() as ps:
            await ps.subscribe("ok1")
            channel_user.admin.execute_command("ACL", "DELUSER", channel_user.name)
            with pytest.raises(AuthenticationError, match="WRONGPASS"):
                async for _ in ps:
                    pass

    run(body)


def test_closing_the_session_fails_a_subscribe_still_waiting_for_its_confirmation(
    run, redis_config: RedisConfig
) -> None:
    """The block ends while a task outside it waits for Redis (held by CLIENT PAUSE) to
    confirm its subscribe: that call fails, rather than returning as if subscribed."""

    def pause() -> None:
        side = redis.Redis(port=redis_config.port)
        side.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        side.close()

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            sessions: list[Any] = []

            async def owner() -> None:
                async with client.pubsub() as session:
                    await session.subscribe("first")
                    pause()
                    sessions.append(session)
                    await sleep(0.3)  # the other task's subscribe is waiting meanwhile

            async def subscriber() -> BaseException | None:
                while not sessions:
                    await sleep(0.01)
                try:
                    await within(5, sessions[0].subscribe("held"))
                except RedisConnectionError as exc:
                    return exc
                return None

            _, error = await side_by_side(owner, subscriber)
            assert isinstance(error, RedisConnectionError), error
            assert "closed before Redis confirmed SUBSCRIBE" in str(error)
            closed = sessions[0]
            assert await within(5, closed.get_message(timeout=None)) is None
            assert [message async for message in closed] == []

    run(body)


def test_subscribing_after_the_session_ended_raises_what_ended_it(
    run, channel_user: ChannelUser
) -> None:
    """Once the session has failed, nobody reads its connection: subscribe() raises the
    failure rather than waiting forever for a confirmation."""

    async def body() -> None:
        async with AsyncRedisClient(channel_user.config) as client, client.pubsub() as ps:
            await ps.subscribe("ok1")
            channel_user.admin.execute_command("ACL", "DELUSER", channel_user.name)
            with pytest.raises(AuthenticationError):
                async for _ in ps:
                    pass
            with pytest.raises(AuthenticationError):
                await within(5, ps.subscribe("ok2"))

    run(body)


def test_subscriptions_read_as_a_dict_under_both_libraries(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisPubSub(AsyncRedisClient(redis_config)) as pubsub:
            await pubsub.subscribe("news", print)
            assert "news" in pubsub.subscriptions and pubsub.subscriptions["news"] is print
            assert dict(pubsub.subscriptions) == {"news": print}
            await pubsub.unsubscribe("news")
            assert len(pubsub.subscriptions) == 0

    run(body)


def _connections_named(server_port: int, name: str, *, subscribed: bool = False) -> int:
    """How many connections named ``name`` the server has (those subscribed, if asked)."""
    raw = redis.Redis(host="127.0.0.1", port=server_port, decode_responses=True)
    try:
        return sum(
            client["name"] == name and (not subscribed or "P" in client["flags"])
            for client in raw.client_list()
        )
    finally:
        raw.close()


def test_a_session_left_by_a_cancelled_task_closes_its_connection(
    run, redis_config: RedisConfig
) -> None:
    """Leaving the block while cancelled (a runtime shutting down) closes the socket too;
    it used to stay open until garbage collection (a ResourceWarning)."""
    config = redis_config.replace(client_name="cancelled-session")

    def subscribed() -> int:
        return _connections_named(config.port, "cancelled-session", subscribed=True)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:

            async def listen() -> None:
                async with client.pubsub() as session:
                    await session.subscribe("c")
                    await sleep(10)

            async def cancel_once_subscribed() -> None:
                await wait_until(lambda: subscribed() == 1)

            await within(5, _first_of(listen, cancel_once_subscribed))
            await within(5, wait_until(lambda: subscribed() == 0))

    run(body)


async def _first_of(*functions: Any) -> None:
    """Run the functions side by side until the first returns; cancel the others."""
    if sniffio.current_async_library() == "trio":
        async with trio.open_nursery() as nursery:
            for function in functions:

                async def first(function: Any = function) -> None:
                    await function()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(first)
        return
    tasks = [asyncio.ensure_future(function()) for function in functions]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_empty_runtime_leaves_no_connection_open(redis_config: RedisConfig) -> None:
    """Every connection a Runtime opens is closed when its block ends: one used to leak
    (the pub/sub session's, closed only by the garbage collector)."""
    config = redis_config.replace(client_name="empty-runtime")
    async with Runtime(config, namespace="hygiene"):
        assert _connections_named(config.port, "empty-runtime") >= 2
    with trio.fail_after(5):
        await wait_until(lambda: _connections_named(config.port, "empty-runtime") == 0)

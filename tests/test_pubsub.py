"""RedisPubSub against real servers: delivery, patterns, failures, stop, restarts."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from messaging_helpers import FAST_RETRY, wait_for

from ailf import (
    RedisClient,
    RedisConfig,
    RedisConnectionError,
    RedisPubSub,
    RedisServer,
)
from ailf.messaging._handlers import HandlerTable, decode_payload


def subscribers(client: RedisClient, channel: str) -> int:
    [(_, count)] = client.client.pubsub_numsub(channel)
    return count


@pytest.fixture
def client(redis_config: RedisConfig) -> Iterator[RedisClient]:
    with RedisClient(redis_config.replace(retry=FAST_RETRY)) as client:
        yield client


@pytest.fixture
def pubsub(client: RedisClient) -> Iterator[RedisPubSub]:
    pubsub = RedisPubSub(client)
    yield pubsub
    pubsub.stop()


def ailf_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ailf-pubsub"]


# -- the pure half ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        (b'{"b": [true]}', {"b": [True]}),
        ("plain text", "plain text"),
        ("42", "42"),
        ("true", "true"),
        ('"quoted"', '"quoted"'),
        ("{not json", "{not json"),
        ("", ""),
        (b"\xff\xfe", b"\xff\xfe"),
    ],
)
def test_decode_payload(data: Any, expected: Any) -> None:
    assert decode_payload(data) == expected


def test_subscriptions_route_messages_to_their_handlers() -> None:
    def on_channel(payload: Any) -> None: ...
    def on_pattern(payload: Any) -> None: ...

    subs = HandlerTable(channels={"news": on_channel}, patterns={"user.*": on_pattern})
    delivery = subs.route("message", b"news", '{"x": 1}')
    assert delivery is not None
    assert (delivery.handler, delivery.channel, delivery.payload) == (on_channel, "news", {"x": 1})
    by_pattern = subs.route("pmessage", "user.7", "hi", pattern="user.*")
    assert by_pattern is not None and by_pattern.handler is on_pattern
    assert by_pattern.pattern == "user.*" and by_pattern.channel == "user.7"
    assert subs.route("subscribe", "news", 1) is None
    assert subs.route("message", "other", "x") is None


def test_a_config_where_the_client_belongs_is_refused(redis_config: RedisConfig) -> None:
    with pytest.raises(TypeError, match=r"RedisPubSub: .* got RedisConfig; make one with Redis"):
        RedisPubSub(redis_config)  # type: ignore[arg-type]


def test_a_bad_channel_or_handler_is_refused_when_subscribing(pubsub: RedisPubSub) -> None:
    with pytest.raises(TypeError, match="handler for channel 'news': expected a callable"):
        pubsub.subscribe("news", "print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pattern: expected a non-empty string, got ''"):
        pubsub.psubscribe("", print)
    assert pubsub.subscriptions == HandlerTable()


def test_subscriptions_read_as_upstreams_dict_of_channel_to_handler(
    pubsub: RedisPubSub, client: RedisClient
) -> None:
    received: queue.Queue[Any] = queue.Queue()
    pubsub.subscribe("news", received.put)
    pubsub.psubscribe("agent.*", print)
    pubsub.run_in_thread()
    wait_for(lambda: subscribers(client, "news") == 1)
    assert "news" in pubsub.subscriptions and pubsub.subscriptions["news"] == received.put
    assert dict(pubsub.subscriptions) == {"news": received.put}
    assert list(pubsub.subscriptions) == ["news"] and len(pubsub.subscriptions) == 1
    assert pubsub.subscriptions.patterns == {"agent.*": print}
    pubsub.unsubscribe("news")
    assert "news" not in pubsub.subscriptions
    with pytest.raises(TypeError):  # read-only: subscribe() also tells Redis
        pubsub.subscriptions["other"] = print  # type: ignore[index]


# -- delivery ---------------------------------------------------------------------------


def test_subscribe_and_receive_json_and_strings(pubsub: RedisPubSub, client: RedisClient) -> None:
    received: queue.Queue[Any] = queue.Queue()
    pubsub.subscribe("notifications", received.put)
    thread = pubsub.run_in_thread()
    assert thread.daemon
    wait_for(lambda: subscribers(client, "notifications") == 1)
    assert pubsub.publish("notifications", {"type": "alert", "level": 1}) == 1
    pubsub.publish("notifications", ["a", "b"])
    pubsub.publish("notifications", "just text")
    assert received.get(timeout=5) == {"type": "alert", "level": 1}
    assert received.get(timeout=5) == ["a", "b"]
    assert received.get(timeout=5) == "just text"


def test_psubscribe_matches_channels(pubsub: RedisPubSub, client: RedisClient) -> None:
    received: queue.Queue[Any] = queue.Queue()
    pubsub.psubscribe("agent.*", received.put)
    pubsub.run_in_thread()
    wait_for(lambda: client.client.pubsub_numpat() == 1)
    client.publish("agent.7", {"n": 7})
    client.publish("other.7", {"n": 0})
    client.publish("agent.8", {"n": 8})
    assert received.get(timeout=5) == {"n": 7}
    assert received.get(timeout=5) == {"n": 8}
    pubsub.unsubscribe("agent.*")
    wait_for(lambda: client.client.pubsub_numpat() == 0)


def test_subscribe_and_unsubscribe_while_listening(
    pubsub: RedisPubSub, client: RedisClient
) -> None:
    received: queue.Queue[Any] = queue.Queue()
    pubsub.run_in_thread()
    pubsub.subscribe("late", received.put)
    wait_for(lambda: subscribers(client, "late") == 1)
    client.publish("late", "hello")
    assert received.get(timeout=5) == "hello"
    pubsub.unsubscribe("late")
    wait_for(lambda: subscribers(client, "late") == 0)
    assert client.publish("late", "nobody") == 0


def test_a_subscription_redis_refuses_is_dropped_and_logged_while_listening_goes_on(
    redis_config: RedisConfig, client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    """SUBSCRIBE is not confirmed synchronously here, so a NOPERM reaches the listener:
    it finds which subscriptions Redis refuses, drops them and goes on with the rest."""
    admin = client.client
    admin.execute_command(
        "ACL", "SETUSER", "listener", "on", ">pw", "~*", "+@all", "resetchannels", "&ok*"
    )
    config = redis_config.replace(username="listener", password="pw", retry=FAST_RETRY)
    received: queue.Queue[Any] = queue.Queue()
    try:
        with RedisPubSub(RedisClient(config)) as pubsub:
            pubsub.subscribe("ok.1", received.put)
            thread = pubsub.run_in_thread()
            wait_for(lambda: subscribers(client, "ok.1") == 1)
            with caplog.at_level(logging.WARNING, logger="ailf.pubsub"):
                pubsub.subscribe("forbidden", received.put)
                pubsub.psubscribe("ok*", received.put)  # patterns must match the rule literally
                wait_for(lambda: "Redis refused 'forbidden'" in caplog.text)
                wait_for(lambda: subscribers(client, "ok.1") == 1)
                assert "NOPERM" in caplog.text
            assert list(pubsub.subscriptions.channels) == ["ok.1"]
            assert list(pubsub.subscriptions.patterns) == ["ok*"]
            while received.empty():
                client.publish("ok.1", "still here")
                time.sleep(0.02)
            assert received.get() == "still here"
            assert thread.is_alive()
    finally:
        admin.execute_command("ACL", "DELUSER", "listener")


def test_subscribing_from_another_thread_is_not_starved_by_the_listener(
    pubsub: RedisPubSub, client: RedisClient
) -> None:
    received: queue.Queue[Any] = queue.Queue()
    pubsub.subscribe("busy", received.put)
    pubsub.run_in_thread()
    started = time.monotonic()
    for n in range(20):
        pubsub.subscribe(f"extra.{n}", received.put)
    assert time.monotonic() - started < 5  # each waits at most one poll, not several
    wait_for(lambda: subscribers(client, "extra.19") == 1)
    client.publish("extra.19", "last")
    assert received.get(timeout=5) == "last"


def test_handler_exception_is_logged_and_listening_goes_on(
    pubsub: RedisPubSub, client: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    received: queue.Queue[Any] = queue.Queue()

    def handler(payload: Any) -> None:
        if payload == "boom":
            raise ValueError("handler blew up")
        received.put(payload)

    pubsub.subscribe("jobs", handler)
    with caplog.at_level(logging.ERROR, logger="ailf.pubsub"):
        pubsub.run_in_thread()
        wait_for(lambda: subscribers(client, "jobs") == 1)
        client.publish("jobs", "boom")
        client.publish("jobs", "after")
        assert received.get(timeout=5) == "after"
    [record] = [r for r in caplog.records if r.name == "ailf.pubsub"]
    assert "'jobs'" in record.getMessage()
    assert record.exc_info is not None and "handler blew up" in str(record.exc_info[1])


def test_stop_returns_within_a_second_and_leaves_no_thread(
    pubsub: RedisPubSub, client: RedisClient
) -> None:
    pubsub.subscribe("quiet", lambda payload: None)
    thread = pubsub.run_in_thread()
    wait_for(lambda: subscribers(client, "quiet") == 1)
    started = time.monotonic()
    pubsub.stop()
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()
    assert ailf_threads() == []
    wait_for(lambda: subscribers(client, "quiet") == 0)


def test_stop_without_subscriptions(pubsub: RedisPubSub) -> None:
    thread = pubsub.run_in_thread()
    started = time.monotonic()
    pubsub.stop()
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()


def test_run_blocks_until_a_handler_calls_stop(pubsub: RedisPubSub, client: RedisClient) -> None:
    received: list[Any] = []

    def handler(payload: Any) -> None:
        received.append(payload)
        if payload == "last":
            pubsub.stop()

    pubsub.subscribe("ch", handler)

    def publish_when_subscribed() -> None:
        wait_for(lambda: subscribers(client, "ch") == 1)
        client.publish("ch", "first")
        client.publish("ch", "last")

    publisher = threading.Thread(target=publish_when_subscribed)
    publisher.start()
    pubsub.run()
    publisher.join()
    assert received == ["first", "last"]


def test_listening_can_start_again_after_stop(pubsub: RedisPubSub, client: RedisClient) -> None:
    received: queue.Queue[Any] = queue.Queue()
    pubsub.subscribe("again", received.put)
    pubsub.run_in_thread()
    pubsub.stop()
    with pytest.raises(queue.Empty):
        received.get_nowait()
    pubsub.run_in_thread()
    wait_for(lambda: subscribers(client, "again") == 1)
    client.publish("again", "back")
    assert received.get(timeout=5) == "back"


def test_run_in_thread_twice_is_an_error(pubsub: RedisPubSub) -> None:
    pubsub.run_in_thread()
    with pytest.raises(RuntimeError, match="already listening; call stop"):
        pubsub.run_in_thread()
    with pytest.raises(RuntimeError, match="already listening; call stop"):
        pubsub.run()


def test_subscribe_to_an_unreachable_server_raises() -> None:
    with RedisServer() as server:
        config = server.config
    pubsub = RedisPubSub(RedisClient(config.replace(socket_connect_timeout=1)))
    with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{config.port}"):
        pubsub.subscribe("anything", print)


def test_listener_survives_a_server_restart(
    fresh_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = RedisClient(fresh_server.config.replace(retry=FAST_RETRY))
    pubsub = RedisPubSub(client)
    received: queue.Queue[Any] = queue.Queue()
    pubsub.subscribe("alerts", received.put)
    pubsub.psubscribe("agent.*", received.put)
    with caplog.at_level(logging.INFO, logger="ailf.pubsub"):
        thread = pubsub.run_in_thread()
        wait_for(lambda: subscribers(client, "alerts") == 1)
        client.publish("alerts", "before")
        assert received.get(timeout=5) == "before"

        fresh_server.restart(kill=True)

        wait_for(lambda: subscribers(client, "alerts") == 1)
        wait_for(lambda: client.client.pubsub_numpat() == 1)
        client.publish("alerts", {"after": True})
        client.publish("agent.3", "pattern too")
        assert received.get(timeout=5) == {"after": True}
        assert received.get(timeout=5) == "pattern too"
        pubsub.stop()
    assert not thread.is_alive()
    messages = [r.getMessage() for r in caplog.records if r.name == "ailf.pubsub"]
    assert any("lost" in m for m in messages)
    assert any("reconnected" in m for m in messages)
    client.close()


def test_bytes_replies_reach_handlers_decoded(redis_config: RedisConfig) -> None:
    client = RedisClient(redis_config.replace(decode_responses=False))
    pubsub = RedisPubSub(client)
    received: queue.Queue[Any] = queue.Queue()
    pubsub.subscribe("raw", received.put)
    pubsub.run_in_thread()
    wait_for(lambda: subscribers(client, "raw") == 1)
    client.publish("raw", {"a": 1})
    client.publish("raw", "text")
    assert received.get(timeout=5) == {"a": 1}
    assert received.get(timeout=5) == "text"
    pubsub.close()

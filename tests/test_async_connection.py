"""How AsyncRedisClient connects: auth, ACL users, unix sockets, SELECT, CLIENT SETNAME,
timeouts, bad addresses, and the structured lifetime of its connections and tasks."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Iterator
from typing import NamedTuple

import pytest
import redis
import trio
from async_helpers import resp_parser_fixture, run_fixture  # noqa: F401 - fixtures

from ailf import (
    AsyncRedisClient,
    AuthenticationError,
    DecodeError,
    RedisClient,
    RedisConfig,
    RedisConnectionError,
    RedisServer,
    RedisTimeoutError,
    ResponseError,
    RetryPolicy,
    Runtime,
    TLSHandshakeTimeout,
)

NO_RETRY = RetryPolicy(attempts=0)


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    with RedisServer(args=["--requirepass", "s3cret"]) as server:
        admin = redis.Redis(host="127.0.0.1", port=server.port, password="s3cret")
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">wonderland", "~app:*", "+@all")
        admin.close()
        yield server


def test_password(run, password_server: RedisServer) -> None:
    config = password_server.config.replace(password="s3cret")

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            assert await client.set("app:k", "v") is True
            assert await client.get("app:k") == "v"

    run(body)


def test_missing_password_is_an_authentication_error(run, password_server: RedisServer) -> None:
    async def body() -> None:
        with pytest.raises(AuthenticationError, match="requires a password"):
            async with AsyncRedisClient(password_server.config) as client:
                await client.ping()

    run(body)


def test_wrong_password_is_an_authentication_error(run, password_server: RedisServer) -> None:
    config = password_server.config.replace(password="nope", retry=NO_RETRY)

    async def body() -> None:
        with pytest.raises(AuthenticationError) as caught:
            async with AsyncRedisClient(config) as client:
                await client.ping()
        assert str(password_server.port) in str(caught.value)
        assert "nope" not in str(caught.value)

    run(body)


def test_acl_user(run, password_server: RedisServer) -> None:
    config = password_server.config.replace(username="alice", password="wonderland")

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            assert await client.set("app:mine", "1") is True
            with pytest.raises(ResponseError) as caught:
                await client.set("other:key", "1")
            assert caught.value.code == "NOPERM"
            assert await client.execute_command("ACL", "WHOAMI") == "alice"
        with pytest.raises(AuthenticationError):
            async with AsyncRedisClient(config.replace(password="wrong")) as client:
                await client.ping()

    run(body)


@pytest.mark.usefixtures("resp_parser")
def test_unix_socket_select_and_client_name(run) -> None:
    with RedisServer(unix_socket=True) as server:
        config = server.config.replace(db=2, client_name="ailf-test")

        async def body() -> None:
            async with AsyncRedisClient(config) as client:
                await client.set("where", "db2")
                assert await client.execute_command("CLIENT", "GETNAME") == "ailf-test"
                async with client.pubsub() as ps:
                    await ps.subscribe("c")
                names = await client.execute_command("CLIENT", "LIST")
                assert "name=ailf-test" in names

        run(body)
        raw = redis.Redis(unix_socket_path=server.socket_path, db=2, decode_responses=True)
        assert raw.get("where") == "db2"
        raw.close()


def test_unreachable_server_names_the_address(run) -> None:
    with RedisServer() as server:
        config = server.config.replace(retry=RetryPolicy(attempts=1, backoff_initial=0.01))
    # stopped: nothing listens on that port any more

    async def body() -> None:
        with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{config.port}"):
            async with AsyncRedisClient(config):
                pass

    run(body)


def test_socket_timeout_then_the_client_recovers(run, fresh_server: RedisServer) -> None:
    config = fresh_server.config.replace(socket_timeout=0.2)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            await client.set("k", "v")
            side = redis.Redis(host="127.0.0.1", port=fresh_server.port)
            side.execute_command("CLIENT", "PAUSE", 600, "ALL")
            side.close()
            with pytest.raises(RedisTimeoutError):
                await client.get("k")
            for _ in range(50):  # the pause ends; the late reply must not confuse anyone
                try:
                    assert await client.set("k2", "v2") is True
                    break
                except (RedisTimeoutError, RedisConnectionError):
                    continue
            assert await client.get("k") == "v"
            assert await client.get("k2") == "v2"

    run(body)


async def test_a_reply_parsed_before_garbage_on_the_wire_still_reaches_its_caller(
    nursery: trio.Nursery,
) -> None:
    """A lone caller reads its own reply; bytes that are not RESP right behind it end the
    connection, but the caller whose reply was whole gets it, as from the reader task."""

    async def misbehaving(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some()  # the handshake's PING
            await stream.send_all(b"+PONG\r\n")
            await stream.receive_some()
            await stream.send_all(b"+OK\r\n")
            await stream.receive_some()
            await stream.send_all(b"+OK\r\n?not RESP\r\n")
            await trio.sleep_forever()

    serve = functools.partial(trio.serve_tcp, misbehaving, 0, host="127.0.0.1")
    (listener,) = await nursery.start(serve)
    port = listener.socket.getsockname()[1]
    with trio.fail_after(10):
        async with AsyncRedisClient(RedisConfig(port=port)) as client:
            assert await client.execute_command("GET", "k") == "OK"
            await trio.testing.wait_all_tasks_blocked()  # the reader task is parked
            assert await client.execute_command("GET", "k") == "OK"  # read by the caller
            assert await client.execute_command("GET", "k") == "OK"  # on a new connection


def test_decode_error_is_raised_and_connection_stays_in_step(run, redis_config) -> None:
    raw = redis.Redis(host="127.0.0.1", port=redis_config.port)
    raw.set("binary", b"\xff\xfe")
    raw.set("text", "fine")
    raw.close()

    async def body() -> None:
        async with AsyncRedisClient(redis_config) as client:
            with pytest.raises(DecodeError, match="decode_responses=False"):
                await client.get("binary")
            assert await client.get("text") == "fine"

    run(body)


# -- structured lifetime (trio) --------------------------------------------------------


def _connections_named(port: int, name: str) -> int:
    raw = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        return sum(1 for c in raw.client_list() if c.get("name") == name)
    finally:
        raw.close()


async def test_leaving_the_block_closes_everything(redis_config: RedisConfig) -> None:
    config = redis_config.replace(client_name="lifetime")
    task = trio.lowlevel.current_task()
    before = list(task.child_nurseries)
    async with AsyncRedisClient(config) as client:
        await client.xgroup_create("s", "g", mkstream=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.xreadgroup, "g", "c", {"s": ">"}, None, 0)
            nursery.start_soon(client.blpop, "list", 0)
            await trio.testing.wait_all_tasks_blocked()
            assert await client.set("k", "v") is True  # not held up by the blocked reads
            connections = await trio.to_thread.run_sync(
                _connections_named, redis_config.port, "lifetime"
            )
            assert connections == 3
            nursery.cancel_scope.cancel()
        assert len(task.child_nurseries) == len(before) + 1  # the client's own
    assert task.child_nurseries == before
    remaining = await trio.to_thread.run_sync(_connections_named, redis_config.port, "lifetime")
    assert remaining == 0


async def test_commands_after_close_fail_clearly(redis_config: RedisConfig) -> None:
    client = AsyncRedisClient(redis_config)
    async with client:
        await client.ping()
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.ping()
    with pytest.raises(RuntimeError, match="entered once"):
        async with client:
            pass


async def test_exit_is_prompt_with_commands_in_flight(redis_config: RedisConfig) -> None:
    with trio.fail_after(2):
        async with AsyncRedisClient(redis_config) as client:
            await client.rpush("x", "1")
            await client.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
            with trio.move_on_after(0.1):
                await client.rpush("x", "2")  # held by the pause, abandoned
    async with AsyncRedisClient(redis_config) as client:
        await client.execute_command("CLIENT", "UNPAUSE")


def test_an_exception_in_the_block_comes_out_as_itself(run, redis_config: RedisConfig) -> None:
    async def body() -> None:
        with pytest.raises(KeyError, match="mine"):
            async with AsyncRedisClient(redis_config) as client:
                await client.set("k", "v")
                raise KeyError("mine")

    run(body)


class PlainPort(NamedTuple):
    port: int
    mute: bool  # accepts and never answers: the TLS handshake must time out


@pytest.fixture(params=["redis-server", "mute listener"])
def plain_port(request: pytest.FixtureRequest, redis_config: RedisConfig) -> Iterator[PlainPort]:
    """A port without TLS: a plain redis-server (which waits for the end of a command
    line, or answers the TLS hello as a bad command, depending on its random bytes), or
    one that accepts and never answers."""
    if request.param == "redis-server":
        yield PlainPort(redis_config.port, mute=False)
        return
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield PlainPort(listener.getsockname()[1], mute=True)


def _tls_config(plain: PlainPort) -> RedisConfig:
    # Quick retries that would run three more attempts, were the TLS failure retried.
    return RedisConfig(
        host="127.0.0.1",
        port=plain.port,
        ssl=True,
        ssl_cert_reqs="none",
        socket_connect_timeout=0.5,
        retry=RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.01),
    )


def _says_tls_failed(error: BaseException, plain: PlainPort) -> None:
    message = str(error)
    assert isinstance(error, RedisConnectionError), repr(error)
    assert f"TLS handshake with Redis at 127.0.0.1:{plain.port}" in message or (
        f"Redis at 127.0.0.1:{plain.port} accepted the connection but did not answer the TLS"
        " handshake within 0.5 s (socket_connect_timeout): is it a TLS port?" in message
    ), message
    assert isinstance(error, TLSHandshakeTimeout) or not plain.mute


def test_tls_against_a_plain_port_fails_within_the_connect_timeout(
    run, plain_port: PlainPort
) -> None:
    """rediss:// at a plain port: one connect timeout, not one per retry, and a message
    that says the TLS handshake is what failed (it once took 20.5 s, "timed out")."""
    config = _tls_config(plain_port)

    async def body() -> None:
        started = time.monotonic()
        with pytest.raises(RedisConnectionError) as caught:
            async with AsyncRedisClient(config) as client:
                await client.ping()
        assert time.monotonic() - started < 1.5
        _says_tls_failed(caught.value, plain_port)

    run(body)


async def test_the_runtime_says_so_too(plain_port: PlainPort) -> None:
    started = time.monotonic()
    with pytest.raises(RedisConnectionError) as caught:
        async with Runtime(_tls_config(plain_port)):
            pass
    assert time.monotonic() - started < 1.5
    _says_tls_failed(caught.value, plain_port)


def test_the_sync_client_says_so_too(plain_port: PlainPort) -> None:
    client = RedisClient(_tls_config(plain_port))
    started = time.monotonic()
    with pytest.raises(RedisConnectionError) as caught:
        client.get("k")
    assert time.monotonic() - started < 1.5
    _says_tls_failed(caught.value, plain_port)
    assert client.health_check() is False


def test_blocking_commands_outlive_a_shorter_socket_timeout(run, redis_config: RedisConfig) -> None:
    """socket_timeout bounds a blocking command's reply only beyond the command's own wait
    (Redis answers a timed-out BLOCK up to ~0.1 s late: the margin is socket_timeout)."""
    config = redis_config.replace(socket_timeout=0.4)

    async def body() -> None:
        async with AsyncRedisClient(config) as client:
            await client.xgroup_create("s", "g", mkstream=True)
            started = time.monotonic()
            assert await client.xreadgroup("g", "c", {"s": ">"}, block=800) == []
            assert await client.execute_command("BLPOP", "empty", 0.8) is None
            async with client.pipeline(transaction=False) as pipe:
                pipe.blpop("empty", timeout=0.8).get("k")
            assert pipe.results == [None, None]
            assert time.monotonic() - started >= 2.3

    run(body)

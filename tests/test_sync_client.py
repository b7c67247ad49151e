"""RedisClient against real throwaway servers: commands, pipelines, errors, lifecycle."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from ailf import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    RedisClient,
    RedisConfig,
    RedisConnectionError,
    RedisError,
    RedisServer,
    RedisTimeoutError,
    ResponseError,
)
from ailf.codec import encode_payload


@pytest.fixture
def client(redis_config: RedisConfig):
    with RedisClient(redis_config) as client:
        yield client


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_get_set_and_missing_key(client: RedisClient) -> None:
    assert client.set("user:1:name", "Alice") is True
    assert client.get("user:1:name") == "Alice"
    assert client.get("no-such-key") is None


def test_set_with_expiry(client: RedisClient) -> None:
    client.set("short", "x", expire=30)
    client.set("shorter", "x", expire=timedelta(milliseconds=1500))
    client.set_json("json", {"a": 1}, expire=2.5)
    assert 29_000 < client.client.pttl("short") <= 30_000
    assert 0 < client.client.pttl("shorter") <= 1500
    assert 0 < client.client.pttl("json") <= 2500
    assert client.client.pttl("no-expiry") == -2
    with pytest.raises(ValueError, match="expire"):
        client.set("k", "v", expire=0)
    for endless in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="expire: expected seconds > 0"):
            client.set("k", "v", expire=endless)


def test_delete_and_exists_count(client: RedisClient) -> None:
    client.set("a", "1")
    client.set("b", "2")
    assert client.exists("a", "b", "c") == 2
    assert client.exists("a", "a") == 2
    assert client.delete("a", "c") == 1
    assert client.exists("a") == 0


def test_json_round_trip_keeps_nested_types(client: RedisClient) -> None:
    value = {
        "name": "Alice",
        "n": 3,
        "ratio": 0.5,
        "on": True,
        "none": None,
        "nested": [1, {"x": []}],
    }
    client.set_json("user:1", value)
    assert client.get_json("user:1") == value
    assert client.get_json("missing") is None
    client.set("not-json", "plain {text")
    with pytest.raises(DecodeError, match="not valid JSON"):
        client.get_json("not-json")


def test_publish_encodes_dicts_and_lists_and_passes_strings(client: RedisClient) -> None:
    listener = client.client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe("news")
    assert listener.get_message(timeout=1) is None  # consumes the confirmation
    assert client.publish("news", {"a": [1, 2]}) == 1
    client.publish("news", [1, "two"])
    client.publish("news", "plain text")
    received = []
    deadline = time.monotonic() + 5
    while len(received) < 3 and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        if message:
            received.append(message["data"])
    listener.close()
    assert received == ['{"a":[1,2]}', '[1,"two"]', "plain text"]
    assert encode_payload(7) == 7
    assert encode_payload(True) == "true"


def test_pipeline_runs_on_exit_and_decodes(client: RedisClient) -> None:
    client.set_json("config", {"debug": False})
    with client.pipeline() as pipe:
        pipe.set("a", "1")
        pipe.get("a")
        pipe.get_json("config")
        pipe.command("incr", "counter")
        pipe.exists("a", "config")
        assert client.get("a") is None  # nothing sent yet
    assert pipe.results == [True, "1", {"debug": False}, 1, 2]


def test_pipeline_execute_inside_the_block(client: RedisClient) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.set("x", "1")
        assert pipe.execute() == [True]
        assert client.get("x") == "1"
        pipe.delete("x")
    assert pipe.results == [True, 1]


def test_pipeline_sends_nothing_when_the_block_raises(client: RedisClient) -> None:
    with pytest.raises(RuntimeError), client.pipeline() as pipe:
        pipe.set("a", "1")
        pipe.set("b", "2")
        raise RuntimeError("changed my mind")
    assert client.exists("a", "b") == 0
    assert pipe.results == []


def test_pipeline_error_reply_is_translated(client: RedisClient) -> None:
    client.set("text", "x")
    with pytest.raises(ResponseError) as info, client.pipeline() as pipe:
        pipe.command("lpush", "text", "y")
    assert info.value.code == "WRONGTYPE"
    assert "LPUSH" in str(info.value)


def test_error_reply_becomes_response_error_with_code(client: RedisClient) -> None:
    client.set("text", "x")
    with pytest.raises(ResponseError) as info:
        client.run(client.client.lpush, "text", "y")
    assert info.value.code == "WRONGTYPE"
    assert isinstance(info.value, redis.ResponseError)


def test_response_error_code_is_the_replys_first_word_as_on_the_async_client(
    client: RedisClient,
) -> None:
    """redis-py strips ERR, NOPERM… off the message; the translation puts them back."""
    with pytest.raises(ResponseError, match=r"^ERR unknown command 'NOSUCHCOMMAND'") as info:
        client.execute_command("NOSUCHCOMMAND")
    assert info.value.code == "ERR"
    with pytest.raises(ResponseError) as info, client.pipeline(transaction=False) as pipe:
        pipe.command("set", "k", "v")
        pipe.command("execute_command", "NOSUCHCOMMAND")
        pipe.execute()
    assert info.value.code == "ERR" and "(in pipeline: Command # 2" in str(info.value)


def test_execute_returns_raw_replies(client: RedisClient) -> None:
    assert client.execute_command("SET", "k", "v") == "OK"  # redis-py's callbacks would say True
    assert client.execute_command("XLEN", "nothing") == 0
    with pytest.raises(ResponseError) as info:
        client.execute_command("XREADGROUP", "GROUP", "g", "c", "STREAMS", "nothing", ">")
    assert info.value.code == "NOGROUP"


def test_raw_commands_that_would_taint_a_pooled_connection_are_refused(
    client: RedisClient,
) -> None:
    for command in (("WATCH", "k"), ("subscribe", "c"), ("SELECT", 1), ("CLIENT", "REPLY", "SKIP")):
        with pytest.raises(ValueError, match="not allowed on a shared client: "):
            client.execute_command(*command)
    assert client.execute_command("PING") == "PONG"


def test_read_timeout_is_a_timeout_error(redis_config: RedisConfig) -> None:
    with RedisClient(redis_config.replace(socket_timeout=0.2)) as client:
        with pytest.raises(RedisTimeoutError, match=r"socket_timeout=0\.2 s"):
            client.run(client.client.blpop, ["empty-list"], timeout=2)
        assert client.set("still", "works")  # the broken connection was not reused


def test_blocking_commands_outlive_a_shorter_socket_timeout(redis_config: RedisConfig) -> None:
    """The stream helpers' blocking reads go through execute_command: they get their own
    wait plus socket_timeout, not socket_timeout alone."""
    with RedisClient(redis_config.replace(socket_timeout=0.4)) as client:
        client.execute_command("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
        started = time.monotonic()
        read = ("XREADGROUP", "GROUP", "g", "c", "BLOCK", 800, "STREAMS", "s", ">")
        assert client.execute_command(*read) is None
        assert client.execute_command("BLPOP", "empty", 0.8) is None
        assert time.monotonic() - started >= 1.55
        client.execute_command("RPUSH", "full", "x")
        assert client.execute_command("BLPOP", "full", 0.3) == ["full", "x"]
        with pytest.raises(ResponseError) as caught:  # an error reply keeps its connection
            client.execute_command(
                "XREADGROUP", "GROUP", "nope", "c", "BLOCK", 10, "STREAMS", "s", ">"
            )
        assert caught.value.code == "NOGROUP"
        assert client.get("still") is None  # and the socket timeout is back to 0.4 s


def test_a_blocking_command_on_a_server_that_stops_answering_times_out(
    fresh_server: RedisServer,
) -> None:
    with RedisClient(fresh_server.config.replace(socket_timeout=0.3)) as client:
        assert client.execute_command("BLPOP", "empty", 0.1) is None
        client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            client.execute_command("BLPOP", "empty", 0.2)
        assert time.monotonic() - started < 1.5  # 0.2 s of its own + 0.3 s


def test_unreachable_server_fails_fast_with_a_clear_message() -> None:
    port = closed_port()
    client = RedisClient(RedisConfig(host="127.0.0.1", port=port, socket_connect_timeout=1.5))
    started = time.monotonic()
    with pytest.raises(RedisConnectionError) as info:
        client.get("anything")
    assert time.monotonic() - started < 1.5
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "connect timeout 1.5 s" in message
    assert "redis-server running" in message
    # the config was explicit: the URL is the config's, not AILF_REDIS_URL's
    assert f"(the config's URL: redis://127.0.0.1:{port}/0)" in message
    assert "AILF_REDIS_URL" not in message
    assert isinstance(info.value, redis.ConnectionError)
    assert client.health_check() is False


def test_silent_port_fails_within_the_connect_timeout() -> None:
    """A port that accepts but never answers must not hang the handshake."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = RedisClient(RedisConfig(host="127.0.0.1", port=port, socket_connect_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}"):
            client.get("anything")
        assert time.monotonic() - started < 3


def test_wrong_password_is_an_authentication_error() -> None:
    with RedisServer(args=["--requirepass", "right"]) as server:
        wrong = RedisClient(server.config.replace(password="wrong"))
        with pytest.raises(AuthenticationError, match=f"127.0.0.1:{server.port}"):
            wrong.get("k")
        with pytest.raises(AuthenticationError):
            wrong.health_check()
        right = RedisClient(server.config.replace(password="right"))
        assert right.health_check() is True


def test_construction_does_no_io() -> None:
    config = RedisConfig(host="redis.example.com", port=6380, password="secret", ssl=True)
    client = RedisClient(config)
    assert client.config is config
    assert "secret" not in repr(client)
    client.close()


def test_default_config_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    monkeypatch.setenv("AILF_REDIS_URL", redis_server.url)
    client = RedisClient()
    assert client.config.port == redis_server.port
    assert client.health_check() is True
    client.close()


def test_a_url_in_place_of_a_config_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match=r"RedisClient: .* use RedisConfig.from_url\(url\)"):
        RedisClient("redis://localhost:6379/0")  # type: ignore[arg-type]


def test_a_value_redis_cannot_hold_is_not_blamed_on_the_server(client: RedisClient) -> None:
    with pytest.raises(RedisError, match="use set_json") as info:
        client.set("k", None)
    assert "Redis at" not in str(info.value)


def test_unix_socket_server() -> None:
    with RedisServer(unix_socket=True) as server, RedisClient(server.config) as client:
        client.set("k", "v")
        assert client.get("k") == "v"


def test_embedded_config_resolves_on_first_use() -> None:
    client = RedisClient(RedisConfig.from_url("embedded://"))
    client.set("embedded-key", "here")
    assert client.get("embedded-key") == "here"
    assert client.client.connection_pool.connection_kwargs["port"] != 6379
    client.delete("embedded-key")
    client.close()


def test_pool_size_comes_from_max_connections(redis_config: RedisConfig) -> None:
    client = RedisClient(redis_config.replace(max_connections=3))
    assert client.client.connection_pool.max_connections == 3
    client.close()


def test_client_is_thread_safe(client: RedisClient) -> None:
    def work(n: int) -> None:
        for i in range(50):
            client.set(f"t{n}:{i}", str(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.execute_command("DBSIZE") == 400


def test_close_is_idempotent_and_the_client_reconnects(client: RedisClient) -> None:
    client.set("k", "v")
    raw = client.client
    client.close()
    client.close()
    assert client.get("k") == "v"
    assert client.client is not raw


def test_client_survives_a_server_restart(fresh_server: RedisServer) -> None:
    client = RedisClient(fresh_server.config)
    client.set("k", "v")
    fresh_server.restart(kill=True)
    assert client.get("k") is None  # stale pooled connections are replaced on checkout
    assert client.health_check() is True
    client.close()


def test_health_check_of_a_hung_server_is_false_not_a_hang(fresh_server: RedisServer) -> None:
    client = RedisClient(fresh_server.config.replace(socket_connect_timeout=0.3))
    assert client.health_check() is True
    pid = fresh_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert client.health_check() is False
        assert time.monotonic() - started < 3
    finally:
        os.kill(pid, signal.SIGCONT)
    assert client.health_check() is True
    client.close()


def test_an_exhausted_pool_says_so(redis_config: RedisConfig) -> None:
    client = RedisClient(redis_config.replace(max_connections=1))
    held = client.client.connection_pool.get_connection()
    try:
        with pytest.raises(RedisConnectionError, match="all 1 connections of the pool"):
            client.get("k")
    finally:
        client.client.connection_pool.release(held)
    assert client.get("k") is None
    client.close()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1, made with openssl."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt,
         "-days", "1", "-subj", "/CN=ailf-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
         "-out", crt, "-days", "1", "-extfile", extensions],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True)
    return ca_crt, crt, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.tls
def test_tls_connection_verifies_the_server(tmp_path: Path) -> None:
    ca, crt, key = make_certificates(tmp_path)
    tls_port = closed_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", str(crt), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
    with RedisServer(args=args):
        url = f"rediss://localhost:{tls_port}/0?ssl_ca_certs={ca}"
        with RedisClient(RedisConfig.from_url(url)) as client:
            assert client.set("secure", "yes") and client.get("secure") == "yes"
            assert client.health_check() is True
        untrusted = RedisClient(RedisConfig(host="localhost", port=tls_port, ssl=True))
        with pytest.raises(RedisConnectionError, match=f"localhost:{tls_port}"):
            untrusted.get("secure")


def test_missing_unix_socket_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody-home.sock")
    client = RedisClient(RedisConfig(unix_socket_path=path, socket_connect_timeout=1))
    with pytest.raises(RedisConnectionError, match=re.escape(path)):
        client.get("k")
    assert client.health_check() is False

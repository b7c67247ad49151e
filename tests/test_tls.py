"""TLS: AsyncRedisClient against ``redis-server --port 0 --tls-port N``, with a CA made
by openssl in the test, and a second CA that must be refused."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from async_helpers import in_thread, run_fixture  # noqa: F401

from ailf import AsyncRedisClient, RedisConfig, RedisConnectionError, RedisServer

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
    pytest.mark.tls,
]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=ailf test {name}",
        cwd=directory,
    )  # fmt: skip


def _make_server_cert(directory: Path, ca: str) -> None:
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _make_server_cert(directory, "ca")
    return directory


@pytest.fixture(scope="module")
def tls_config(certificates: Path) -> Iterator[RedisConfig]:
    files = (certificates / "server.crt", certificates / "server.key", certificates / "ca.crt")
    with RedisServer(tls=tuple(str(f) for f in files)) as server:  # TLS only: --port 0
        assert server.config.ssl and server.url.startswith("rediss://")
        yield server.config


def test_commands_pipelines_and_pubsub_over_tls(run, tls_config: RedisConfig) -> None:
    async def body() -> None:
        async with AsyncRedisClient(tls_config) as client:
            assert await client.set("tls", "yes") is True
            assert await client.get("tls") == "yes"
            async with client.pipeline() as pipe:
                pipe.incr("n").incr("n")
                assert await pipe.execute() == [1, 2]
            await client.xgroup_create("s", "g", mkstream=True)
            await client.xadd("s", {"a": "b"})
            read = await client.xreadgroup("g", "c", {"s": ">"}, block=1000)
            assert read[0][1][0][1] == {"a": "b"}
            async with client.pubsub() as ps:
                await ps.subscribe("secure")
                await client.publish("secure", "hello")
                assert (await ps.get_message(timeout=5))["data"] == "hello"
            await client.execute_command("FLUSHALL")

    run(body)


def test_wrong_ca_is_refused_with_a_clear_error(
    run, tls_config: RedisConfig, certificates: Path
) -> None:
    config = tls_config.replace(ssl_ca_certs=str(certificates / "other-ca.crt"))

    async def body() -> None:
        with pytest.raises(RedisConnectionError, match="certificate verify failed") as caught:
            async with AsyncRedisClient(config) as client:
                await client.ping()
        assert f"127.0.0.1:{config.port}" in str(caught.value)

    run(body)


def test_plain_client_on_tls_port_fails_cleanly(run, tls_config: RedisConfig) -> None:
    config = tls_config.replace(ssl=False, socket_timeout=1.0, socket_connect_timeout=1.0)

    async def body() -> None:
        with pytest.raises(RedisConnectionError):
            async with AsyncRedisClient(config) as client:
                await client.ping()

    run(body)


def test_tls_client_reconnects_after_restart(run, certificates: Path) -> None:
    files = (certificates / "server.crt", certificates / "server.key", certificates / "ca.crt")
    with RedisServer(tls=tuple(str(f) for f in files)) as server:
        config = server.config

        async def body() -> None:
            async with AsyncRedisClient(config) as client, client.pubsub() as ps:
                await ps.subscribe("c")
                await client.set("k", "v")
                await in_thread(lambda: server.restart(kill=True))
                assert await client.get("k") is None  # a fresh server, reached again
                for _ in range(100):
                    await client.publish("c", "again")
                    message = await ps.get_message(timeout=0.05)
                    if message is not None:
                        break
                assert message["data"] == "again"

        run(body)

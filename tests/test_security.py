"""Security: ACL users confined to their namespace, passwords that never leak, TLS for
the runtime, no pickle or eval anywhere, and message size limits.

The ACL line is the one documented in docs/operating.md (tests/test_runtime_acl.py and
tests/test_cli.py run agents, ``ailf status`` and ``ailf dlq`` with it); here it also
has to carry the overload gate and the dead-lettering of entries that are not text,
and to refuse, command by command, everything outside the namespace.
"""

from __future__ import annotations

import ast
import logging
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trio
from acl_helpers import documented_acl
from runtime_helpers import Echo
from test_tls import certificates  # noqa: F401 - the module-scoped certificate fixture

from ailf import (
    AuthenticationError,
    MailboxFull,
    MessageTooLarge,
    RedisConfig,
    RedisConnectionError,
    RedisError,
    RedisServer,
    Runtime,
)

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def shop_user(fresh_server: RedisServer) -> Iterator[RedisConfig]:
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.execute_command("ACL", "SETUSER", *documented_acl("shop", PASSWORD))
    admin.close()
    yield RedisConfig.from_url(f"redis://shop:{PASSWORD}@127.0.0.1:{fresh_server.port}/0")


async def test_the_namespace_user_runs_the_gate_and_binary_dead_letters(
    fresh_server: RedisServer, shop_user: RedisConfig
) -> None:
    admin = redis.Redis(port=fresh_server.port)
    with trio.fail_after(30):
        async with Runtime(
            shop_user, namespace="shop", mailbox_limit=5, send_timeout=0.3
        ) as runtime:
            await runtime.spawn(Echo, name="echo")
            for n in range(20):  # through the gate: XINFO GROUPS and XLEN are allowed
                assert await runtime.ask("echo", n, timeout=5) == n
            for n in range(5):
                await runtime.send("parked", n)
            with pytest.raises(MailboxFull):
                await runtime.send("parked", 5)
            admin.xadd("ailf:shop:mailbox:echo", {"envelope": pickle.dumps(1)})
            assert await runtime.ask("echo", "after", timeout=5) == "after"
            await runtime.wait_idle(["echo"], timeout=10)
            letters = await runtime.dead_letters("echo")
    admin.close()
    assert [letter.reason for letter in letters] == ["undecodable: the entry is not UTF-8 text"]


def test_the_namespace_user_is_refused_everything_else(
    fresh_server: RedisServer, shop_user: RedisConfig
) -> None:
    admin = redis.Redis(port=fresh_server.port, decode_responses=True)
    admin.set("ailf:other:secret", "s")
    admin.close()
    user = redis.Redis(
        port=fresh_server.port, username="shop", password=PASSWORD, decode_responses=True
    )
    refused: list[tuple[str, ...]] = [
        ("GET", "ailf:other:secret"),
        ("XADD", "ailf:other:mailbox:x", "*", "envelope", "{}"),
        ("XRANGE", "ailf:other:mailbox:x", "-", "+"),
        ("PUBLISH", "ailf:other:topic:news", "hi"),
        ("SUBSCRIBE", "ailf:other:topic:news"),
        ("SET", "ailf:other:lease", "keyed agents' leases are SET, in its own prefix only"),
        ("INCR", "ailf:shop:counter"),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "requirepass"),
        ("ACL", "LIST"),
        ("SHUTDOWN",),
    ]
    # Keyed agents run scripts, which may touch only what the user may touch.
    scripts: list[tuple[str, ...]] = [
        ("EVAL", "return redis.call('GET', KEYS[1])", "1", "ailf:other:secret"),
        ("EVAL", "return redis.call('GET', 'ailf:other:secret')", "0"),
    ]
    try:
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command(*command)
        for command in scripts:
            with pytest.raises(redis.exceptions.ResponseError, match="access"):
                user.execute_command(*command)
        user.xadd("ailf:shop:mailbox:x", {"envelope": "{}"})  # its own prefix works
        assert user.publish("ailf:shop:topic:news", "hi") == 0
    finally:
        user.close()


async def test_another_namespace_is_refused_to_the_runtime(shop_user: RedisConfig) -> None:
    with trio.fail_after(20):
        async with Runtime(shop_user, namespace="shop") as runtime:
            for attempt in (
                runtime.client.xadd("ailf:other:mailbox:echo", {"envelope": "{}"}),
                runtime.client.publish("ailf:other:topic:news", "{}"),
            ):
                with pytest.raises(RedisError, match="NOPERM"):
                    await attempt
        with pytest.raises(RedisError, match="NOPERM"):
            async with Runtime(shop_user, namespace="other") as other:
                await other.spawn(Echo, name="echo")


# -- passwords --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_server() -> Iterator[RedisServer]:
    with RedisServer(args=("--requirepass", PASSWORD)) as server:
        yield server


def test_the_password_never_shows_in_reprs_or_urls(locked_server: RedisServer) -> None:
    config = RedisConfig(port=locked_server.port, password=PASSWORD, username="default")
    runtime = Runtime(config, namespace="p")
    for text in (repr(config), str(config), config.url, repr(runtime), config.address):
        assert PASSWORD not in text, text
    url_config = RedisConfig.from_url(f"redis://default:{PASSWORD}@127.0.0.1:1/0")
    assert PASSWORD not in repr(url_config) and PASSWORD not in url_config.url


async def test_the_password_never_shows_in_errors_or_logs(
    locked_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = RedisConfig(port=locked_server.port, password=f"{PASSWORD}-not")
    unreachable = RedisConfig(port=1, password=PASSWORD, socket_connect_timeout=0.5)
    errors: list[BaseException] = []
    with trio.fail_after(30):
        for config, expected in ((wrong, AuthenticationError), (unreachable, RedisConnectionError)):
            with pytest.raises(expected) as caught:
                async with Runtime(config, namespace="p") as runtime:
                    await runtime.send("x", 1)
            errors.append(caught.value)
        async with Runtime(
            RedisConfig(port=locked_server.port, password=PASSWORD), namespace="p"
        ) as runtime:
            await runtime.spawn(Echo, name="echo")
            assert await runtime.ask("echo", "in", timeout=5) == "in"
            await trio.to_thread.run_sync(lambda: locked_server.restart(kill=True))
            while True:  # reconnects (and logs about it) with the password, silently
                try:
                    assert await runtime.ask("echo", "back", timeout=1) == "back"
                    break
                except (RedisError, TimeoutError):
                    await trio.sleep(0.1)
    for error in errors:
        chain = [error, error.__cause__, error.__context__]
        assert all(PASSWORD not in repr(e) and PASSWORD not in str(e) for e in chain)
    assert "refused" in caplog.text.lower() or "reconnect" in caplog.text.lower()
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "echo", "{}"],
        ["send", "echo", "{}", "--ask", "--timeout", "1"],
        ["publish", "news", "{}"],
        ["status"],
        ["status", "--json"],
        ["dlq", "list", "echo"],
        ["run", str(ROOT / "scenarios" / "work-queue.toml")],
    ],
)
def test_the_cli_never_prints_the_password(locked_server: RedisServer, argv: list[str]) -> None:
    for url in (
        f"redis://:{PASSWORD}-wrong@127.0.0.1:{locked_server.port}/0",
        f"redis://:{PASSWORD}@127.0.0.1:1/0",
    ):
        result = subprocess.run(
            [sys.executable, "-m", "ailf", *argv, "--redis", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, result
        assert PASSWORD not in result.stdout + result.stderr, result.stderr


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(certificates: Path) -> Iterator[RedisServer]:  # noqa: F811
    files = ("server.crt", "server.key", "ca.crt")
    with RedisServer(tls=tuple(str(certificates / name) for name in files)) as server:
        yield server


@pytest.mark.tls
async def test_the_runtime_over_tls(tls_server: RedisServer, certificates: Path) -> None:  # noqa: F811
    Echo.heard = []
    with trio.fail_after(30):
        async with Runtime(tls_server.config, namespace="tls", retry_backoff=0.01) as runtime:
            await runtime.spawn(Echo, name="echo", replicas=2)
            assert await runtime.ask("echo", {"secure": True}, timeout=5) == {"secure": True}
            await runtime.send("echo", "told")
            while not Echo.heard:
                await runtime.publish("news", "broadcast")
                await trio.sleep(0.05)
            await runtime.wait_idle(timeout=10)
        wrong = tls_server.config.replace(ssl_ca_certs=str(certificates / "other-ca.crt"))
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            async with Runtime(wrong, namespace="tls"):
                pass
        plain = tls_server.config.replace(ssl=False, socket_connect_timeout=1.0)
        with pytest.raises(RedisConnectionError):
            async with Runtime(plain, namespace="tls"):
                pass


# -- what the package runs --------------------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def package_sources() -> list[Path]:
    return sorted((ROOT / "ailf").rglob("*.py")) + sorted((ROOT / "agents").rglob("*.py"))


def test_no_pickle_marshal_or_eval_in_the_package() -> None:
    offences = []
    for path in package_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {func.id}")
                if isinstance(func, ast.Attribute) and func.attr in ("eval", "exec"):
                    offences.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {func.attr}")
                if isinstance(func, ast.Attribute) and func.attr in ("load", "loads"):
                    owner = func.value
                    if isinstance(owner, ast.Name) and owner.id in ("yaml", "pickle", "marshal"):
                        offences.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner.id}")
            offences += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                for name in names
                if name in FORBIDDEN_MODULES
            ]
    assert len(package_sources()) > 20
    assert offences == []


# -- size limits ------------------------------------------------------------------------


async def test_oversized_messages_are_refused_before_they_reach_redis(
    redis_config: RedisConfig,
) -> None:
    big = "é" * 600  # 1,200 bytes in UTF-8, 600 characters
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="size", max_message_size=1000) as runtime:
            await runtime.spawn(Echo, name="echo")
            for attempt in (
                runtime.send("echo", big),
                runtime.ask("echo", big, timeout=5),
                runtime.publish("news", big),
            ):
                with pytest.raises(MessageTooLarge, match="max_message_size=1000"):
                    await attempt
            assert await runtime.ask("echo", "é" * 400, timeout=5) == "é" * 400
            assert await runtime.client.xlen("ailf:size:mailbox:echo") == 1

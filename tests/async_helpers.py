"""Running one async test body under trio and under asyncio, with either RESP parser.

Besides the fixtures, small library-neutral helpers for the bodies: ``side_by_side``,
``in_thread``, ``move_on_after``, ``within`` and ``sleep`` do what their trio namesakes
do, under whichever library is running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sniffio
import trio

TEST_TIMEOUT = 30.0


def run_under(library: str, body: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``body(*args)`` to completion under ``library``, failing after TEST_TIMEOUT s."""
    if library == "trio":

        async def in_trio() -> Any:
            with trio.fail_after(TEST_TIMEOUT):
                return await body(*args)

        return trio.run(in_trio)

    async def in_asyncio() -> Any:
        return await asyncio.wait_for(body(*args), TEST_TIMEOUT)

    return asyncio.run(in_asyncio())


@pytest.fixture(name="run", params=["trio", "asyncio"])
def run_fixture(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run(body, *args)``: the test body, under each async library in turn."""
    library = request.param

    def runner(body: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return run_under(library, body, *args)

    runner.library = library  # type: ignore[attr-defined]
    return runner


@pytest.fixture(name="resp_parser", params=["hiredis", "python"])
def resp_parser_fixture(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each RESP parser in turn (``AILF_RESP_PARSER`` is read when a connection opens)."""
    monkeypatch.setenv("AILF_RESP_PARSER", request.param)
    return request.param


def _trio() -> bool:
    return sniffio.current_async_library() == "trio"


async def sleep(seconds: float) -> None:
    if _trio():
        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


async def side_by_side(*functions: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run the functions concurrently until all return (a nursery, or asyncio.gather);
    their results, in order."""
    if not _trio():
        return list(await asyncio.gather(*(function() for function in functions)))
    results: list[Any] = [None] * len(functions)

    async def keep(index: int, function: Callable[[], Awaitable[Any]]) -> None:
        results[index] = await function()

    async with trio.open_nursery() as nursery:
        for index, function in enumerate(functions):
            nursery.start_soon(keep, index, function)
    return results


async def in_thread(function: Callable[[], Any]) -> Any:
    """Run a blocking function in a worker thread, the event loop running meanwhile."""
    if _trio():
        return await trio.to_thread.run_sync(function)
    return await asyncio.get_running_loop().run_in_executor(None, function)


async def move_on_after(
    seconds: float, function: Callable[..., Awaitable[Any]], *args: Any
) -> None:
    """Run ``function(*args)``, abandoning it (cancelled) after ``seconds``."""
    if _trio():
        with trio.move_on_after(seconds):
            await function(*args)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(function(*args), seconds)


async def within(seconds: float, awaitable: Awaitable[Any]) -> Any:
    """Await, failing the test (a timeout error) past ``seconds``."""
    if _trio():
        with trio.fail_after(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)

"""Running one async test body under trio and under asyncio, with either RESP parser."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
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


async def sleep(seconds: float) -> None:
    """Sleep under whichever library is running."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


async def side_by_side(*functions: Callable[[], Awaitable[Any]]) -> None:
    """Run the functions concurrently until all return: a nursery, or asyncio.gather."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        async with trio.open_nursery() as nursery:
            for function in functions:
                nursery.start_soon(function)
    else:
        await asyncio.gather(*(function() for function in functions))

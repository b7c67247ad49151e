"""What the async twins need from the running async library, under trio or asyncio.

:class:`~ailf.clients._async_client.AsyncRedisClient` runs under trio natively and under
asyncio through ``redis.asyncio``; the async pub/sub and stream classes above it follow
suit. They need three things that the two libraries spell differently — a pause that an
event can cut short, a block that ``stop()`` can end, and a client they may own — and
get them here, the library being picked at call time (through ``sniffio``) as the
client does. :func:`given_client` checks the client a twin, sync or async, is given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, Self, TypeVar

import sniffio
import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.config import RedisConfig

__all__ = ["OwnedClient", "StopScope", "given_client", "pause"]

C = TypeVar("C")


def given_client(client: object, kind: type[C], owner: str) -> C | None:
    """``client`` if it is a ``kind`` (or None), else a ``TypeError`` saying what to pass.

    A :class:`~ailf.config.RedisConfig` where a client belongs is the usual slip; caught
    here, it is not an ``AttributeError`` at the first command.
    """
    if client is None or isinstance(client, kind):
        return client
    hint = f"; make one with {kind.__name__}(config)" if isinstance(client, RedisConfig) else ""
    got = type(client).__name__
    raise TypeError(f"{owner}: client takes {kind.__name__} or None, got {got}{hint}")


class Event(Protocol):
    """``trio.Event`` or ``asyncio.Event``: all :func:`pause` needs of one."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


def _running_trio() -> bool:
    return sniffio.current_async_library() == "trio"


async def pause(seconds: float, until: Event | None = None) -> None:
    """Sleep ``seconds``, or until ``until`` is set if that comes first."""
    if _running_trio():
        with trio.move_on_after(seconds):
            if until is None:
                await trio.sleep_forever()
            else:
                await until.wait()
    elif until is None:
        await asyncio.sleep(seconds)
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)


class StopScope:
    """A block that :meth:`stop` ends at its next checkpoint, as a normal exit.

    Under trio it is a cancel scope; under asyncio, a timeout moved to "now". Either
    way, cancellation from outside passes through untouched: only the scope's own
    cancellation is absorbed.
    """

    def __init__(self) -> None:
        self._cancel: Callable[[], None] | None = None

    def stop(self) -> None:
        """End the block if it is running; otherwise do nothing."""
        if self._cancel is not None:
            self._cancel()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        if _running_trio():
            with trio.CancelScope() as scope:
                self._cancel = scope.cancel
                try:
                    yield
                finally:
                    self._cancel = None
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as timeout:
                self._cancel = lambda: timeout.reschedule(loop.time())
                yield
        except TimeoutError:
            if not timeout.expired():
                raise
        finally:
            self._cancel = None


class OwnedClient:
    """The client an async twin uses, and whether closing it is the twin's job.

    A twin given a client leaves its lifetime to the caller. A twin that made its own
    (from ``AILF_REDIS_URL``) enters it in ``async with twin:`` — which under trio
    gives it the shared, pipelined connection — and closes it on leaving, or on
    :meth:`aclose`.
    """

    def __init__(self, client: AsyncRedisClient | None) -> None:
        client = given_client(client, AsyncRedisClient, type(self).__name__)
        self.client = client if client is not None else AsyncRedisClient()
        self._owns_client = client is None

    async def __aenter__(self) -> Self:
        if self._owns_client:
            await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client if this object made it; a client passed in stays open."""
        if self._owns_client:
            await self.client.aclose()

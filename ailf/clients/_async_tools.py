"""What the cluster engine and its pub/sub need of the running async library.

The cluster code (:mod:`ailf.clients._cluster`, :mod:`ailf.clients._cluster_pubsub`)
is written once for trio and asyncio against :class:`AsyncTools`: a clock, sleeping,
events and locks, background tasks that can be cancelled, running several functions at
once, and a bounded queue. :func:`tools_for` picks the implementation for the library
that runs the caller. Under trio, background tasks live in the client's nursery (so the
client must be used as ``async with``); under asyncio, in tasks the tools keep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import sniffio
import trio

__all__ = ["AsyncTools", "Closed", "Handle", "tools_for"]

T = TypeVar("T")


class Closed(Exception):
    """The queue was closed: nothing more will come out of it."""


class Handle(Protocol):
    """A background task: cancel it to end it."""

    def cancel(self) -> Any: ...


class Queue(Protocol[T]):
    async def put(self, item: T) -> None: ...

    async def get(self) -> T: ...

    def close(self) -> None: ...


class AsyncTools(Protocol):
    name: str

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def event(self) -> Any: ...

    def lock(self) -> Any: ...

    @property
    def background(self) -> bool: ...

    def spawn(self, function: Callable[[], Awaitable[Any]]) -> Handle: ...

    async def start(self, serve: Callable[[Callable[[], None]], Awaitable[Any]]) -> Handle: ...

    async def wait(self, event: Any, deadline: float) -> None: ...

    async def all(self, functions: list[Callable[[], Awaitable[Any]]]) -> None: ...

    async def within(self, seconds: float, function: Callable[[], Awaitable[T]]) -> T | None: ...

    def queue(self, size: int) -> Queue[Any]: ...

    def close(self) -> None: ...


class _TrioQueue(Generic[T]):
    def __init__(self, size: int) -> None:
        self._in, self._out = trio.open_memory_channel[T](size)

    async def put(self, item: T) -> None:
        await self._in.send(item)

    async def get(self) -> T:
        try:
            return await self._out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise Closed from None

    def close(self) -> None:
        self._in.close()


class TrioTools:
    """:class:`AsyncTools` on trio; background tasks in ``nursery`` (the client's)."""

    name = "trio"

    def __init__(self, nursery: trio.Nursery | None) -> None:
        self.nursery = nursery

    def now(self) -> float:
        return trio.current_time()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def event(self) -> trio.Event:
        return trio.Event()

    def lock(self) -> trio.Lock:
        return trio.Lock()

    @property
    def background(self) -> bool:
        return self.nursery is not None

    def _nursery(self) -> trio.Nursery:
        if self.nursery is None:
            raise RuntimeError("use the client inside `async with AsyncRedisClient(...)`")
        return self.nursery

    def spawn(self, function: Callable[[], Awaitable[Any]]) -> Handle:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await function()

        self._nursery().start_soon(run)
        return scope

    async def start(self, serve: Callable[[Callable[[], None]], Awaitable[Any]]) -> Handle:
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await serve(task_status.started)

        await self._nursery().start(run)
        return scope

    async def wait(self, event: Any, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await event.wait()

    async def all(self, functions: list[Callable[[], Awaitable[Any]]]) -> None:
        async with trio.open_nursery() as nursery:
            for function in functions:
                nursery.start_soon(function)

    async def within(self, seconds: float, function: Callable[[], Awaitable[T]]) -> T | None:
        """``await function()``, or None if it takes more than ``seconds``."""
        with trio.move_on_after(seconds):
            return await function()
        return None

    def queue(self, size: int) -> _TrioQueue[Any]:
        return _TrioQueue(size)

    def close(self) -> None:
        """Background tasks end with the client's nursery."""


_CLOSED = object()


class _AsyncioQueue(Generic[T]):
    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(size)
        self._closed = False

    async def put(self, item: T) -> None:
        if self._closed:
            raise Closed
        await self._queue.put(item)

    async def get(self) -> T:
        if self._closed and self._queue.empty():
            raise Closed
        item = await self._queue.get()
        if item is _CLOSED:
            raise Closed
        result: T = item
        return result

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_CLOSED)


class AsyncioTools:
    """:class:`AsyncTools` on asyncio; background tasks kept here, cancelled by close()."""

    name = "asyncio"
    background = True

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def event(self) -> asyncio.Event:
        return asyncio.Event()

    def lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    def spawn(self, function: Callable[[], Awaitable[Any]]) -> Handle:
        async def run() -> None:
            await function()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self, serve: Callable[[Callable[[], None]], Awaitable[Any]]) -> Handle:
        started = asyncio.get_running_loop().create_future()

        def mark() -> None:
            if not started.done():
                started.set_result(None)

        task = self.spawn(lambda: serve(mark))
        assert isinstance(task, asyncio.Task)
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():  # it ended before it started: say why
            started.cancel()
            task.result()
        return task

    async def wait(self, event: Any, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await event.wait()

    async def all(self, functions: list[Callable[[], Awaitable[Any]]]) -> None:
        await asyncio.gather(*(function() for function in functions))

    async def within(self, seconds: float, function: Callable[[], Awaitable[T]]) -> T | None:
        """``await function()``, or None if it takes more than ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                return await function()
        except TimeoutError:
            return None

    def queue(self, size: int) -> _AsyncioQueue[Any]:
        return _AsyncioQueue(size)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def tools_for(nursery: trio.Nursery | None) -> TrioTools | AsyncioTools:
    """The tools for the library running the caller (trio's use ``nursery``)."""
    if sniffio.current_async_library() == "asyncio":
        return AsyncioTools()
    return TrioTools(nursery)

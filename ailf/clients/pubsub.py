"""Pub/sub on trio: a dedicated connection, a reader task, and messages as redis-py dicts.

A subscribed connection can only receive, so a :class:`PubSub` owns one connection of
its own for its whole ``async with`` block, and a reader task in the block's own nursery
that parses everything arriving on it. Subscribe confirmations wake the caller of
:meth:`PubSub.subscribe` (which returns only once the server has registered the
channels, so a message published after it returns is received); messages go through a
bounded channel to whoever iterates, so a slow consumer pushes back on the socket
rather than growing memory without bound.

If the connection breaks, the reader reconnects with backoff, for as long as the block
lives (a listener must outlive a Redis restart), subscribes again to every channel and
pattern, and logs both events. Messages published while it was disconnected are lost:
pub/sub is best-effort.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import trio

from ailf.clients.connection import Connection, raise_reply_error
from ailf.clients.pool import connect_with_retry
from ailf.clients.resp import pack_command
from ailf.config import RedisConfig
from ailf.errors import DecodeError, RedisConnectionError, RedisTimeoutError, ResponseError

__all__ = ["PubSub"]

log = logging.getLogger("ailf.clients")

_BUFFER = 4096
_CONFIRMATIONS = frozenset({"subscribe", "psubscribe", "unsubscribe", "punsubscribe"})


def _kind(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PubSub:
    """Subscriptions on a dedicated connection; use as ``async with client.pubsub() as ps``.

    Iterate it (``async for message in ps``) for message dicts shaped like redis-py's:
    ``{"type": "message" | "pmessage", "pattern": ..., "channel": ..., "data": ...}``;
    subscribe/unsubscribe confirmations are not yielded. Leaving the block closes the
    connection and stops the reader.
    """

    def __init__(self, config: RedisConfig) -> None:
        self._config = config
        self.channels: set[Any] = set()
        self.patterns: set[Any] = set()
        self._connection: Connection | None = None
        self._send_lock = trio.Lock()
        self._pending: deque[list[Any]] = deque()
        self._stack: contextlib.AsyncExitStack | None = None
        self._messages_in, self._messages_out = trio.open_memory_channel[dict[str, Any]](_BUFFER)
        self.reconnects = 0
        self._failure: Exception | None = None

    async def __aenter__(self) -> PubSub:
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        try:
            self._connection = await connect_with_retry(self._config)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        nursery.start_soon(self._read_loop)
        stack.callback(nursery.cancel_scope.cancel)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection and stop the reader; a second call does nothing."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        await stack.aclose()
        if self._connection is not None:
            await self._connection.aclose()
        self._messages_in.close()
        self._release_pending()

    # -- subscribing ----------------------------------------------------------------

    async def subscribe(self, *channels: Any) -> None:
        """Subscribe to channels; returns once the server confirmed them."""
        self.channels.update(channels)
        await self._send_and_confirm("SUBSCRIBE", channels)

    async def psubscribe(self, *patterns: Any) -> None:
        """Subscribe to glob patterns (``"events.*"``); returns once confirmed."""
        self.patterns.update(patterns)
        await self._send_and_confirm("PSUBSCRIBE", patterns)

    async def unsubscribe(self, *channels: Any) -> None:
        """Unsubscribe from channels (all of them when none are given)."""
        names = channels or tuple(self.channels)
        self.channels.difference_update(names)
        await self._send_and_confirm("UNSUBSCRIBE", names)

    async def punsubscribe(self, *patterns: Any) -> None:
        """Unsubscribe from patterns (all of them when none are given)."""
        names = patterns or tuple(self.patterns)
        self.patterns.difference_update(names)
        await self._send_and_confirm("PUNSUBSCRIBE", names)

    async def _send_and_confirm(self, command: str, names: tuple[Any, ...]) -> None:
        if self._stack is None:
            raise RuntimeError("use the pubsub inside `async with client.pubsub() as ps:`")
        if not names:
            return
        waiter = [len(names), trio.Event()]
        async with self._send_lock:
            connection = self._connection
            self._pending.append(waiter)
            assert connection is not None
            try:
                await connection.send(pack_command((command, *names)))
            except RedisConnectionError:
                # A broken connection is the reader's to mend: it re-subscribes to every
                # channel in self.channels/self.patterns, then releases this waiter.
                pass
            except BaseException:
                # Cancelled half-way through the write: the stream is out of step, so
                # drop the connection; the reader reconnects and restores everything.
                with trio.CancelScope(shield=True):
                    await connection.aclose()
                raise
        with trio.move_on_after(self._config.socket_timeout or math.inf) as scope:
            await waiter[1].wait()
        if scope.cancelled_caught:
            raise RedisTimeoutError(
                f"Redis at {self._config.address} did not confirm {command} within"
                f" {self._config.socket_timeout} s (socket_timeout)"
            )
        if self._failure is not None:
            raise self._failure

    def _release_pending(self) -> None:
        while self._pending:
            self._pending.popleft()[1].set()

    # -- receiving ------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._messages_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._failure is not None:
                raise self._failure from None
            raise StopAsyncIteration from None

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:  # noqa: ASYNC109 - redis-py's signature
        """The next message, or None if none arrived within ``timeout`` seconds."""
        with trio.move_on_after(math.inf if timeout is None else timeout):
            return await self._messages_out.receive()
        return None

    async def _read_loop(self) -> None:
        try:
            await self._receive_forever()
        except Exception as exc:  # e.g. the password changed: tell the iterating task
            self._failure = exc
            self._messages_in.close()
            self._release_pending()

    async def _receive_forever(self) -> None:
        while True:
            connection = self._connection
            assert connection is not None
            try:
                while True:
                    reply = await connection.read_reply(math.inf)
                    await self._dispatch(reply)
            except RedisConnectionError as exc:
                log.warning("pub/sub %s; reconnecting", exc)
            await self._restore()

    async def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, ResponseError):
            raise_reply_error(reply, self._config.address)
        if isinstance(reply, DecodeError):  # a message that is not UTF-8 text
            log.warning("pub/sub: dropped a message: %s", reply)
            return
        if not isinstance(reply, list) or not reply:
            return
        kind = _kind(reply[0])
        if kind == "message":
            message = {"type": kind, "pattern": None, "channel": reply[1], "data": reply[2]}
        elif kind == "pmessage":
            message = {"type": kind, "pattern": reply[1], "channel": reply[2], "data": reply[3]}
        elif kind in _CONFIRMATIONS:
            if self._pending:
                waiter = self._pending[0]
                waiter[0] -= 1
                if waiter[0] <= 0:
                    self._pending.popleft()
                    waiter[1].set()
            return
        else:
            return
        await self._messages_in.send(message)

    async def _restore(self) -> None:
        async with self._send_lock:
            old = self._connection
            if old is not None:
                await old.aclose()
            connection = await connect_with_retry(self._config, forever=True)
            commands = []
            if self.channels:
                commands.append(pack_command(("SUBSCRIBE", *self.channels)))
            if self.patterns:
                commands.append(pack_command(("PSUBSCRIBE", *self.patterns)))
            self._connection = connection
            # Waiters from before the break are satisfied by the restore; the restore's
            # own confirmations must not be counted against later waiters.
            self._release_pending()
            restore = len(self.channels) + len(self.patterns)
            if restore:
                self._pending.append([restore, trio.Event()])
                with contextlib.suppress(RedisConnectionError):
                    await connection.send(b"".join(commands))
            self.reconnects += 1
            log.warning(
                "pub/sub reconnected to Redis at %s; subscribed again to %d channel(s)"
                " and %d pattern(s)",
                self._config.address,
                len(self.channels),
                len(self.patterns),
            )

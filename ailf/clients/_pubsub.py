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

When Redis refuses a subscription (``NOPERM``: the ACL user may not use that channel),
the refusal fails that call alone: :meth:`PubSub.subscribe` raises the
:class:`~ailf.errors.ResponseError`, the refused names leave ``channels``, and every
other subscription goes on. :class:`SubscriptionState`, the bookkeeping behind this, is
shared with the asyncio engine's session.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import trio

from ailf.clients._connection import Connection
from ailf.clients._errors import raise_reply_error
from ailf.clients._pool import connect_with_retry
from ailf.clients._resp import pack_command, pack_commands
from ailf.config import RedisConfig
from ailf.errors import DecodeError, RedisConnectionError, RedisTimeoutError, ResponseError

__all__ = ["PubSub", "PubSubCommands", "Request", "SubscriptionState"]

log = logging.getLogger("ailf.clients")

_BUFFER = 4096
_CONFIRMATIONS = frozenset(
    {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe"}
)
_SUBSCRIBES = ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE")


def _kind(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Settable(Protocol):
    def set(self) -> None: ...


class Request:
    """A (P)SUBSCRIBE or (P)UNSUBSCRIBE sent on a pub/sub connection, until answered.

    Redis answers it with one confirmation per name, or, when the ACL user may not use
    one of the names, with a single error reply for the whole command, having subscribed
    none of them (it checks every name before it subscribes any). ``added`` holds the
    names this request made wanted (they were not before): a refusal forgets those and
    no others, so that a channel already subscribed survives a refused
    ``subscribe(it, forbidden)``. ``done`` is set once it is answered.
    """

    __slots__ = ("added", "command", "done", "error", "names", "restore", "unanswered")

    def __init__(
        self,
        command: str,
        names: tuple[Any, ...],
        added: set[Any],
        *,
        restore: bool = False,
        done: _Settable | None = None,
    ) -> None:
        self.command = command
        self.names = names
        self.added = added
        #: Sent by a reconnect to subscribe again, not by a caller: nobody awaits it.
        self.restore = restore
        self.done = done
        self.unanswered = len(names)
        self.error: ResponseError | None = None

    @property
    def answered(self) -> bool:
        return self.unanswered <= 0 or self.error is not None


class SubscriptionState:
    """What a pub/sub session is subscribed to, and its commands not yet answered.

    ``channels`` and ``patterns`` change when a command is sent, not when it is
    confirmed, so that one lost with a broken connection is subscribed again anyway;
    a refusal takes its names back out. Redis answers commands in order, so every
    confirmation or error reply answers the oldest pending command. Both engines'
    sessions keep one of these and feed it every reply they read.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.channels: set[Any] = set()
        self.patterns: set[Any] = set()
        self.shard_channels: set[Any] = set()
        self._pending: deque[Request] = deque()

    def _wanted(self, command: str) -> set[Any]:
        if command in ("PSUBSCRIBE", "PUNSUBSCRIBE"):
            return self.patterns
        if command in ("SSUBSCRIBE", "SUNSUBSCRIBE"):
            return self.shard_channels
        return self.channels

    def request(
        self, command: str, names: tuple[Any, ...], done: _Settable | None = None
    ) -> Request:
        """Record ``command`` on ``names`` as sent; call it right before sending, in the
        order commands go out."""
        wanted = self._wanted(command)
        if command in _SUBSCRIBES:
            added = {name for name in names if name not in wanted}
            wanted.update(names)
        else:
            added = set()
            wanted.difference_update(names)
        request = Request(command, names, added, done=done)
        self._pending.append(request)
        return request

    def receive(self, reply: Any) -> dict[str, Any] | None:
        """One reply read from the connection: the message it carries, or None.

        Confirmations and error replies answer the oldest pending command. An error
        reply that answers nothing is raised: the session itself is refused. A
        ``sunsubscribe`` that answers no SUNSUBSCRIBE is the server dropping a sharded
        channel whose slot moved to another node (or whose node stopped being a
        primary): the channel is forgotten, and returned as a message of type
        ``"sunsubscribe"`` for the session's owner to subscribe it where it lives now.
        """
        if isinstance(reply, ResponseError):
            if not self._pending:
                raise_reply_error(reply, self.address)
            self._refuse(self._pending.popleft(), reply)
            return None
        if isinstance(reply, DecodeError):  # a message that is not UTF-8 text
            log.warning("pub/sub: dropped a message: %s", reply)
            return None
        if not isinstance(reply, list) or not reply:
            return None
        kind = _kind(reply[0])
        if kind == "message" or kind == "smessage":
            return {"type": kind, "pattern": None, "channel": reply[1], "data": reply[2]}
        if kind == "pmessage":
            return {"type": kind, "pattern": reply[1], "channel": reply[2], "data": reply[3]}
        if kind not in _CONFIRMATIONS:
            return None
        request = self._pending[0] if self._pending else None
        if request is None or request.command != kind.upper():
            if kind == "sunsubscribe":  # pushed by the server, answering nothing of ours
                self.shard_channels.discard(reply[1])
                return {"type": kind, "pattern": None, "channel": reply[1], "data": None}
            return None
        request.unanswered -= 1
        if request.unanswered <= 0:
            self._finish(self._pending.popleft())
        return None

    def _refuse(self, request: Request, reply: ResponseError) -> None:
        names = " ".join(map(repr, request.names))
        request.error = ResponseError(
            f"{reply} (Redis at {self.address} refused {request.command} {names})"
        )
        if request.command in _SUBSCRIBES:
            self._forget(request)
        if request.restore:
            log.warning(
                "pub/sub: subscribing again after the reconnect failed: %s; no longer"
                " subscribed to it",
                request.error,
            )
        self._finish(request)

    def _forget(self, refused: Request) -> None:
        """Take the refused request's names out of the wanted ones, except those that
        a later pending request subscribes too: that one answers for them now."""
        names = set(refused.added)
        for later in self._pending:
            if later.command == refused.command:
                kept = names.intersection(later.names)
                later.added |= kept
                names -= kept
        self._wanted(refused.command).difference_update(names)

    @staticmethod
    def _finish(request: Request) -> None:
        if request.done is not None:
            request.done.set()

    def restart(self) -> list[Request]:
        """After a reconnect: the commands that set up the new connection, in order,
        now pending — one SUBSCRIBE or PSUBSCRIBE per wanted name (so that Redis
        refusing one refuses no other), then every command that callers sent and that
        was not answered in full, again, so that its answer reaches its caller."""
        callers = [request for request in self._pending if not request.restore]
        carried = {(request.command, name) for request in callers for name in request.added}
        restore = [
            Request(command, (name,), {name}, restore=True)
            for command in _SUBSCRIBES
            for name in self._wanted(command)
            if (command, name) not in carried
        ]
        for request in callers:
            request.unanswered = len(request.names)
        self._pending = deque([*restore, *callers])
        log.warning(
            "pub/sub reconnected to Redis at %s; subscribed again to %d channel(s)"
            " and %d pattern(s)",
            self.address,
            len(self.channels),
            len(self.patterns),
        )
        return list(self._pending)

    def closed_before_answer(self, request: Request) -> RedisConnectionError:
        """What a caller whose command the session closed under, unanswered, gets."""
        return RedisConnectionError(
            f"the pub/sub session to Redis at {self.address} was closed before Redis"
            f" confirmed {request.command}"
        )

    def release(self) -> None:
        """Wake every caller still waiting: the session failed or closed."""
        while self._pending:
            self._finish(self._pending.popleft())


class PubSubCommands:
    """What both engines' pub/sub sessions offer (the trio :class:`PubSub` and its asyncio
    twin), over a :class:`SubscriptionState` and the ``_send_and_confirm`` each provides."""

    _subscriptions: SubscriptionState

    async def _send_and_confirm(self, command: str, names: tuple[Any, ...]) -> None:
        raise NotImplementedError

    @property
    def channels(self) -> set[Any]:
        """The channels subscribed, or being subscribed (read-only)."""
        return self._subscriptions.channels

    @property
    def patterns(self) -> set[Any]:
        """The patterns subscribed, or being subscribed (read-only)."""
        return self._subscriptions.patterns

    async def subscribe(self, *channels: Any) -> None:
        """Subscribe to channels; returns once the server confirmed them.

        Raises :class:`~ailf.errors.ResponseError` (code ``NOPERM``) naming them if
        Redis refuses (it then subscribes none of them); the session goes on.
        """
        await self._send_and_confirm("SUBSCRIBE", channels)

    async def psubscribe(self, *patterns: Any) -> None:
        """Subscribe to glob patterns (``"events.*"``); returns once confirmed, and
        raises like :meth:`subscribe` when refused."""
        await self._send_and_confirm("PSUBSCRIBE", patterns)

    async def unsubscribe(self, *channels: Any) -> None:
        """Unsubscribe from channels (all of them when none are given)."""
        await self._send_and_confirm("UNSUBSCRIBE", channels or tuple(self.channels))

    async def punsubscribe(self, *patterns: Any) -> None:
        """Unsubscribe from patterns (all of them when none are given)."""
        await self._send_and_confirm("PUNSUBSCRIBE", patterns or tuple(self.patterns))

    @property
    def shard_channels(self) -> set[Any]:
        """The sharded channels subscribed, or being subscribed (read-only)."""
        return self._subscriptions.shard_channels

    async def ssubscribe(self, *channels: Any) -> None:
        """Subscribe to sharded channels (Redis ≥ 7), whose messages (``"smessage"``)
        travel only within the shard that owns the channel's slot; returns once the
        server confirmed them. On one server any channels go; on a cluster node, only
        channels of one slot that the node serves (MOVED otherwise)."""
        await self._send_and_confirm("SSUBSCRIBE", channels)

    async def sunsubscribe(self, *channels: Any) -> None:
        """Unsubscribe from sharded channels (all of them when none are given)."""
        await self._send_and_confirm("SUNSUBSCRIBE", channels or tuple(self.shard_channels))


class PubSub(PubSubCommands):
    """Subscriptions on a dedicated connection; use as ``async with client.pubsub() as ps``.

    Iterate it (``async for message in ps``) for message dicts shaped like redis-py's:
    ``{"type": "message" | "pmessage" | "smessage", "pattern": ..., "channel": ...,
    "data": ...}``; subscribe/unsubscribe confirmations are not yielded. Leaving the
    block closes the connection and stops the reader.

    ``reconnect=False`` makes a lost connection end the session (iterating raises the
    :class:`~ailf.errors.RedisConnectionError`) instead of reconnecting to the same
    address: for a cluster's sessions, whose owner subscribes again on another node.
    """

    def __init__(self, config: RedisConfig, *, reconnect: bool = True) -> None:
        self._config = config
        self._reconnect = reconnect
        self._subscriptions = SubscriptionState(config.address)
        self._connection: Connection | None = None
        self._send_lock = trio.Lock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._messages_in, self._messages_out = trio.open_memory_channel[dict[str, Any]](_BUFFER)
        self.reconnects = 0
        self._failure: Exception | None = None
        self._handler: Callable[[dict[str, Any]], None] | None = None

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
        """Close the connection and stop the reader; a second call does nothing.

        The connection is closed even when leaving the nursery raises, as it does in a
        task being cancelled (a runtime shutting down): ``Connection.aclose`` closes
        the socket whether or not it is cancelled.
        """
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            await stack.aclose()
        finally:
            if self._connection is not None:
                await self._connection.aclose()
            self._messages_in.close()
            self._subscriptions.release()

    # -- subscribing ----------------------------------------------------------------

    async def _send_and_confirm(self, command: str, names: tuple[Any, ...]) -> None:
        if self._stack is None:
            raise RuntimeError("use the pubsub inside `async with client.pubsub() as ps:`")
        if not names:
            return
        done = trio.Event()
        async with self._send_lock:
            if self._failure is not None:  # nobody reads the connection any more
                raise self._failure
            connection = self._connection
            assert connection is not None
            request = self._subscriptions.request(command, names, done)
            try:
                await connection.send(pack_command((command, *names)))
            except RedisConnectionError:
                # A broken connection is the reader's to mend: it reconnects and sends
                # every pending command again, this one included.
                pass
            except BaseException:
                # Cancelled half-way through the write: the stream is out of step, so
                # drop the connection; the reader reconnects and restores everything.
                with trio.CancelScope(shield=True):
                    await connection.aclose()
                raise
        with trio.move_on_after(self._config.socket_timeout or math.inf) as scope:
            await done.wait()
        if scope.cancelled_caught:
            raise RedisTimeoutError(
                f"Redis at {self._config.address} did not confirm {command} within"
                f" {self._config.socket_timeout} s (socket_timeout)"
            )
        if request.error is not None:
            raise request.error
        if self._failure is not None:
            raise self._failure
        if not request.answered:  # released by aclose() from another task
            raise self._subscriptions.closed_before_answer(request)

    # -- receiving ------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        message = await self._receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:  # noqa: ASYNC109 - redis-py's signature
        """The next message, or None if none arrived within ``timeout`` seconds."""
        with trio.move_on_after(math.inf if timeout is None else timeout):
            return await self._receive()
        return None

    def deliver_to(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Hand each message to ``handler`` in the reader task, as soon as it is parsed,
        instead of through the buffer to the iterating task: a task switch less per
        message. ``handler`` must not block (nothing pushes back on the socket then).
        Iterating yields what was buffered before, and ends when the session does."""
        self._handler = handler

    async def _receive(self) -> dict[str, Any] | None:
        """The next message; None once the session is closed, and what ended it if it
        failed (a changed password, say)."""
        try:
            return await self._messages_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._failure is not None:
                raise self._failure from None
            return None

    async def _read_loop(self) -> None:
        try:
            await self._receive_forever()
        except Exception as exc:  # e.g. the password changed: tell the iterating task
            self._failure = exc
            self._messages_in.close()
            self._subscriptions.release()

    async def _receive_forever(self) -> None:
        while True:
            connection = self._connection
            assert connection is not None
            try:
                while True:
                    reply = await connection.read_reply(math.inf)
                    message = self._subscriptions.receive(reply)
                    if message is None:
                        continue
                    if self._handler is not None:
                        self._handler(message)
                    else:
                        await self._messages_in.send(message)
            except RedisConnectionError as exc:
                if not self._reconnect:  # the owner reconnects elsewhere (a cluster)
                    raise
                log.warning("pub/sub %s; reconnecting", exc)
            await self._restore()

    async def _restore(self) -> None:
        async with self._send_lock:
            old = self._connection
            if old is not None:
                await old.aclose()
            connection = await connect_with_retry(self._config, forever=True)
            self._connection = connection
            commands = [(r.command, *r.names) for r in self._subscriptions.restart()]
            if commands:
                with contextlib.suppress(RedisConnectionError):
                    await connection.send(pack_commands(commands))
            self.reconnects += 1

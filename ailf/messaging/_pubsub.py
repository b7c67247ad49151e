"""Redis pub/sub with handlers: :class:`RedisPubSub` and :class:`AsyncRedisPubSub`.

Pub/sub is fan-out and best-effort: every subscriber connected when a message is
published gets it; a subscriber that is disconnected at that moment never will. For
work that must not be lost, use a stream (:mod:`ailf.messaging._stream`).

The pure half, in :mod:`ailf.messaging._handlers` — payload decoding, the
:class:`~ailf.messaging._handlers.HandlerTable` that routes each message to its handler,
and the pacing of reconnects — does no I/O and is shared by both classes here. The
sync one, :class:`RedisPubSub`, listens on one
connection in the calling thread or a thread of its own, and keeps listening across a
server restart: it reconnects with backoff, subscribes to everything again, and logs
both (logger ``ailf.pubsub``). The async half, :class:`AsyncRedisPubSub`, routes and
logs through the same pure half, and leaves reconnecting to the async client's
pub/sub session, which restores every subscription itself.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import redis
import redis.client
import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.clients._backend import PubSubSession
from ailf.clients._sync import RedisClient
from ailf.errors import (
    AuthenticationError,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseError,
)
from ailf.messaging import _asynclib as asynclib
from ailf.messaging._asynclib import OwnedClient
from ailf.messaging._handlers import (
    Handler,
    HandlerTable,
    ListenerBackoff,
    PubSubDelivery,
)

__all__ = ["AsyncRedisPubSub", "RedisPubSub"]

log = logging.getLogger("ailf.pubsub")

# How long one wait for a message lasts: the bound on how late stop() is noticed.
_POLL_SECONDS = 0.1


class RedisPubSub:
    """Publish, and call handlers for messages on channels and patterns.

    Handlers run one at a time in the listening thread, in the order messages arrive.
    A handler that raises is logged and the listener goes on. ``subscribe`` and
    ``unsubscribe`` may be called before listening starts, while it runs (from any
    thread, handlers included), or after it stopped.
    """

    def __init__(self, client: RedisClient | None = None) -> None:
        client = asynclib.given_client(client, RedisClient, type(self).__name__)
        self.client = client if client is not None else RedisClient()
        self.subscriptions = HandlerTable()
        # The lock guards the redis-py PubSub object. The listener holds it while it
        # waits for a message (up to _POLL_SECONDS); other threads announce themselves
        # in _waiters first, and the listener lets them go before it waits again, so
        # that a subscribe() from another thread is never starved.
        self._lock = threading.RLock()
        self._waiters = 0
        self._waiters_changed = threading.Condition()
        self._pubsub: redis.client.PubSub | None = None
        self._stopping = threading.Event()
        self._listening = False
        self._thread: threading.Thread | None = None

    # -- publishing and subscribing --------------------------------------------------

    def publish(self, channel: str, message: Any) -> int:
        """Publish (dicts and lists as JSON, strings as they are); how many received it."""
        receivers: int = self.client.publish(channel, message)
        return receivers

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(payload)`` for each message on ``channel`` (replacing any before)."""
        with self._exclusive():
            if self.subscriptions.add(channel, handler):
                self._send("subscribe", channel)

    def psubscribe(self, pattern: str, handler: Handler) -> None:
        """Call ``handler(payload)`` for messages on channels matching ``pattern`` (glob)."""
        with self._exclusive():
            if self.subscriptions.add(pattern, handler, pattern=True):
                self._send("psubscribe", pattern)

    def unsubscribe(self, channel: str) -> None:
        """Stop handling ``channel`` (or a pattern given to :meth:`psubscribe`)."""
        with self._exclusive():
            if self.subscriptions.remove(channel, pattern=True):
                self._send("punsubscribe", channel)
            if self.subscriptions.remove(channel):
                self._send("unsubscribe", channel)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._waiters_changed:
            self._waiters += 1
        try:
            with self._lock:
                yield
        finally:
            with self._waiters_changed:
                self._waiters -= 1
                self._waiters_changed.notify_all()

    def _connection(self) -> redis.client.PubSub:
        if self._pubsub is None:
            pubsub = self.client.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            subs = self.subscriptions
            if subs.channels:
                self.client.run(pubsub.subscribe, *subs.channels)
            if subs.patterns:
                self.client.run(pubsub.psubscribe, *subs.patterns)
        return self._pubsub

    def _send(self, command: str, name: str) -> None:
        try:
            if self._pubsub is None:
                self._connection()
            else:
                self.client.run(getattr(self._pubsub, command), name)
        except AuthenticationError:
            raise
        except (RedisConnectionError, RedisTimeoutError):
            # While listening, the listener reconnects and restores every subscription.
            self._discard()
            if not self._listening:
                raise

    def _discard(self) -> None:
        with self._lock:
            pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                log.debug("closing a broken pub/sub connection failed", exc_info=True)

    # -- listening -------------------------------------------------------------------

    def run(self) -> None:
        """Listen in this thread until :meth:`stop` is called (by a handler or a thread).

        Lost connections are retried for as long as it takes; only wrong credentials
        (:class:`~ailf.errors.AuthenticationError`) end the listener with an error. A
        subscription Redis refuses (``NOPERM``) is dropped and logged, and listening
        goes on with the others.
        """
        with self._lock:
            self._check_idle()
            self._stopping.clear()
            self._listening = True
        self._listen()

    def run_in_thread(self, daemon: bool = True) -> threading.Thread:
        """Listen in a new thread, which is returned; :meth:`stop` ends it."""
        with self._lock:
            self._check_idle()
            self._stopping.clear()
            self._listening = True
            self._thread = threading.Thread(target=self._listen, name="ailf-pubsub", daemon=daemon)
            self._thread.start()
            return self._thread

    def stop(self) -> None:
        """Stop listening and close the connection.

        Returns once the thread of :meth:`run_in_thread` has ended (within ``0.1`` s,
        plus the rest of a handler that is running). Called from a handler, or while
        :meth:`run` listens in another thread, it only signals: the listener ends
        after the running handler, or within ``0.1`` s.
        """
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            self._thread = None
        if not self._listening:
            self._discard()

    def close(self) -> None:
        """Stop listening and close the client's connections too."""
        self.stop()
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_idle(self) -> None:
        if self._listening:
            raise RuntimeError(f"{self!r} is already listening; call stop() first")

    def _listen(self) -> None:
        reconnects = ListenerBackoff(repr(self), self.client.config.retry)
        try:
            while not self._stopping.is_set():
                try:
                    delivery = self._next_delivery()
                except AuthenticationError:
                    raise
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    self._discard()
                    self._stopping.wait(reconnects.lost(exc))
                    continue
                except ResponseError as exc:
                    self._drop_refused(exc)
                    self._discard()  # the next wait subscribes again, to the rest
                    continue
                reconnects.listening()
                if delivery is not None:
                    try:
                        delivery.handler(delivery.payload)
                    except Exception:
                        delivery.log_failure()
        finally:
            self._listening = False
            self._discard()

    def _drop_refused(self, refusal: ResponseError) -> None:
        """Forget the subscriptions Redis refuses to this user, and log them.

        A refused SUBSCRIBE (``NOPERM``) answers with an error that names no channel and
        arrives here, in the listener, long after :meth:`subscribe` returned (redis-py
        does not wait for confirmations). So every subscription is tried again on a
        probe connection, one command each, and those refused are dropped: listening
        goes on with the others. An error that refuses none of them is raised.
        """
        subs = self.subscriptions
        names = [(name, False) for name in subs.channels] + [(name, True) for name in subs.patterns]
        refused = self.client.run(self._refused, names)
        if not refused:
            raise refusal
        for name, pattern in refused:
            subs.remove(name, pattern=pattern)
        log.warning(
            "%s: Redis refused %s (%s); listening goes on without them",
            self,
            ", ".join(repr(name) for name, _ in refused),
            refusal,
        )

    def _refused(self, names: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
        probe = self.client.client.pubsub()
        try:
            for name, pattern in names:
                (probe.psubscribe if pattern else probe.subscribe)(name)
            refused = []
            for name, pattern in names:  # Redis answers in order: a confirmation or an error
                while True:
                    try:
                        reply = probe.get_message(timeout=_POLL_SECONDS * 10)
                    except redis.ResponseError:
                        refused.append((name, pattern))
                        break
                    if reply is None or reply["type"] in ("subscribe", "psubscribe"):
                        break
            return refused
        finally:
            probe.close()

    def _next_delivery(self) -> PubSubDelivery | None:
        with self._waiters_changed:
            self._waiters_changed.wait_for(lambda: not self._waiters, timeout=_POLL_SECONDS)
        with self._lock:
            pubsub = self._connection()
            subscribed = pubsub.subscribed
            if subscribed:
                message = self.client.run(pubsub.get_message, timeout=_POLL_SECONDS)
        if not subscribed:
            self._stopping.wait(_POLL_SECONDS)
            return None
        if message is None:
            return None
        return self.subscriptions.route(
            message["type"], message["channel"], message["data"], message.get("pattern")
        )

    def __repr__(self) -> str:
        subs = self.subscriptions
        return (
            f"<RedisPubSub {self.client.config.url}:"
            f" {len(subs.channels)} channels, {len(subs.patterns)} patterns>"
        )


class AsyncRedisPubSub(OwnedClient):
    """:class:`RedisPubSub` on an :class:`~ailf.clients._async_client.AsyncRedisClient`.

    The same methods, awaited where they talk to Redis, under trio or asyncio. Handlers
    may be plain functions or ``async def``; they run one at a time in the task that
    runs :meth:`run`, in arrival order, and one that raises is logged (logger
    ``ailf.pubsub``) while listening goes on.

    ``subscribe``, ``psubscribe`` and ``unsubscribe`` may be called before :meth:`run`
    (they are recorded and take effect when it subscribes), while it runs (from any
    task, handlers included: they return once the server confirmed), and after.

    Without a client, the object makes its own from ``AILF_REDIS_URL`` and owns it:
    ``async with AsyncRedisPubSub() as pubsub:`` opens it and closes it at the end. A
    client passed in is the caller's to close.

    Surviving a Redis restart is the client's pub/sub session's job, and it does it:
    it reconnects with ``config.retry`` backoff for as long as it takes, subscribes
    again to every channel and pattern, and logs both (logger ``ailf.clients``).
    :meth:`run` itself retries only when it cannot connect at all, with the same
    backoff, logging as :class:`RedisPubSub` does.
    """

    def __init__(self, client: AsyncRedisClient | None = None) -> None:
        super().__init__(client)
        self.subscriptions = HandlerTable()
        self._session: PubSubSession | None = None
        self._subscribed = False
        self._scope = asynclib.StopScope()
        self._listening = False
        self._stopping = False
        self._handling = False
        self._task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED

    def __repr__(self) -> str:
        subs = self.subscriptions
        return (
            f"<AsyncRedisPubSub {self.client.config.url}:"
            f" {len(subs.channels)} channels, {len(subs.patterns)} patterns>"
        )

    @property
    def listening(self) -> bool:
        """True while :meth:`run` is connected and subscribed to every subscription."""
        return self._subscribed

    # -- publishing and subscribing --------------------------------------------------

    async def publish(self, channel: str, message: Any) -> int:
        """Publish (dicts and lists as JSON, strings as they are); how many received it."""
        receivers: int = await self.client.publish(channel, message)
        return receivers

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(payload)`` for each message on ``channel`` (replacing any before).

        While :meth:`run` listens, returns once Redis confirmed; a subscription Redis
        refuses (``NOPERM``: the user may not use that channel) raises
        :class:`~ailf.errors.ResponseError` and is forgotten, so listening goes on.
        """
        await self._add(channel, handler, pattern=False)

    async def psubscribe(self, pattern: str, handler: Handler) -> None:
        """Call ``handler(payload)`` for messages on channels matching ``pattern`` (glob);
        refusals as for :meth:`subscribe`."""
        await self._add(pattern, handler, pattern=True)

    async def _add(self, name: str, handler: Handler, *, pattern: bool) -> None:
        before = self.subscriptions.handler(name, pattern=pattern)
        wanted = self.subscriptions.add(name, handler, pattern=pattern)
        session = self._session
        if session is None:
            return
        try:
            # Sent even for a name subscribed already, to return once Redis confirmed
            # (a SUBSCRIBE of another task may still be on its way).
            await (session.psubscribe if pattern else session.subscribe)(name)
        except ResponseError:
            # Refused: not subscribed, so not restored on a reconnect either (it would
            # be refused again, and end the listener). A handler that was already
            # serving the name keeps it: its subscription stands.
            if wanted:
                self.subscriptions.remove(name, pattern=pattern)
            elif before is not None:
                self.subscriptions.add(name, before, pattern=pattern)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop handling ``channel`` (or a pattern given to :meth:`psubscribe`)."""
        session = self._session
        if self.subscriptions.remove(channel, pattern=True) and session is not None:
            await session.punsubscribe(channel)
        if self.subscriptions.remove(channel) and session is not None:
            await session.unsubscribe(channel)

    # -- listening -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until :meth:`stop` is called, or until the calling task is cancelled.

        Under trio, ``await nursery.start(pubsub.run)`` returns once every subscription
        is in place on the server, so a message published after it is received;
        :attr:`listening` tells the same under asyncio. Stopping: :meth:`stop` makes
        this return normally; cancelling it (a cancel scope, the nursery, an asyncio
        ``task.cancel()``) ends it with the usual ``Cancelled``/``CancelledError``. Either
        way the session's connection is closed before it returns.

        Lost connections are retried for as long as it takes; only wrong credentials
        (:class:`~ailf.errors.AuthenticationError`) end the listener with an error.
        """
        if self._listening:
            raise RuntimeError(f"{self!r} is already listening; call stop() first")
        self._listening, self._stopping = True, False
        self._task_status = task_status
        backoff = ListenerBackoff(repr(self), self.client.config.retry)
        try:
            async with self._scope.open():
                while not self._stopping:
                    try:
                        await self._listen(backoff)
                    except AuthenticationError:
                        raise
                    except (RedisConnectionError, RedisTimeoutError) as exc:
                        await asynclib.pause(backoff.lost(exc))
        finally:
            self._listening = False
            self._task_status = trio.TASK_STATUS_IGNORED

    def stop(self) -> None:
        """Make :meth:`run` return: at once while it waits for a message, and after the
        handler when one is running (as when a handler calls it). Does nothing when
        nothing listens; :meth:`run` may be called again afterwards."""
        self._stopping = True
        if not self._handling:
            self._scope.stop()

    async def aclose(self) -> None:
        """Stop listening, and close the client if this object made it."""
        self.stop()
        await super().aclose()

    async def _listen(self, backoff: ListenerBackoff) -> None:
        async with self.client.pubsub() as session:
            # Published before subscribing, so that a subscribe() racing with this one
            # reaches the server either way; subscribing twice is harmless.
            self._session = session
            try:
                subs = self.subscriptions
                if subs.channels:
                    await session.subscribe(*subs.channels)
                if subs.patterns:
                    await session.psubscribe(*subs.patterns)
                self._subscribed = True
                backoff.listening()
                self._task_status.started()
                self._task_status = trio.TASK_STATUS_IGNORED
                async for message in session:
                    delivery = self.subscriptions.route(
                        message["type"], message["channel"], message["data"], message["pattern"]
                    )
                    if delivery is not None:
                        await self._deliver(delivery)
                    if self._stopping:
                        return
            finally:
                self._session, self._subscribed = None, False
        raise RedisConnectionError(
            f"the pub/sub session with Redis at {self.client.config.address} ended"
        )

    async def _deliver(self, delivery: PubSubDelivery) -> None:
        self._handling = True
        try:
            result = delivery.handler(delivery.payload)
            if inspect.isawaitable(result):
                await result
        except Exception:
            delivery.log_failure()
        finally:
            self._handling = False

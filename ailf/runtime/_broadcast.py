"""One pub/sub connection per process: broadcast topics and the ``ask()`` reply inbox.

Every topic an instance of this process listens to is one channel subscription on the
shared connection, however many instances listen; an arriving broadcast is decoded once
and queued to each listening instance. The process's reply channel is subscribed on the
same connection, so ``ask()`` costs no connection and no subscription per request.

Pub/sub is best-effort: a process that is not subscribed (not started yet, or
reconnecting after a Redis restart) misses what is published meanwhile. The client's
pub/sub session reconnects and subscribes again by itself, so listeners survive a Redis
restart. Malformed broadcasts are logged, counted in :attr:`BroadcastHub.malformed`
and dropped.

The same session carries the mailboxes' *doorbells* (see ailf/runtime/_reader.py): a
channel per mailbox a reader hosts, subscribed in batches of a thousand in the
background (sharded channels on a Redis Cluster, on their slots' primaries), whose
messages only tell the reader to read that mailbox. :attr:`BroadcastHub.sessions`
counts the sessions, so that readers know when bells may have been lost.

The reply channel is subscribed on the first ``ask()``, not at start, so that a client
that only sends needs no pub/sub rights on Redis (an ACL user without ``&channel``
patterns can still ``send``). A subscription Redis refuses (``NOPERM``) fails the call
that needed it — that ``ask()``, that ``spawn()`` — and nothing else: the session goes
on, and the next call tries again.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ailf.errors import AskTimeout, DecodeError, RedisError, RemoteError, ResponseError
from ailf.runtime._message import Message, Reply, decode_envelope, decode_reply
from ailf.runtime._settings import MAX_BACKOFF_STEP

if TYPE_CHECKING:
    from ailf.clients._async_client import AsyncRedisClient

__all__ = ["BroadcastHub", "Listener", "ReplyInbox", "bell_command"]

#: Takes a broadcast to queue it (an instance's ``hear``); must not block.
Listener = Callable[[Message[Any]], None]

#: Doorbells subscribed (or unsubscribed) per command.
BELL_BATCH = 1000

log = logging.getLogger("ailf.runtime")


def bell_command(client: AsyncRedisClient) -> str:
    """The command that rings a doorbell: PUBLISH, or SPUBLISH on a Redis Cluster, where
    the hub subscribes bells as sharded channels (each on its slot's primary)."""
    return "SPUBLISH" if client.config.cluster else "PUBLISH"


@attrs.define(eq=False)
class _Waiter:
    agent: str
    event: trio.Event = attrs.field(factory=trio.Event)
    reply: Reply | None = None


class ReplyInbox:
    """Pending ``ask()`` calls of this process, by correlation id.

    A correlation id is 128 random bits, so that nobody who cannot read the request
    can answer it; a reply must also name the agent that was asked, so that a request
    read out of one mailbox and sent on to another agent (with its ``reply_to`` and
    ``correlation``) cannot answer the first. Replies failing either check are dropped
    (logged at WARNING); a reply whose asker has given up (timed out, cancelled) finds
    no waiter and is dropped quietly (logged at DEBUG).
    """

    def __init__(self, channel: str, namespace: str) -> None:
        self.channel = channel
        self.namespace = namespace
        self._waiting: dict[str, _Waiter] = {}

    def deliver(self, data: Any) -> None:
        try:
            reply = decode_reply(data)
        except DecodeError as exc:
            log.warning("dropped a malformed reply on %s: %s", self.channel, exc)
            return
        waiter = self._waiting.get(reply.correlation)
        if waiter is None:
            log.debug("dropped a late reply (correlation %.40r)", reply.correlation)
            return
        if reply.agent != waiter.agent:
            log.warning(
                "dropped a reply to an ask() of agent %r that came from %r instead",
                waiter.agent,
                reply.agent,
            )
            return
        del self._waiting[reply.correlation]
        waiter.reply = reply
        waiter.event.set()

    async def ask(self, to: str, timeout: float, send: Any) -> Any:  # noqa: ASYNC109
        """Call ``await send(correlation)`` and wait for the matching reply from ``to``.

        Raises :class:`AskTimeout` after ``timeout`` seconds (the request stays in the
        mailbox; its reply will be dropped) and :class:`RemoteError` when the handler
        raised. Cancellation abandons the reply the same way.
        """
        correlation = secrets.token_urlsafe(16)
        waiter = _Waiter(to)
        self._waiting[correlation] = waiter
        try:
            with trio.move_on_after(timeout):
                await send(correlation)
                await waiter.event.wait()
        finally:
            self._waiting.pop(correlation, None)
        reply = waiter.reply
        if reply is None:
            raise AskTimeout(
                f"no reply from agent {to!r} in namespace {self.namespace!r} within"
                f" {timeout} s (is an agent named {to!r} running in this namespace, and is"
                " its handler that slow?)",
                agent=to,
                timeout=timeout,
            )
        if not reply.ok:
            raise RemoteError(reply.error_type, reply.error_message, agent=to)
        return reply.body


class BroadcastHub:
    """The process's pub/sub session: topic listeners and the reply inbox.

    The session outlives Redis restarts and password rotations by itself (the client
    reconnects and subscribes again). Should it fail anyway (Redis answering the session
    with an error), the hub opens a new one after a backoff and subscribes every channel
    it had; broadcasts published in between are lost, as pub/sub allows.
    """

    def __init__(self, client: AsyncRedisClient, inbox: ReplyInbox) -> None:
        self.client = client
        self.inbox = inbox
        self.malformed = 0
        self._listeners: dict[str, set[Listener]] = {}
        self._pubsub: Any = None
        self._nursery: trio.Nursery | None = None
        #: Channels whose SUBSCRIBE is in flight; set once it is answered.
        self._subscribing: dict[str, trio.Event] = {}
        #: Every channel subscribed on purpose, to subscribe again on a new session.
        self._wanted: set[str] = set()
        #: Doorbell channel -> what to call with its message when it rings.
        self._bells: dict[str, list[Callable[[str], None]]] = {}
        #: Doorbells to subscribe, and to unsubscribe, by the background task.
        self._bells_to_add: dict[str, None] = {}
        self._bells_to_drop: dict[str, None] = {}
        self._bell_work = trio.Event()
        self._sharded = client.config.cluster
        #: How many pub/sub sessions this hub has had: a new one may have missed bells.
        self.sessions = 0
        #: Sessions failed in a row, none of which received anything (the backoff step).
        self._failures = 0

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery  # for unsubscribing in the background
                nursery.start_soon(self._keep_bells)
                await self._serve(task_status)
        finally:
            self._nursery = None  # listeners detaching later have nothing to unsubscribe

    async def _serve(self, task_status: trio.TaskStatus) -> None:
        started = False
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    # Bells, replies and broadcasts are handled as the session reads
                    # them (all without blocking): a task switch less on an ask's path.
                    pubsub.deliver_to(self._receive)
                    self._pubsub = pubsub
                    self.sessions += 1
                    await self._subscribe_again(pubsub)
                    if not started:
                        task_status.started()
                        started = True
                    async for message in pubsub:
                        self._receive(message)
                return
            except RedisError as exc:
                if not started:
                    raise  # Redis unreachable or refusing us at start: the runtime says so
                delay = self.client.config.retry.delay(min(self._failures, MAX_BACKOFF_STEP))
                self._failures += 1
                log.warning(
                    "the broadcast and reply session failed (%s); opening a new one in %.2f s",
                    exc,
                    delay,
                )
                await trio.sleep(delay)

    def _receive(self, message: dict[str, Any]) -> None:
        self._failures = 0  # the session works: the next one to fail starts its backoff anew
        if message.get("type") not in ("message", "smessage"):
            return
        channel = message["channel"]
        rings = self._bells.get(channel)
        if rings is not None:
            for ring in rings:
                ring(message["data"])
        elif channel == self.inbox.channel:
            self.inbox.deliver(message["data"])
        else:
            self._broadcast(channel, message["data"])

    async def _subscribe_again(self, pubsub: Any) -> None:
        for channel in sorted(self._wanted):
            try:
                await pubsub.subscribe(channel)
            except ResponseError as exc:  # NOPERM since: the others go on
                log.warning("could not subscribe %s again: %s", channel, exc)
        self._bells_to_add.update(dict.fromkeys(self._bells))
        self._bell_work.set()

    # -- doorbells --------------------------------------------------------------------

    def add_bell(self, channel: str, ring: Callable[[str], None]) -> None:
        """Call ``ring`` with the message whenever ``channel`` rings, once it is
        subscribed (soon, in the background; ``ring("")`` is also called then, for what
        came before). Several listeners may share a channel: two local replicas' readers,
        and the timekeeper."""
        rings = self._bells.get(channel)
        if rings is not None:
            rings.append(ring)
            ring("")
            return
        self._bells[channel] = [ring]
        self._bells_to_drop.pop(channel, None)
        self._bells_to_add[channel] = None
        self._bell_work.set()

    def remove_bell(self, channel: str, ring: Callable[[str], None]) -> None:
        """Stop calling ``ring``; the channel is unsubscribed when no listener is left."""
        rings = self._bells.get(channel)
        if rings is None or ring not in rings:
            return
        rings.remove(ring)
        if not rings:
            del self._bells[channel]
            self._bells_to_add.pop(channel, None)
            self._bells_to_drop[channel] = None
            self._bell_work.set()

    async def _keep_bells(self) -> None:
        """Subscribe and unsubscribe doorbells in batches, for as long as the hub runs."""
        failures = 0
        while True:
            await self._bell_work.wait()
            self._bell_work = trio.Event()
            pubsub = self._pubsub
            if pubsub is None:
                continue
            try:
                await self._change_bells(pubsub, self._bells_to_drop, subscribe=False)
                await self._change_bells(pubsub, self._bells_to_add, subscribe=True)
                failures = 0
            except RedisError as exc:
                delay = self.client.config.retry.delay(min(failures, MAX_BACKOFF_STEP))
                failures += 1
                log.debug("could not subscribe doorbells (%s); again in %.2f s", exc, delay)
                self._bell_work.set()
                await trio.sleep(delay)

    async def _change_bells(self, pubsub: Any, todo: dict[str, None], *, subscribe: bool) -> None:
        """Subscribe (and ring) or unsubscribe the channels in ``todo``, a batch per
        command; a batch is taken off ``todo`` only once Redis confirmed it."""
        if subscribe:
            change = pubsub.ssubscribe if self._sharded else pubsub.subscribe
        else:
            change = pubsub.sunsubscribe if self._sharded else pubsub.unsubscribe
        while todo:
            batch = list(itertools.islice(todo, BELL_BATCH))
            await change(*batch)
            for channel in batch:
                todo.pop(channel, None)
                for ring in self._bells.get(channel, ()) if subscribe else ():
                    ring("")

    def _broadcast(self, channel: str, data: Any) -> None:
        listeners = self._listeners.get(channel)
        if not listeners:
            return
        try:
            message = decode_envelope(data)
        except DecodeError as exc:
            self.malformed += 1
            log.warning("dropped a malformed broadcast on %s: %s", channel, exc)
            return
        for listener in listeners:
            listener(message)

    async def open_inbox(self) -> None:
        """Subscribe the reply channel unless it is, so that a request sent afterwards
        cannot miss its reply (see :meth:`subscribe`)."""
        await self.subscribe(self.inbox.channel)

    async def subscribe(self, channel: str) -> None:
        """Subscribe ``channel`` unless it is; returns once Redis confirmed it.

        Concurrent callers wait for the one SUBSCRIBE in flight. When Redis refuses it,
        this raises its :class:`~ailf.errors.ResponseError` (``NOPERM``) and the channel
        is not subscribed, so each waiting caller, and each later one, tries again.
        """
        while (pending := self._subscribing.get(channel)) is not None:
            await pending.wait()
        if channel in self._pubsub.channels:
            return
        self._subscribing[channel] = done = trio.Event()
        try:
            await self._pubsub.subscribe(channel)
            self._wanted.add(channel)
        finally:
            del self._subscribing[channel]
            done.set()

    async def add_listener(self, channel: str, listener: Listener) -> None:
        """Hand broadcasts on ``channel`` to ``listener``; returns once subscribed. When
        Redis refuses the subscription, raises, and ``listener`` does not listen."""
        self._listeners.setdefault(channel, set()).add(listener)
        try:
            await self.subscribe(channel)
        except BaseException:
            self.remove_listener(channel, listener)
            raise

    def remove_listener(self, channel: str, listener: Listener) -> None:
        listeners = self._listeners.get(channel)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[channel]
            self._wanted.discard(channel)
            if self._nursery is not None:
                self._nursery.start_soon(self._unsubscribe, channel)

    async def _unsubscribe(self, channel: str) -> None:
        if channel not in self._listeners and channel in self._pubsub.channels:
            try:
                await self._pubsub.unsubscribe(channel)
            except RedisError as exc:  # the session failed: the next one will not have it
                log.debug("could not unsubscribe %s: %s", channel, exc)

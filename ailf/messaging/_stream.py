"""Redis streams with consumer groups: :class:`RedisStream` and :class:`AsyncRedisStream`.

A stream is durable and ordered; a consumer group shares its entries among consumers
so that each entry is handled by one of them, and stays *pending* until acknowledged.

Each operation — ``read_group``'s history-then-new logic, ``claim_idle``'s XAUTOCLAIM
walk, the whole processing loop — is written once, as steps, in
:mod:`ailf.messaging._stream_steps`, which does no I/O. The two classes here only
perform the steps: :class:`RedisStream` with blocking calls on a
:class:`~ailf.clients._sync.RedisClient`, :class:`AsyncRedisStream` awaiting them on an
:class:`~ailf.clients._async_client.AsyncRedisClient`. Both clients run one command
surface, so both faces send the same commands, get the same parsed replies and recover
alike, by construction.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ailf.clients._async_client import AsyncRedisClient
from ailf.clients._sync import RedisClient
from ailf.messaging import _asynclib as asynclib
from ailf.messaging._asynclib import OwnedClient
from ailf.messaging._stream_steps import (
    Entry,
    Handle,
    Pause,
    PendingEntry,
    PendingSummary,
    Step,
    StepRunner,
    Steps,
    StreamOperations,
)

__all__ = ["AsyncRedisStream", "RedisStream"]

T = TypeVar("T")


# -- the sync half -------------------------------------------------------------------


class RedisStream(StreamOperations):
    """One Redis stream, optionally read through a consumer group.

    ``maxlen`` caps the stream on every :meth:`add` (``MAXLEN ~``: Redis trims whole
    nodes, so the length hovers a little above it). A stream instance belongs to one
    consumer and is not meant to be shared between threads; the client is.
    """

    def __init__(
        self, name: str, client: RedisClient | None = None, maxlen: int | None = None
    ) -> None:
        super().__init__(name, maxlen)
        client = asynclib.given_client(client, RedisClient, type(self).__name__)
        self.client = client if client is not None else RedisClient()

    def _run(
        self,
        steps: Steps[T],
        handler: Callable[[Entry], object] | None = None,
        stop: threading.Event | None = None,
    ) -> T:
        runner = StepRunner(steps)
        while (step := runner.next_step()) is not None:
            with runner.outcome():
                runner.reply = self._perform(step, handler, stop)
        result: T = runner.result
        return result

    def _perform(
        self, step: Step, handler: Callable[[Entry], object] | None, stop: threading.Event | None
    ) -> Any:
        if isinstance(step, Handle):
            assert handler is not None
            return handler(step.entry)
        if isinstance(step, Pause):
            assert stop is not None
            return stop.wait(step.seconds)
        return step.on(self.client)

    # -- writing and plain reading ---------------------------------------------------

    def add(self, data: Mapping[str, Any]) -> str:
        """Append an entry; its id (``"<ms>-<seq>"``)."""
        return self._run(self._add_steps(data))

    def read(
        self, count: int | None = None, block: int | None = None, last_id: str | None = None
    ) -> list[Entry]:
        """Up to ``count`` entries after the last one this object returned, oldest first.

        The stream object is a cursor, so a polling loop (``while True:
        stream.read(count=10, block=1000)``) gets every entry once and, when there is
        nothing new, waits up to ``block`` milliseconds instead of spinning. The first
        call starts at the beginning of the stream (``"0"``), as a new consumer group
        does, so that a reader started after its producer does not skip what was
        already written.

        ``last_id`` reads after that id instead, and the following calls go on from
        there: ``"0"`` reads again from the start, ``"$"`` only entries added from now
        on (the upstream library's default). Plain reading ignores consumer groups and
        acknowledges nothing.
        """
        return self._run(self._read_steps(count, block, last_id))

    def length(self) -> int:
        """How many entries the stream holds (0 when it does not exist)."""
        return self._run(self._length_steps())

    def trim(
        self, maxlen: int | None = None, *, minid: str | None = None, approximate: bool = True
    ) -> int:
        """Drop old entries beyond ``maxlen``, or older than id ``minid``; how many went.

        ``approximate=True`` (``~``) lets Redis trim whole nodes only, which is much
        cheaper and may leave a few more entries than asked.
        """
        return self._run(self._trim_steps(maxlen, minid, approximate))

    def info(self) -> dict[str, Any]:
        """XINFO STREAM as a dict; ``first-entry``/``last-entry`` as entry dicts."""
        return self._run(self._info_steps())

    def groups(self) -> list[dict[str, Any]]:
        """XINFO GROUPS: one dict per group (name, consumers, pending, last-delivered-id...)."""
        return self._run(self._groups_steps())

    # -- consumer groups -------------------------------------------------------------

    def create_consumer_group(self, group: str, consumer: str, start_id: str = "0") -> bool:
        """Create ``group`` (and the stream, if missing) and read as ``consumer`` from now on.

        The default ``start_id="0"`` makes a new group see the entries already in the
        stream: a producer that runs first does not lose its work to a consumer that
        starts later. Pass ``"$"`` for a group that only sees entries added after it
        was created. Creating a group that exists is not an error (BUSYGROUP is
        success) and leaves its position alone. No dummy entry is ever written.

        Returns True, as the upstream library did on success, so that its idiom ``if
        not stream.create_consumer_group(...)`` keeps working; a failure raises
        instead of returning False.
        """
        return self._run(self._create_group_steps(group, consumer, start_id))

    def read_group(self, count: int = 10, block: int | None = None) -> list[Entry]:
        """Entries for this consumer: first its own unacknowledged history, then new ones.

        The first calls after :meth:`create_consumer_group` return entries this
        consumer name was given before and never acknowledged (a restarted worker
        resumes its work); once that history is read, calls return entries never
        delivered to anyone, waiting up to ``block`` milliseconds for one. History
        entries trimmed away while pending are acknowledged and skipped. A read that
        failed (the connection broke) may have delivered entries it could not return,
        so the next call reads this consumer's history again first.
        """
        return self._run(self._read_group_steps(count, block))

    def acknowledge(self, *ids: str) -> int:
        """Mark entries as done for this group; how many were pending."""
        return self._run(self._acknowledge_steps(*ids))

    def pending(self) -> PendingSummary:
        """How many entries the group has delivered and not yet had acknowledged."""
        return self._run(self._pending_steps())

    def pending_entries(
        self, count: int = 100, consumer: str | None = None, idle: int | None = None
    ) -> list[PendingEntry]:
        """Up to ``count`` pending entries, oldest first, of one consumer or all,
        idle at least ``idle`` milliseconds when given."""
        return self._run(self._pending_entries_steps(count, consumer, idle))

    def claim_idle(self, min_idle_ms: int, count: int = 10) -> list[Entry]:
        """Take over up to ``count`` entries pending longer than ``min_idle_ms`` (XAUTOCLAIM).

        This is how the work of a consumer that died is picked up: its entries stay
        pending under its name until another consumer claims them. Claimed entries
        count as delivered again and must be acknowledged as usual.
        """
        return self._run(self._claim_idle_steps(min_idle_ms, count))

    # -- the processing loop ---------------------------------------------------------

    def process(
        self,
        handler: Callable[[Entry], object],
        *,
        count: int = 10,
        block: int = 2000,
        stop_event: threading.Event | None = None,
        max_messages: int | None = None,
        claim_idle_ms: int | None = None,
    ) -> int:
        """Read, handle and acknowledge entries until stopped; how many were acknowledged.

        ``handler(entry)`` is called once per entry, in order; the entry is
        acknowledged only if the handler returns. One that raises is logged (logger
        ``ailf.stream``) and stays pending, and the loop backs off
        (``config.retry`` delays) before reading on. With ``claim_idle_ms`` the loop
        also claims entries pending longer than that, including its own failed ones,
        which is how they are retried.

        The loop survives the server going away: connection errors and timeouts are
        logged and retried after a backoff, and a group lost with the server's data
        (NOGROUP) is re-created at ``"0"``, so entries written after the loss are
        read. It never spins: every failure is followed by a growing pause, capped at
        ``retry.backoff_max``; ``retry.attempts`` does not limit it (a worker exists
        to keep working). Wrong credentials and other error replies are raised.

        It returns when ``stop_event`` is set (checked between reads, so within
        ``block`` milliseconds) or after ``max_messages`` entries were handled.
        """
        stop = stop_event if stop_event is not None else threading.Event()
        steps = self._process_steps(
            handler, self.client.config.retry, count, block, stop, max_messages, claim_idle_ms
        )
        return self._run(steps, handler, stop)


# -- the async half ------------------------------------------------------------------


class AsyncRedisStream(StreamOperations, OwnedClient):
    """:class:`RedisStream` on an :class:`~ailf.clients._async_client.AsyncRedisClient`.

    The same methods, arguments and return values, awaited; under trio or asyncio,
    whichever the client runs on. Every method sends exactly the commands its sync
    twin sends and reads the replies the same way, because both run one set of steps.

    Without a client, the stream makes its own from ``AILF_REDIS_URL`` and owns it:
    ``async with AsyncRedisStream("tasks") as stream:`` opens it (under trio, with the
    shared pipelined connection) and closes it at the end. A client passed in is the
    caller's to close. Blocking reads (``block=``) wait on a dedicated connection of
    the client's pool, so they never hold up other tasks' commands.

    Cancellation: a cancelled call may still have run on the server (see the client's
    contract). A cancelled :meth:`read_group` may have delivered entries to this
    consumer that it never returned; they stay pending, and the next
    :meth:`read_group` reads this consumer's history first to return them.
    """

    def __init__(
        self, name: str, client: AsyncRedisClient | None = None, maxlen: int | None = None
    ) -> None:
        StreamOperations.__init__(self, name, maxlen)
        OwnedClient.__init__(self, client)

    async def _run(
        self,
        steps: Steps[T],
        handler: Callable[[Entry], object] | None = None,
        stop: asynclib.Event | None = None,
    ) -> T:
        runner = StepRunner(steps)
        while (step := runner.next_step()) is not None:
            with runner.outcome():
                runner.reply = await self._perform(step, handler, stop)
        result: T = runner.result
        return result

    async def _perform(
        self, step: Step, handler: Callable[[Entry], object] | None, stop: asynclib.Event | None
    ) -> Any:
        if isinstance(step, Handle):
            assert handler is not None
            result = handler(step.entry)
            return await result if inspect.isawaitable(result) else result
        if isinstance(step, Pause):
            return await asynclib.pause(step.seconds, stop)
        return await step.on(self.client)

    # -- writing and plain reading ---------------------------------------------------

    async def add(self, data: Mapping[str, Any]) -> str:
        """Append an entry; its id. See :meth:`RedisStream.add`."""
        return await self._run(self._add_steps(data))

    async def read(
        self, count: int | None = None, block: int | None = None, last_id: str | None = None
    ) -> list[Entry]:
        """Entries after the last one this object returned (or after ``last_id``), without
        a group; see :meth:`RedisStream.read`. One task at a time reads through an object:
        the position is the object's."""
        return await self._run(self._read_steps(count, block, last_id))

    async def length(self) -> int:
        """How many entries the stream holds (0 when it does not exist)."""
        return await self._run(self._length_steps())

    async def trim(
        self, maxlen: int | None = None, *, minid: str | None = None, approximate: bool = True
    ) -> int:
        """Drop old entries; how many went. See :meth:`RedisStream.trim`."""
        return await self._run(self._trim_steps(maxlen, minid, approximate))

    async def info(self) -> dict[str, Any]:
        """XINFO STREAM as a dict; ``first-entry``/``last-entry`` as entry dicts."""
        return await self._run(self._info_steps())

    async def groups(self) -> list[dict[str, Any]]:
        """XINFO GROUPS: one dict per group."""
        return await self._run(self._groups_steps())

    # -- consumer groups -------------------------------------------------------------

    async def create_consumer_group(self, group: str, consumer: str, start_id: str = "0") -> bool:
        """Create the group (MKSTREAM, BUSYGROUP is success) and read as ``consumer``; True.

        See :meth:`RedisStream.create_consumer_group`.
        """
        return await self._run(self._create_group_steps(group, consumer, start_id))

    async def read_group(self, count: int = 10, block: int | None = None) -> list[Entry]:
        """This consumer's unacknowledged history first, then new entries.

        See :meth:`RedisStream.read_group`.
        """
        return await self._run(self._read_group_steps(count, block))

    async def acknowledge(self, *ids: str) -> int:
        """Mark entries as done for this group; how many were pending."""
        return await self._run(self._acknowledge_steps(*ids))

    async def pending(self) -> PendingSummary:
        """The group's pending entries in brief."""
        return await self._run(self._pending_steps())

    async def pending_entries(
        self, count: int = 100, consumer: str | None = None, idle: int | None = None
    ) -> list[PendingEntry]:
        """Pending entries one by one. See :meth:`RedisStream.pending_entries`."""
        return await self._run(self._pending_entries_steps(count, consumer, idle))

    async def claim_idle(self, min_idle_ms: int, count: int = 10) -> list[Entry]:
        """Take over idle entries of others. See :meth:`RedisStream.claim_idle`."""
        return await self._run(self._claim_idle_steps(min_idle_ms, count))

    # -- the processing loop ---------------------------------------------------------

    async def process(
        self,
        handler: Callable[[Entry], object],
        *,
        count: int = 10,
        block: int = 2000,
        stop_event: asynclib.Event | None = None,
        max_messages: int | None = None,
        claim_idle_ms: int | None = None,
    ) -> int:
        """Read, handle and acknowledge entries until stopped; how many were acknowledged.

        :meth:`RedisStream.process`, awaited: the same acknowledging, logging, backoff
        and group re-creation. ``handler`` may be a plain function or an ``async def``
        (awaited before the next entry). ``stop_event`` is a ``trio.Event`` or an
        ``asyncio.Event``: it is checked between reads (so within ``block`` ms) and
        cuts a backoff pause short.

        Cancelling the call is the other way to stop, and the trio way: the loop ends
        at once, with ``Cancelled``. Entries of the current batch whose handler
        finished but whose acknowledgement was not sent yet stay pending, and are
        delivered again (to this consumer on its next start, or to a claimer): the
        loop is at-least-once.
        """
        steps = self._process_steps(
            handler,
            self.client.config.retry,
            count,
            block,
            stop_event,
            max_messages,
            claim_idle_ms,
        )
        return await self._run(steps, handler, stop_event)

"""One connection shared by many tasks: a single writer task, a single reader task.

Callers never write to the socket while another write is pending, and never read
replies that are not theirs. :meth:`SharedConnection.request` appends the packed
command to an outbox and a reply slot to a FIFO, in the same synchronous step, so the
order of slots is the order of commands on the wire; then the caller parks. The writer
drains the whole outbox into one ``send_all``, so commands issued concurrently by many
tasks are pipelined automatically. The reader parses replies from large chunks and hands
each to the slot at the head of the FIFO.

One task issuing one command at a time is the case the reader and writer tasks make
slowest: every reply would cost two task switches (the reader, then the caller). So
when nothing else is in flight, the caller writes its command and
waits for the socket itself, while the reader task stays parked. Other requests made
meanwhile queue behind it as usual, and the caller hands the socket back to the reader
when its own reply is in (or when it is cancelled).

Cancellation never desynchronizes the stream: a cancelled caller only marks its slot
*abandoned*; its command may still be sent and run, and its reply is thrown away
instead of being handed to the next caller (the CVE-2023-28858/28859 class of bug
cannot happen, because replies are always matched to slots in order, by whoever
reads). When the socket breaks, every waiting caller gets
:class:`~ailf.errors.RedisConnectionError` and the connection is done; the client opens
a new one for later commands.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import outcome
import trio
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from ailf.clients._connection import Connection
from ailf.clients._resp import NOT_ENOUGH, ProtocolError
from ailf.errors import RedisConnectionError, RedisTimeoutError

__all__ = ["SharedConnection"]


class _Slot:
    """Where one request's reply (or replies, for a pipeline) will be delivered."""

    __slots__ = ("abandoned", "count", "replies", "reply", "task")

    def __init__(self, task: Task, count: int) -> None:
        self.task = task
        self.count = count
        self.replies: list[Any] | None = [] if count > 1 else None
        self.reply: Any = None
        self.abandoned = False

    def abandon(self, raise_cancel: Any) -> Abort:
        self.abandoned = True
        return Abort.SUCCEEDED


class SharedConnection:
    """A :class:`Connection` multiplexed among tasks; run it with :meth:`run` in a nursery.

    Usable from the moment it is created (requests queue until the writer starts).
    ``error`` is None while it works, and the :class:`RedisConnectionError` that ended
    it afterwards; requests made then fail at once with that error.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._outbox: list[bytes] = []
        self._waiting: deque[_Slot] = deque()
        self._parked_writer: Task | None = None
        self._parked_reader: Task | None = None
        # The slot of the caller reading the socket itself (see the module docstring);
        # while it is set, the reader task stays parked: trio allows one reader per fd.
        self._reading_slot: _Slot | None = None
        self._scope = trio.CancelScope()
        self._timeout = connection.socket_timeout
        self.error: RedisConnectionError | None = None

    @property
    def address(self) -> str:
        return self._connection.address

    def usable(self) -> bool:
        """Whether new requests may go here; notices a server that closed an idle socket.

        A request written on a socket the server already closed would fail although it
        never reached the server, and nobody reads an idle socket (the reader task
        parks while nothing is in flight). So before a request goes on an idle
        connection, one non-blocking ``poll`` checks the socket, and the client opens
        a fresh connection for the request if the server closed it. (redis-py pays the
        same check each time it takes a connection from its pool.)
        """
        if self.error is not None:
            return False
        if not self._waiting and self._connection.has_pending_input():
            self._fail(RedisConnectionError(f"Redis at {self.address} closed the connection"))
            return False
        return True

    @property
    def in_flight(self) -> int:
        """Requests whose replies have not arrived yet (abandoned ones included)."""
        return len(self._waiting)

    async def request(self, data: bytes, count: int = 1) -> Any:
        """Queue ``count`` packed commands and wait for the reply (a list if ``count > 1``).

        Error replies are returned, not raised. Cancellation: before the command is
        queued, nothing was sent; after, the command may still run on the server and its
        reply is discarded. ``socket_timeout`` (when set) abandons the wait the same way
        and raises :class:`RedisTimeoutError`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.error is not None:
            raise RedisConnectionError(str(self.error))
        slot = _Slot(current_task(), count)
        writer = self._parked_writer
        if writer is not None and not self._waiting:
            # Nothing in flight and the writer idle: write from this task, synchronously
            # (it cannot be interrupted), and wake the writer only for what is left.
            sent = self._connection.send_now(data)
            if sent < len(data):
                self._outbox.append(data[sent:])
                self._parked_writer = None
                reschedule(writer)
            self._waiting.append(slot)
            if self._parked_reader is not None:
                return await self._read_own_reply(slot)
        else:
            self._outbox.append(data)
            if writer is not None:
                self._parked_writer = None
                reschedule(writer)
            self._waiting.append(slot)
        self._wake_reader()
        if self._timeout is None:
            return await wait_task_rescheduled(slot.abandon)
        with trio.move_on_after(self._timeout):
            return await wait_task_rescheduled(slot.abandon)
        raise self._timed_out()

    async def _read_own_reply(self, slot: _Slot) -> Any:
        """Read the socket from this task until ``slot``'s reply is in (the fast path).

        Replies to requests queued behind this one that arrive meanwhile are handed to
        their callers as the reader task would; whatever is left is the reader's again
        once this returns or raises.
        """
        self._reading_slot = slot
        try:
            if self._timeout is None:
                return await self._read_until_delivered(slot)
            with trio.move_on_after(self._timeout):
                return await self._read_until_delivered(slot)
            raise self._timed_out()
        except RedisConnectionError as exc:
            self._fail(exc)  # skips this slot: this task is running, not parked
            if self._reading_slot is not slot:  # its reply was whole before the break
                return slot.reply
            raise RedisConnectionError(str(self.error)) from exc
        finally:
            if self._reading_slot is slot:  # failed, cancelled or timed out
                slot.abandoned = True
                self._reading_slot = None
            self._wake_reader()

    async def _read_until_delivered(self, slot: _Slot) -> Any:
        connection = self._connection
        idle = True  # the reply cannot be here yet: park before trying to read
        while self._reading_slot is slot:
            await connection.receive_into_parser(idle=idle)
            idle = False
            self._deliver_parsed()
        return slot.reply

    def _timed_out(self) -> RedisTimeoutError:
        return RedisTimeoutError(
            f"Redis at {self.address} did not answer within {self._timeout} s"
            " (socket_timeout); the command may still have run"
        )

    async def run(self) -> None:
        """Drive the socket until it breaks or :meth:`close` is called.

        Never raises a connection error: that is delivered to the callers waiting on
        this connection. Returns once the socket is closed.
        """
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    await self._read_loop()
        finally:
            self._fail(RedisConnectionError(f"connection to Redis at {self.address} was closed"))
            with trio.CancelScope(shield=True):
                # Closing the socket also wakes a caller reading it itself.
                await self._connection.aclose()

    def close(self) -> None:
        """Stop the reader and writer; waiting callers get :class:`RedisConnectionError`."""
        self._fail(RedisConnectionError(f"connection to Redis at {self.address} was closed"))
        self._scope.cancel()

    def _fail(self, error: RedisConnectionError) -> None:
        if self.error is None:
            self.error = error
        self._outbox.clear()
        waiting = self._waiting
        while waiting:
            slot = waiting.popleft()
            # The caller reading the socket itself is not parked here: it learns of the
            # failure when the socket is closed under it.
            if not slot.abandoned and slot is not self._reading_slot:
                slot.abandoned = True
                reschedule(slot.task, outcome.Error(RedisConnectionError(str(self.error))))
        self._scope.cancel()

    def _abort_parked_writer(self, raise_cancel: Any) -> Abort:
        self._parked_writer = None
        return Abort.SUCCEEDED

    def _abort_parked_reader(self, raise_cancel: Any) -> Abort:
        self._parked_reader = None
        return Abort.SUCCEEDED

    def _wake_reader(self) -> None:
        """Unpark the reader task if replies are awaited and no caller reads them itself."""
        reader = self._parked_reader
        if reader is not None and self._waiting and self._reading_slot is None:
            self._parked_reader = None
            reschedule(reader)

    async def _write_loop(self) -> None:
        connection = self._connection
        try:
            while True:
                outbox = self._outbox
                if not outbox:
                    self._parked_writer = current_task()
                    await wait_task_rescheduled(self._abort_parked_writer)
                    continue
                self._outbox = []
                await connection.send(outbox[0] if len(outbox) == 1 else b"".join(outbox))
        except RedisConnectionError as exc:
            self._fail(exc)

    async def _read_loop(self) -> None:
        connection = self._connection
        try:
            while True:
                # A caller that read the socket itself may have left whole replies in
                # the parser for the requests queued behind it.
                self._deliver_parsed()
                if not self._waiting or self._reading_slot is not None:
                    self._parked_reader = current_task()
                    await wait_task_rescheduled(self._abort_parked_reader)
                    continue
                await connection.receive_into_parser()
        except RedisConnectionError as exc:
            self._fail(exc)

    def _deliver_parsed(self) -> None:
        """Hand every complete reply in the parser to its slot, in order.

        The slot of a caller reading the socket itself gets its reply stored, not
        rescheduled: that caller is running, not parked.
        """
        connection = self._connection
        waiting = self._waiting
        gets = connection.parser.gets
        while True:
            try:
                reply = gets()
            except UnicodeDecodeError as exc:
                reply = connection.decode_error(exc)
            except ProtocolError as exc:
                raise connection.protocol_error(exc) from exc
            if reply is NOT_ENOUGH:
                return
            if not waiting:
                raise RedisConnectionError(
                    f"Redis at {self.address} sent a reply nobody asked for: {reply!r}"
                )
            slot = waiting[0]
            if slot.count != 1:
                replies = slot.replies
                assert replies is not None  # a list wherever count > 1
                replies.append(reply)
                if len(replies) < slot.count:
                    continue
                reply = replies
            waiting.popleft()
            if slot is self._reading_slot:
                slot.reply = reply
                self._reading_slot = None
            elif not slot.abandoned:
                reschedule(slot.task, outcome.Value(reply))

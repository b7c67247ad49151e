"""One running agent instance: its queue, its handler loop, its background tasks.

A :class:`Cell` (Akka's word for the runtime side of an actor) owns one ``Agent``
instance for one life: the supervisor makes a new cell, with a new instance, for every
restart. Messages reach it from the mailbox reader and the broadcast hub through two
plain deques (no trio task and no channel per message); ``concurrency`` worker loops
drain them, one message at a time each, so the default of one keeps stream order.

Broadcasts go first. The reader fetches mailbox entries a batch ahead, so a broadcast
queued behind them would wait for the whole batch (seconds, with slow handlers); and a
queued mailbox entry is safe in Redis while a broadcast exists only here. For the same
reason a graceful stop drops the queued mailbox entries (they stay pending for whoever
reads next) but still handles the queued broadcasts, within the grace period.

A mailbox entry's walk through here is short: decoded and vetted, handed to the
handler, and the outcome — returned, raised, or refused before the handler ran — reported
to the reader's :class:`~ailf.runtime._settle.Settler`, which acknowledges, answers,
retries or dead-letters it. A handler cancelled (shutdown past the grace period, a crash)
reports nothing: its entry stays pending and is delivered again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ailf.runtime._agent import AgentLog, current_message_id, handler_of, is_sync_handler
from ailf.runtime._host import HostContext
from ailf.runtime._keys import check_name
from ailf.runtime._message import Message
from ailf.runtime._reader import MailboxReader
from ailf.runtime._settle import Binding, Delivery, Refused, vet
from ailf.runtime._spawn import SpawnSpec
from ailf.runtime._statistics import Counters

__all__ = ["Cell"]

_logger = logging.getLogger("ailf.agent")


class Cell:
    """One life of one agent instance (see the module docstring)."""

    def __init__(
        self,
        host: HostContext,
        spec: SpawnSpec,
        replica: int,
        reader: MailboxReader,
        counters: Counters,
    ) -> None:
        self.host = host
        self.spec = spec
        self.replica = replica
        self.reader = reader
        self.counters = counters
        self.started = False
        self.in_flight = 0
        self._queue: deque[Delivery] = deque()
        self._heard: deque[Message[Any]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._high_water = 2 * host.settings.batch_size
        self._full = False
        self._closing = False
        self._normal = False
        #: The replica whose restart took this instance down (strategy one_for_all).
        self.taken_down_by: int | None = None
        #: Wraps the handler loops; its deadline is set when the instance is asked to stop.
        self._workers = trio.CancelScope()
        self._topics: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._settler = reader.settler
        self.log = AgentLog(_logger, {"agent": spec.name, "replica": replica})
        self.binding = Binding(
            address=host.keys.address(spec.name),
            agent=spec.name,
            claim_idle=spec.claim_idle,
            max_deliveries=spec.agent_cls.max_deliveries,
            deliver=self.deliver,
            log=self.log,
            counters=counters,
        )
        self.agent = spec.instance(host.runtime, replica, self.log, self)
        self._on_message = handler_of(self.agent, is_sync_handler(spec.agent_cls))

    # -- fed by the reader and the hub (synchronous) -----------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """Queue a mailbox entry (from the reader)."""
        queue = self._queue
        queue.append(delivery)
        if self._lot:  # a worker is parked waiting for work
            self._lot.unpark()
        if not self._full and len(queue) >= self._high_water:
            self._full = True
            self.reader.set_full(self.binding, True)

    def hear(self, message: Message[Any]) -> None:
        """Queue a broadcast (from the hub), ahead of every queued mailbox entry."""
        self._heard.append(message)
        if self._lot:
            self._lot.unpark()

    def busy(self) -> bool:
        return bool(self._queue or self._heard) or self.in_flight > 0

    # -- lifetime -------------------------------------------------------------------

    def request_stop(self, *, normal: bool) -> None:
        """Stop taking messages now; handlers in flight get the grace period to finish."""
        self._normal = self._normal or normal
        if not self._closing:
            self._detach()
            self._workers.deadline = trio.current_time() + self.host.grace_period

    def take_down(self, replica: int) -> None:
        """Stop gracefully because replica ``replica`` is restarted (one_for_all): the
        supervisor then restarts this one too, whatever its restart policy."""
        if self.taken_down_by is None:
            self.taken_down_by = replica
        self.request_stop(normal=False)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> bool:
        """Start, serve until asked to stop, stop gracefully; True if the agent stopped
        itself normally. Raises what escaped ``on_start`` or a background task."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.agent.on_start()
                self.started = True
                for topic in self.spec.topics:
                    await self.subscribe(topic)
                if not self._closing:
                    self.reader.bind(self.binding)
                task_status.started()
                with self._workers:
                    if self.spec.concurrency == 1:
                        await self._worker()
                    else:
                        async with trio.open_nursery() as workers:
                            for _ in range(self.spec.concurrency):
                                workers.start_soon(self._worker)
                nursery.cancel_scope.cancel()
        finally:
            self._detach()
        return self._normal

    def _detach(self) -> None:
        """Stop receiving: queued entries stay pending in Redis for whoever reads next;
        queued broadcasts are still handled (see the module docstring)."""
        self._closing = True
        self.reader.unbind(self.binding)
        self._queue.clear()
        self._lot.unpark_all()
        for topic in self._topics:
            self.host.hub.remove_listener(self.host.keys.topic(topic), self.hear)
        self._topics.clear()

    async def finish(self) -> Exception | None:
        """Run ``on_stop`` (if ``on_start`` completed); the exception it raised, if any."""
        if not self.started:
            return None
        with trio.move_on_after(self.host.grace_period) as scope:
            try:
                await self.agent.on_stop()
            except Exception as exc:
                return exc
        if scope.cancelled_caught:
            self.log.warning("on_stop did not finish within %.1f s", self.host.grace_period)
        return None

    def start_task(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None or self._closing:
            raise RuntimeError(
                f"agent {self.spec.name!r}: start_task() works from on_start on, until stop"
            )
        self._nursery.start_soon(async_fn, *args)

    async def subscribe(self, topic: str) -> None:
        check_name("topic", topic)
        if topic in self._topics or self._closing:
            return
        self._topics.add(topic)
        try:
            await self.host.hub.add_listener(self.host.keys.topic(topic), self.hear)
        except BaseException:
            self._topics.discard(topic)  # refused (NOPERM) or cancelled: may be tried again
            raise

    async def unsubscribe(self, topic: str) -> None:
        if topic in self._topics:
            self._topics.discard(topic)
            self.host.hub.remove_listener(self.host.keys.topic(topic), self.hear)

    # -- handling -------------------------------------------------------------------

    async def _worker(self) -> None:
        queue = self._queue
        heard = self._heard
        handled = 0
        while True:
            handle: Callable[[Any], Awaitable[None]]
            item: Any
            if heard:
                handle, item = self._handle_broadcast, heard.popleft()
            elif queue:
                handle, item = self._handle_delivery, queue.popleft()
                if self._full and len(queue) <= self._high_water // 2:
                    self._full = False
                    self.reader.set_full(self.binding, False)
            elif self._closing:
                return
            else:
                await self._lot.park()
                continue
            self.in_flight += 1
            try:
                await handle(item)
            finally:
                self.in_flight -= 1
            handled += 1
            if not handled % 64:
                await trio.lowlevel.checkpoint()

    async def _handle_delivery(self, delivery: Delivery) -> None:
        counters = self.counters
        counters.received += 1
        try:
            message = vet(delivery, self.host, self.binding.max_deliveries)
        except Refused as refused:
            await self._settler.refused(delivery, str(refused))
            return
        with self.host.observer.handling(self.spec.name, message) as handling:
            token = current_message_id.set(delivery.id)
            started = time.perf_counter()
            try:
                result = await self._on_message(message)
            except Exception as exc:
                counters.handler_finished(time.perf_counter() - started)
                counters.failed += 1
                handling.failed(exc)
                await self._settler.raised(delivery, message, exc)
                return
            finally:
                current_message_id.reset(token)
            counters.handler_finished(time.perf_counter() - started)
            counters.processed += 1
            counters.mailbox_processed += 1
            await self._settler.returned(delivery, message, result)

    async def _handle_broadcast(self, message: Message[Any]) -> None:
        counters = self.counters
        counters.received += 1
        with self.host.observer.handling(self.spec.name, message) as handling:
            token = current_message_id.set(message.id)
            started = time.perf_counter()
            try:
                await self._on_message(message)
            except Exception as exc:
                counters.failed += 1
                handling.failed(exc)
                self.log.warning(
                    "handler raised %s on a broadcast to %r: %s (broadcasts are not retried)",
                    type(exc).__name__,
                    message.topic,
                    exc,
                    exc_info=exc,
                )
            else:
                counters.processed += 1
            finally:
                counters.handler_finished(time.perf_counter() - started)
                current_message_id.reset(token)

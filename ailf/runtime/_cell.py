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

What happens to a message after its handler:

- returned: the entry is acknowledged — for an ``ask()``, in one write with the reply;
- raised, on a tell: retried after a backoff, and after ``max_deliveries`` deliveries
  written to the dead letters and acknowledged together;
- raised, on an ask: the caller gets a RemoteError and the entry is acknowledged (the
  caller knows, and decides whether to ask again);
- cancelled (shutdown past the grace period, a crash): nothing; the entry stays
  pending and is delivered again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ailf.codec import dumps
from ailf.errors import DecodeError, RedisError
from ailf.runtime._agent import Agent, AgentLog, current_message_id, is_sync_handler
from ailf.runtime._keys import GROUP, check_name
from ailf.runtime._mailbox import Binding, Delivery, MailboxReader
from ailf.runtime._message import (
    ENVELOPE_FIELD,
    Message,
    decode_envelope,
    encode_reply,
    error_text,
    kept_envelope,
    too_large,
    wire_text,
)
from ailf.runtime._statistics import Counters

if TYPE_CHECKING:
    from ailf.runtime._runtime import Runtime

__all__ = ["AgentSpec", "Cell"]

_logger = logging.getLogger("ailf.agent")


@attrs.frozen
class AgentSpec:
    """What ``spawn()`` was asked to run: one agent name, all its local replicas."""

    agent_cls: type[Agent]
    name: str
    options: Any
    topics: tuple[str, ...]
    claim_idle: float
    concurrency: int


class Cell:
    """One life of one agent instance (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        spec: AgentSpec,
        replica: int,
        reader: MailboxReader,
        counters: Counters,
    ) -> None:
        self.runtime = runtime
        self.spec = spec
        self.replica = replica
        self.reader = reader
        self.counters = counters
        self.started = False
        self.in_flight = 0
        self._queue: deque[Delivery] = deque()
        self._heard: deque[Message] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._high_water = 2 * runtime.settings.batch_size
        self._full = False
        self._closing = False
        self._normal = False
        #: The replica whose restart took this instance down (strategy one_for_all).
        self.taken_down_by: int | None = None
        #: Wraps the handler loops; its deadline is set when the instance is asked to stop.
        self._workers = trio.CancelScope()
        self._topics: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._sync = is_sync_handler(spec.agent_cls)
        self.binding = Binding(runtime.keys.mailbox(spec.name), spec.name, self, spec.claim_idle)
        self.log = AgentLog(_logger, {"agent": spec.name, "replica": replica})
        agent = spec.agent_cls()
        agent.name = spec.name
        agent.replica = replica
        agent.options = spec.options
        agent.runtime = runtime
        agent.log = self.log
        agent._cell = self
        self.agent = agent

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

    def hear(self, message: Message) -> None:
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
            self._workers.deadline = trio.current_time() + self.runtime.grace_period

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
            self.runtime.hub.remove_listener(self.runtime.keys.topic(topic), self)
        self._topics.clear()

    async def finish(self) -> Exception | None:
        """Run ``on_stop`` (if ``on_start`` completed); the exception it raised, if any."""
        if not self.started:
            return None
        with trio.move_on_after(self.runtime.grace_period) as scope:
            try:
                await self.agent.on_stop()
            except Exception as exc:
                return exc
        if scope.cancelled_caught:
            self.log.warning("on_stop did not finish within %.1f s", self.runtime.grace_period)
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
            await self.runtime.hub.add_listener(self.runtime.keys.topic(topic), self)
        except BaseException:
            self._topics.discard(topic)  # refused (NOPERM) or cancelled: may be tried again
            raise

    async def unsubscribe(self, topic: str) -> None:
        if topic in self._topics:
            self._topics.discard(topic)
            self.runtime.hub.remove_listener(self.runtime.keys.topic(topic), self)

    # -- handling -------------------------------------------------------------------

    async def _worker(self) -> None:
        queue = self._queue
        heard = self._heard
        handled = 0
        while True:
            handle: Callable[[Any], Awaitable[None]]
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

    async def _call(self, message: Message) -> Any:
        if self._sync:
            # Abandoned on cancellation (shutdown past the grace period, a crash): the
            # thread runs to its end on its own, its message stays pending.
            return await trio.to_thread.run_sync(
                self.agent.on_message, message, abandon_on_cancel=True
            )
        return await self.agent.on_message(message)

    async def _handle_delivery(self, delivery: Delivery) -> None:
        counters = self.counters
        counters.received += 1
        raw = delivery.fields.get(ENVELOPE_FIELD)
        limit = self.runtime.settings.max_message_size
        if isinstance(raw, str) and too_large(raw, limit):
            await self.dead_letter(delivery, f"envelope larger than max_message_size={limit}")
            return
        try:
            message = decode_envelope(
                raw, message_id=delivery.id, delivery_count=delivery.delivery_count
            )
        except DecodeError as exc:
            await self.dead_letter(delivery, f"undecodable: {exc}")
            return
        keys = self.runtime.keys
        if message.reply_to is not None and not keys.is_reply(message.reply_to):
            await self.dead_letter(
                delivery,
                f"refused: reply_to {message.reply_to[:120]!r} is not a reply inbox of"
                f" namespace {keys.namespace!r} (a channel {keys.reply('...')!r})",
            )
            return
        max_deliveries = self.spec.agent_cls.max_deliveries
        if delivery.delivery_count > max_deliveries:
            await self.dead_letter(
                delivery,
                f"delivered {delivery.delivery_count} times (max_deliveries={max_deliveries})"
                " without its handler finishing: the process handling it died or was stopped",
            )
            return
        token = current_message_id.set(delivery.id)
        started = time.perf_counter()
        try:
            result = await self._call(message)
        except Exception as exc:
            counters.handler_finished(time.perf_counter() - started)
            counters.failed += 1
            await self._failed(delivery, message, exc)
            return
        finally:
            current_message_id.reset(token)
        counters.handler_finished(time.perf_counter() - started)
        counters.processed += 1
        counters.mailbox_processed += 1
        if message.reply_to is not None:
            await self._reply_and_ack(delivery, message, result)
        else:
            self.runtime.acker.ack(delivery.binding.stream, delivery.id)
            delivery.binding.held.pop(delivery.id, None)

    async def _failed(self, delivery: Delivery, message: Message, exc: Exception) -> None:
        token = current_message_id.set(delivery.id)
        try:
            max_deliveries = self.spec.agent_cls.max_deliveries
            if message.reply_to is not None:
                self.log.warning(
                    "handler raised %s: %s (answered to the asker as RemoteError)",
                    type(exc).__name__,
                    exc,
                )
                await self._reply_and_ack(delivery, message, error=exc)
            elif delivery.delivery_count >= max_deliveries:
                await self.dead_letter(
                    delivery,
                    f"handler failed on delivery {delivery.delivery_count} of {max_deliveries}",
                    exc,
                )
            else:
                self.counters.retried += 1
                delay = self.reader.schedule_retry(delivery)
                self.log.warning(
                    "handler raised %s: %s (delivery %d of %d; retrying in %.2f s)",
                    type(exc).__name__,
                    exc,
                    delivery.delivery_count,
                    max_deliveries,
                    delay,
                )
        finally:
            current_message_id.reset(token)

    async def _reply_and_ack(
        self,
        delivery: Delivery,
        message: Message,
        result: Any = None,
        error: Exception | None = None,
    ) -> None:
        """Publish the reply to an ``ask()`` and acknowledge its request in one write.

        One round trip instead of an awaited PUBLISH plus a batched XACK: a request is
        answered and done at once, which keeps the asker's tail latency down. The handler
        has finished by now, so the ack never precedes it. If the reply cannot be sent the
        asker times out (logged); the ack is not lost either way — if the XACK did not
        run, or whether it ran is unknown (the connection broke), it goes to the Acker,
        which retries (XACK of an id already acknowledged is a no-op).
        """
        assert message.reply_to is not None and message.correlation is not None
        try:
            text = encode_reply(message.correlation, result, error, agent=self.spec.name)
        except DecodeError as exc:  # the return value is not JSON: the asker gets why
            self.log.warning("could not encode the reply (%s); answering with the error", exc)
            text = encode_reply(message.correlation, error=exc, agent=self.spec.name)
        stream = delivery.binding.stream
        pipe = self.runtime.client.pipeline(transaction=False)
        pipe.publish(message.reply_to, text)
        pipe.xack(stream, GROUP, delivery.id)
        try:
            published, acked = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            published = acked = exc
        if isinstance(published, Exception):
            self.log.warning("could not send the reply to %s: %s", message.reply_to, published)
        if isinstance(acked, Exception):
            self.runtime.acker.ack(stream, delivery.id)
        delivery.binding.held.pop(delivery.id, None)

    async def dead_letter(
        self, delivery: Delivery, reason: str, error: Exception | None = None
    ) -> bool:
        """Move ``delivery`` to the dead letters: XADD it there, then acknowledge it.

        Two steps, not one MULTI: inside a transaction a failing XADD (the dead-letter
        key holding a string, Redis out of memory) does not stop the XACK after it, and
        the message would be gone without a trace. If the XADD fails, the entry stays
        pending and comes back; the reason is remembered by the reader, so that the
        dead letter written then still says why it was given up. If the process dies
        between the two steps, the entry is dead-lettered twice (at least once).
        Returns False if Redis could not be told.
        """
        runtime = self.runtime
        stream = delivery.binding.stream
        why = {
            "reason": wire_text(reason),
            "error_type": type(error).__name__ if error is not None else "",
            "error_message": error_text(error) if error is not None else "",
        }
        why = self.reader.unwritten.pop((stream, delivery.id), why)
        raw = delivery.fields.get(ENVELOPE_FIELD)
        fields = {
            "id": delivery.id,
            "agent": self.spec.name,
            **why,
            "delivery_count": str(delivery.delivery_count),
            "failed_at": repr(time.time()),
            "consumer": self.reader.consumer,
            **kept_envelope(
                raw if isinstance(raw, str) else dumps(delivery.fields),
                runtime.settings.max_message_size,
            ),
        }
        token = current_message_id.set(delivery.id)
        try:
            await runtime.client.xadd(
                runtime.keys.dead(self.spec.name),
                fields,
                maxlen=runtime.settings.dead_letter_maxlen,
            )
        except RedisError as exc:
            self.reader.remember_unwritten(stream, delivery.id, why)
            self.log.warning("could not dead-letter (%s); it stays pending: %s", exc, why["reason"])
            return False
        else:
            runtime.acker.ack(stream, delivery.id)
            self.counters.dead_lettered += 1
            self.log.error("dead-lettered: %s", why["reason"], exc_info=error)
            return True
        finally:
            current_message_id.reset(token)
            delivery.binding.held.pop(delivery.id, None)

    async def _handle_broadcast(self, message: Message) -> None:
        counters = self.counters
        counters.received += 1
        token = current_message_id.set(message.id)
        started = time.perf_counter()
        try:
            await self._call(message)
        except Exception as exc:
            counters.failed += 1
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

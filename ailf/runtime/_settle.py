"""Settling mailbox entries: what becomes of an entry once its instance is done with it.

The cell runs the handler and reports how it went; the :class:`Settler` decides what
becomes of the entry, and tells Redis:

- **returned**, on a ``send()``: acknowledged; on an ``ask()``: the reply published and
  the request acknowledged;
- **raised**, on a ``send()``: delivered again after a backoff, and after
  ``max_deliveries`` deliveries written to the dead letters; on an ``ask()``: the asker
  gets a RemoteError and the request is acknowledged (the asker knows, and decides
  whether to ask again);
- **refused** (the entry is not a message the handler may see: undecodable, too large,
  a ``reply_to`` outside the namespace, delivered too often without finishing): written
  to the dead letters;
- cancelled (shutdown past the grace period, a crash): nothing is reported, and nothing
  happens; the entry stays pending and is delivered again.

An entry is acknowledged in one of three ways, each for a reason:

1. **batched** (:class:`~ailf.runtime._acker.Acker`), for a handled ``send()``: one XACK
   per mailbox carries every id handled meanwhile, so acking costs a fraction of a round
   trip per message;
2. **with the reply**, for an ``ask()``: PUBLISH and XACK in one pipeline, one round
   trip, so that the asker's answer waits for no batch;
3. **after the dead letter**: XADD to the dead letters, then the batched XACK — two
   steps, never one MULTI (see :meth:`Settler.refused`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ailf.codec import dumps
from ailf.errors import DecodeError, RedisError
from ailf.runtime._agent import AgentLog, current_message_id
from ailf.runtime._host import HostContext
from ailf.runtime._keys import GROUP, Address
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

__all__ = ["Binding", "Delivery", "Refused", "Settler", "vet"]

#: How many failed dead-letter writes a settler remembers the reasons of.
_UNWRITTEN_LIMIT = 1024


@attrs.define(eq=False)
class Binding:
    """One agent instance's hold on its mailbox: the entries it holds, and what settling
    them needs to know of the instance. Made by the instance, read by one reader."""

    #: The mailbox's stream, dead letters, doorbell and timers.
    address: Address
    agent: str
    claim_idle: float
    max_deliveries: int
    #: Queues an entry to the instance (never blocks).
    deliver: Callable[[Delivery], None]
    log: AgentLog
    counters: Counters
    #: Entry ids held here (queued, being handled, waiting for a retry) -> since when.
    held: dict[str, float] = attrs.field(factory=dict)
    #: Of those, the ids waiting for a retry.
    retrying: set[str] = attrs.field(factory=set)
    #: False once the instance stopped taking entries.
    active: bool = True
    #: True for a keyed agent's partition: read by its lease holder alone, so never
    #: claimed from other consumers, and its pending entries are read first on binding
    #: (the holder claimed them from the previous one).
    owned: bool = False

    @property
    def stream(self) -> str:
        return self.address.mailbox

    @property
    def dead(self) -> str:
        return self.address.dead


@attrs.frozen
class Delivery:
    """A mailbox entry handed to an instance, with Redis's delivery count."""

    binding: Binding
    id: str
    fields: dict[str, Any]
    delivery_count: int


class Refused(Exception):
    """A mailbox entry the handler may not see; the text says why."""


def vet(delivery: Delivery, host: HostContext, max_deliveries: int) -> Message[Any]:
    """The entry as a message for the handler; :class:`Refused` says why it is not one
    the handler may see (it then goes to the dead letters, unhandled)."""
    raw = delivery.fields.get(ENVELOPE_FIELD)
    limit = host.settings.max_message_size
    if isinstance(raw, str) and too_large(raw, limit):
        raise Refused(f"envelope larger than max_message_size={limit}")
    try:
        message = decode_envelope(
            raw, message_id=delivery.id, delivery_count=delivery.delivery_count
        )
    except DecodeError as exc:
        raise Refused(f"undecodable: {exc}") from None
    keys = host.keys
    if message.reply_to is not None and not keys.is_reply(message.reply_to):
        raise Refused(
            f"refused: reply_to {message.reply_to[:120]!r} is not a reply inbox of"
            f" namespace {keys.namespace!r} (a channel {keys.reply('...')!r})"
        )
    if delivery.delivery_count > max_deliveries:
        raise Refused(
            f"delivered {delivery.delivery_count} times (max_deliveries={max_deliveries})"
            " without its handler finishing: the process handling it died or was stopped"
        )
    return message


class Settler:
    """Settles the entries of every instance that reads through one consumer.

    Retries are scheduled here and redelivered by the consumer's reader, which asks
    :meth:`due` for them (``wake`` interrupts its blocked read when one is scheduled).
    """

    def __init__(self, host: HostContext, consumer: str, wake: Callable[[], None]) -> None:
        self._client = host.client
        self._acker = host.acker
        self._settings = host.settings
        self._observer = host.observer
        self._consumer = consumer
        self._wake = wake
        #: (due, sequence, delivery, backoff) of each retry, soonest first.
        self._retries: list[tuple[float, int, Delivery, float]] = []
        self._sequence = itertools.count()
        #: (stream, entry id) -> why it was given up, for entries whose dead letter
        #: could not be written; bounded, oldest forgotten first.
        self.unwritten: dict[tuple[str, str], dict[str, str]] = {}

    # -- what an instance reports ------------------------------------------------------

    async def returned(self, delivery: Delivery, message: Message[Any], result: Any) -> None:
        """The handler returned ``result``: answer the asker, if any, and acknowledge."""
        if message.reply_to is None:
            self.ack(delivery.binding, delivery.id)
        else:
            await self._reply_and_ack(delivery, message, result)

    async def raised(self, delivery: Delivery, message: Message[Any], error: Exception) -> None:
        """The handler raised ``error``: answer the asker, or retry, or give up."""
        binding = delivery.binding
        token = current_message_id.set(delivery.id)
        try:
            if message.reply_to is not None:
                binding.log.warning(
                    "handler raised %s: %s (answered to the asker as RemoteError)",
                    type(error).__name__,
                    error,
                )
                await self._reply_and_ack(delivery, message, error=error)
            elif delivery.delivery_count >= binding.max_deliveries:
                await self.refused(
                    delivery,
                    f"handler failed on delivery {delivery.delivery_count} of"
                    f" {binding.max_deliveries}",
                    error,
                )
            else:
                binding.counters.retried += 1
                delay = self.retry(delivery)
                self._observer.retried(binding.agent, delivery.delivery_count, delay)
                binding.log.warning(
                    "handler raised %s: %s (delivery %d of %d; retrying in %.2f s)",
                    type(error).__name__,
                    error,
                    delivery.delivery_count,
                    binding.max_deliveries,
                    delay,
                )
        finally:
            current_message_id.reset(token)

    async def refused(
        self, delivery: Delivery, reason: str, error: Exception | None = None
    ) -> bool:
        """Move ``delivery`` to the dead letters: XADD it there, then acknowledge it.

        Two steps, not one MULTI: inside a transaction a failing XADD (the dead-letter
        key holding a string, Redis out of memory) does not stop the XACK after it, and
        the message would be gone without a trace. If the XADD fails, the entry stays
        pending and comes back; the reason is remembered here, so that the dead letter
        written then still says why it was given up. If the process dies between the
        two steps, the entry is dead-lettered twice (at least once). Returns False if
        Redis could not be told.
        """
        binding = delivery.binding
        stream = binding.stream
        why = {
            "reason": wire_text(reason),
            "error_type": type(error).__name__ if error is not None else "",
            "error_message": error_text(error) if error is not None else "",
        }
        why = self.unwritten.pop((stream, delivery.id), why)
        raw = delivery.fields.get(ENVELOPE_FIELD)
        fields = {
            "id": delivery.id,
            "agent": binding.agent,
            **why,
            "delivery_count": str(delivery.delivery_count),
            "failed_at": repr(time.time()),
            "consumer": self._consumer,
            **kept_envelope(
                raw if isinstance(raw, str) else dumps(delivery.fields),
                self._settings.max_message_size,
            ),
        }
        token = current_message_id.set(delivery.id)
        try:
            await self._client.xadd(
                binding.dead,
                fields,
                maxlen=self._settings.dead_letter_maxlen,
            )
        except RedisError as exc:
            self._remember_unwritten(stream, delivery.id, why)
            binding.log.warning(
                "could not dead-letter (%s); it stays pending: %s", exc, why["reason"]
            )
            return False
        else:
            self._acker.ack(stream, delivery.id)
            binding.counters.dead_lettered += 1
            self._observer.dead_lettered(binding.agent, why["reason"])
            binding.log.error("dead-lettered: %s", why["reason"], exc_info=error)
            return True
        finally:
            current_message_id.reset(token)
            binding.held.pop(delivery.id, None)

    def ack(self, binding: Binding, entry_id: str) -> None:
        """Acknowledge an entry (in the next batch) and let go of it."""
        self._acker.ack(binding.stream, entry_id)
        binding.held.pop(entry_id, None)

    async def _reply_and_ack(
        self,
        delivery: Delivery,
        message: Message[Any],
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
        binding = delivery.binding
        try:
            text = encode_reply(message.correlation, result, error, agent=binding.agent)
        except DecodeError as exc:  # the return value is not JSON: the asker gets why
            binding.log.warning("could not encode the reply (%s); answering with the error", exc)
            text = encode_reply(message.correlation, error=exc, agent=binding.agent)
        pipe = self._client.pipeline(transaction=False)
        pipe.publish(message.reply_to, text)
        pipe.xack(binding.stream, GROUP, delivery.id)
        try:
            published, acked = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            published = acked = exc
        if isinstance(published, Exception):
            binding.log.warning("could not send the reply to %s: %s", message.reply_to, published)
        if isinstance(acked, Exception):
            self._acker.ack(binding.stream, delivery.id)
        binding.held.pop(delivery.id, None)

    def _remember_unwritten(self, stream: str, entry_id: str, why: dict[str, str]) -> None:
        self.unwritten[(stream, entry_id)] = why
        if len(self.unwritten) > _UNWRITTEN_LIMIT:
            del self.unwritten[next(iter(self.unwritten))]

    # -- retries ------------------------------------------------------------------------

    def retry(self, delivery: Delivery) -> float:
        """Have ``delivery`` delivered again after a backoff; returns the backoff.

        The backoff grows per delivery (``retry_backoff``, doubling, at most
        ``retry_backoff_max``) and stays under half of ``claim_idle``, so that the entry
        is redelivered here before another replica may claim it.
        """
        binding = delivery.binding
        delay = min(
            self._settings.redelivery.delay(delivery.delivery_count - 1), binding.claim_idle / 2
        )
        binding.retrying.add(delivery.id)
        due = trio.current_time() + delay
        heapq.heappush(self._retries, (due, next(self._sequence), delivery, delay))
        self._wake()
        return delay

    def due(self, now: float) -> list[tuple[Delivery, float]]:
        """The retries due by ``now``, each with the backoff it waited; no longer
        scheduled once returned."""
        found = []
        while self._retries and self._retries[0][0] <= now:
            _, _, delivery, delay = heapq.heappop(self._retries)
            delivery.binding.retrying.discard(delivery.id)
            found.append((delivery, delay))
        return found

    def next_due(self) -> float | None:
        """When the soonest retry falls due (None: none scheduled)."""
        return self._retries[0][0] if self._retries else None

    def retries_pending(self, stream: str) -> bool:
        return any(item[2].binding.stream == stream for item in self._retries)

"""Keyed agents in one process: the partitions it holds, and the keys active in it.

A keyed agent is one agent per entity — a chat user, an order, a document — addressed
by ``(name, key)``. Its keys are spread over a fixed number of partitions
(:mod:`ailf.runtime._partitions`); each partition is one stream read by one process at
a time, the holder of its lease. A :class:`KeyedHost` is what one process runs for one
keyed agent:

- **balancing**: every third of the lease time it says it is alive (a sorted set of
  hosts), computes its fair share of partitions from the live hosts, renews the leases
  it holds, gives back those no longer its share (after their handlers finish), and
  takes those that are free. Taking a partition first claims every entry still pending
  in it (a dead holder's, in stream order), so the new holder handles them before
  anything newer: per-key order holds across a takeover.
- **activation**: a key's instance (an ``Agent`` with ``self.key`` and ``self.state``)
  is made, its state loaded and ``on_start`` run when the key's first message arrives;
  after ``passivate_after`` seconds without one, ``on_stop`` runs and it is dropped.
  Memory holds only active keys.
- **one handler per key**: the messages of a key queue behind each other and are handled
  one at a time by whichever worker took the key, so a key's messages run in order and
  never concurrently; different keys run on ``replicas`` workers at once.
- **state saved with the ack**: a handled message's state, its acknowledgement and its
  reply are written by one script, on the partition's slot, only while this process
  still holds the lease (its fencing token). A failing handler is retried in place,
  before the key's next message, with the state as it was before the message.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from typing import Any

import attrs
import trio

from ailf.errors import DecodeError, RedisError
from ailf.runtime._agent import (
    Agent,
    AgentLog,
    current_message_id,
    handler_of,
    is_sync_handler,
)
from ailf.runtime._host import HostContext
from ailf.runtime._keys import GROUP, PartitionKeys
from ailf.runtime._mailbox import create_group
from ailf.runtime._message import Message, encode_reply
from ailf.runtime._partitions import COMMIT, RELEASE, RENEW, fair_share, partition_of
from ailf.runtime._reader import MailboxReader
from ailf.runtime._settle import Binding, Delivery, Refused, vet
from ailf.runtime._spawn import SpawnSpec
from ailf.runtime._state import dump_state, load_state
from ailf.runtime._statistics import Counters

__all__ = ["KeyedHost"]

_logger = logging.getLogger("ailf.agent")

#: Of its lease time, how long a holder trusts its lease after the renewal was sent
#: (its clock and Redis's may drift; it stops handling the partition before Redis
#: could give it to someone else).
_TRUSTED = 0.8
#: Messages of one key a worker handles before letting other keys' workers go first.
_TURN = 16


@attrs.define(eq=False)
class _Partition:
    number: int
    keys: PartitionKeys
    token: str
    binding: Binding
    #: Until when (trio clock) this process may act on it.
    valid_until: float
    #: Keys of this partition being handled now.
    running: int = 0


@attrs.define(eq=False)
class _Activation:
    key: str
    agent: Agent
    #: The state's JSON as last saved (None: never saved, or no state type).
    saved: str | None
    last_used: float
    #: The lease token it was activated under: once the partition changed hands, its
    #: state may be stale, and the instance is made anew.
    token: str


class _KeyContext:
    """What a keyed instance may ask of the runtime side: it has no topics and no
    background tasks of its own (it comes and goes with its key's messages)."""

    def __init__(self, host: KeyedHost, key: str) -> None:
        self._host = host
        self._key = key

    async def subscribe(self, topic: str) -> None:
        raise RuntimeError(
            "a keyed agent's instances come and go with their keys' messages and hear no"
            " broadcasts; subscribe a named agent and send on to the keys from it"
        )

    unsubscribe = subscribe

    def start_task(self, async_fn: Any, *args: Any) -> None:
        raise RuntimeError(
            "a keyed agent's instances come and go with their keys' messages and have no"
            " background tasks; run them in a named agent"
        )

    def request_stop(self, *, normal: bool) -> None:
        """Passivate this key once its current message is done."""
        self._host.passivate_soon(self._key)


class KeyedHost:
    """One keyed agent in one process (see the module docstring)."""

    def __init__(
        self,
        host: HostContext,
        spec: SpawnSpec,
        reader: MailboxReader,
        counters: Counters,
        *,
        partitions: int,
        workers: int,
        member: str,
        stateful: bool = False,
    ) -> None:
        self.host = host
        self.spec = spec
        self.reader = reader
        self.counters = counters
        self.partitions = partitions
        self.workers = workers
        self.member = member
        #: A named agent with state: one partition, its mailbox, one key (its name).
        self.stateful = stateful
        self.name = spec.name
        cls = spec.agent_cls
        self.state_type = cls.state_type
        self.lease_time = spec.claim_idle
        self.log = AgentLog(_logger, {"agent": spec.name, "replica": "*"})
        self._client = host.client
        self._settler = reader.settler
        self._sync = is_sync_handler(cls)
        self._owned: dict[int, _Partition] = {}
        self._queues: dict[str, deque[tuple[Delivery, Message[Any]]]] = {}
        self._ready: deque[str] = deque()
        self._running: set[str] = set()
        self._active: OrderedDict[str, _Activation] = OrderedDict()
        self._refusals: deque[tuple[Delivery, str]] = deque()
        self._to_passivate: set[str] = set()
        self._lot = trio.lowlevel.ParkingLot()
        #: Unparked whenever a worker finishes with a key (for those waiting on handlers).
        self._settled = trio.lowlevel.ParkingLot()
        self._queued = 0
        self._high_water = 4 * host.settings.batch_size
        self._full = False
        self._closing = False
        self._stopped = trio.Event()
        self._tokens = 0

    # -- observing ------------------------------------------------------------------

    @property
    def owned(self) -> list[int]:
        """The partitions this process holds now."""
        return sorted(self._owned)

    @property
    def active_keys(self) -> int:
        return len(self._active)

    def busy(self) -> bool:
        return bool(self._queued or self._running or self._refusals)

    # -- lifetime -------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking messages; handlers in flight get the grace period, then every
        partition is given back and every key passivated."""
        if self._closing:
            return
        self._closing = True
        for part in self._owned.values():
            self.reader.unbind(part.binding)
        self._drop_queued(None)
        self._lot.unpark_all()
        self._stopped.set()

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Balance, activate and handle until :meth:`request_stop`; then hand over."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._worker)
                nursery.start_soon(self._passivator)
                await self._balance_safely()
                task_status.started()
                while not self._closing:
                    with trio.move_on_after(self.lease_time / 3):
                        await self._stopped.wait()
                    if not self._closing:
                        await self._balance_safely()
                with trio.move_on_after(self.host.grace_period):
                    while self._running:
                        await self._settled.park()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.host.grace_period):
                await self._hand_over()

    async def _hand_over(self) -> None:
        """Passivate every key, flush the acks, give every lease back, leave the hosts."""
        for key in list(self._active):
            await self._passivate(key)
        try:
            await self.host.acker.flush()
            for part in list(self._owned.values()):
                await RELEASE(self._client, [part.keys.lease], [part.token])
            await self._client.execute_command(
                "ZREM", self.host.keys.members(self.name), self.member
            )
        except RedisError as exc:
            self.log.warning("could not give the partitions back (%s); their leases expire", exc)
        self._owned.clear()

    # -- balancing ------------------------------------------------------------------

    async def _balance_safely(self) -> None:
        try:
            await self._balance()
        except RedisError as exc:
            self.log.warning("balancing partitions: %s; trying again", exc)
        now = trio.current_time()
        for part in list(self._owned.values()):
            if part.valid_until < now:
                self.log.warning(
                    "partition %d: lease not renewed in time; handling nothing of it",
                    part.number,
                )
                self._lose(part)

    async def _balance(self) -> None:
        keys = self.host.keys
        members_key = keys.members(self.name)
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        pipe.execute_command("ZADD", members_key, now, self.member)
        pipe.execute_command("ZREMRANGEBYSCORE", members_key, "-inf", now - self.lease_time)
        pipe.execute_command("ZRANGE", members_key, 0, -1)
        *_, live = await pipe.execute()
        members = sorted({*live, self.member})
        share = fair_share(self.partitions, members)[self.member]
        sent = trio.current_time()
        async with trio.open_nursery() as nursery:
            for part in list(self._owned.values()):
                if part.number in share:
                    nursery.start_soon(self._guarded, self._renew, part, sent)
                else:
                    nursery.start_soon(self._guarded, self._release, part)
            for number in sorted(share - set(self._owned)):
                nursery.start_soon(self._guarded, self._acquire, number)

    async def _guarded(self, step: Any, *args: Any) -> None:
        """One partition's step of a balancing round; a Redis error is logged and the
        next round tries again (the other partitions' steps go on)."""
        try:
            await step(*args)
        except RedisError as exc:
            self.log.warning("balancing partitions (%s): %s", step.__name__.strip("_"), exc)

    async def _renew(self, part: _Partition, sent: float) -> None:
        renewed = await RENEW(
            self._client, [part.keys.lease], [part.token, int(self.lease_time * 1000)]
        )
        if renewed:
            part.valid_until = sent + _TRUSTED * self.lease_time
        elif self._owned.get(part.number) is part:
            self.log.warning("partition %d: lease lost to another process", part.number)
            self._lose(part)

    async def _acquire(self, number: int) -> None:
        """Take partition ``number`` if its lease is free: claim what is pending there
        (a previous holder's), then read it, pending entries first."""
        pkeys = self._keys_of(number)
        self._tokens += 1
        token = f"{self.member}/{self._tokens}"
        sent = trio.current_time()
        taken = await self._client.set(pkeys.lease, token, px=int(self.lease_time * 1000), nx=True)
        if not taken or self._closing:
            if taken:
                await RELEASE(self._client, [pkeys.lease], [token])
            return
        await create_group(self._client, pkeys.mailbox)
        cursor = "0-0"
        consumer = self.reader.consumer
        while True:
            cursor, *_ = await self._client.execute_command(
                "XAUTOCLAIM", pkeys.mailbox, GROUP, consumer, 0, cursor, "COUNT", 1000, "JUSTID"
            )
            if cursor == "0-0":
                break
        binding = Binding(
            address=pkeys.address,
            agent=self.name,
            claim_idle=self.lease_time,
            max_deliveries=self.spec.agent_cls.max_deliveries,
            deliver=self._deliver,
            log=self.log,
            counters=self.counters,
            owned=True,
        )
        part = _Partition(number, pkeys, token, binding, sent + _TRUSTED * self.lease_time)
        self._owned[number] = part
        self.reader.bind(binding)
        if self._full:
            self.reader.set_full(binding, True)
        self.log.debug("partition %d: taken", number)

    async def _release(self, part: _Partition) -> None:
        """Give a partition back to the host whose share it now is: stop reading it,
        let its handlers finish, flush its acks, then free the lease."""
        self._forget(part)
        with trio.move_on_after(self.host.grace_period):
            while part.running:
                await self._settled.park()
        for key in [k for k in self._active if self._partition(k) == part.number]:
            await self._passivate(key)
        await self.host.acker.flush()
        await RELEASE(self._client, [part.keys.lease], [part.token])
        self.log.debug("partition %d: given back", part.number)

    def _lose(self, part: _Partition) -> None:
        """The lease is gone (or may be): stop at once; what is pending stays for the
        next holder, and in-flight commits fail on the token."""
        part.valid_until = -math.inf
        self._forget(part)
        for key in [k for k in self._active if self._partition(k) == part.number]:
            self.passivate_soon(key)

    def _forget(self, part: _Partition) -> None:
        if self._owned.get(part.number) is part:
            del self._owned[part.number]
        self.reader.unbind(part.binding)
        self._drop_queued(part.number)

    def _drop_queued(self, number: int | None) -> None:
        """Forget the queued messages (of one partition, or all): they stay pending in
        Redis, for whoever holds the partition next."""
        for key in list(self._queues):
            if number is None or self._partition(key) == number:
                self._queued -= len(self._queues.pop(key))
        self._ready = deque(key for key in self._ready if key in self._queues)

    def _partition(self, key: str) -> int:
        return partition_of(key, self.partitions)

    def _keys_of(self, number: int) -> PartitionKeys:
        keys = self.host.keys
        return keys.stateful(self.name) if self.stateful else keys.partition(self.name, number)

    # -- fed by the reader (synchronous) ---------------------------------------------

    def _deliver(self, delivery: Delivery) -> None:
        try:
            message = vet(delivery, self.host, delivery.binding.max_deliveries)
            key = self.name if self.stateful else message.key
            if key is None:
                raise Refused(f"no 'key' in the envelope: {self.name!r} is a keyed agent")
            number = self._partition(key)
            if delivery.binding.stream != self._keys_of(number).mailbox:
                raise Refused(
                    f"key {key[:80]!r} belongs to partition {number} of {self.partitions},"
                    " not to the one it was added to"
                )
        except Refused as refused:
            self._refusals.append((delivery, str(refused)))
            self._lot.unpark()
            return
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if key not in self._running:
                self._ready.append(key)
                self._lot.unpark()
        queue.append((delivery, message))
        self._queued += 1
        if not self._full and self._queued >= self._high_water:
            self._set_full(True)

    def _set_full(self, full: bool) -> None:
        self._full = full
        for part in self._owned.values():
            self.reader.set_full(part.binding, full)

    # -- workers --------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            if self._refusals:
                delivery, why = self._refusals.popleft()
                await self._settler.refused(delivery, why)
            elif self._ready:
                key = self._ready.popleft()
                self._running.add(key)
                try:
                    await self._serve(key)
                finally:
                    self._running.discard(key)
                    self._settled.unpark_all()
                    if key in self._to_passivate:
                        await self._passivate(key)
                    if self._queues.get(key):
                        self._ready.append(key)
                        self._lot.unpark()
            elif self._closing:
                return
            else:
                await self._lot.park()

    async def _serve(self, key: str) -> None:
        """Handle up to :data:`_TURN` queued messages of ``key``, in order."""
        queue = self._queues.get(key)
        part = self._owned.get(self._partition(key))
        if not queue or part is None:
            return
        part.running += 1
        try:
            for _ in range(_TURN):
                if not queue or not queue[0][0].binding.active:
                    break
                delivery, message = queue.popleft()
                self._queued -= 1
                if self._full and self._queued <= self._high_water // 2:
                    self._set_full(False)
                if not await self._handle(key, part, delivery, message):
                    break
        finally:
            part.running -= 1
            if not queue:
                self._queues.pop(key, None)

    async def _activation(self, key: str, part: _Partition) -> _Activation:
        """The key's instance, made if it is not active under this lease: its state
        loaded, ``on_start`` run (what either raises fails the message at hand)."""
        activation = self._active.get(key)
        if activation is not None:
            if activation.token == part.token:
                activation.last_used = trio.current_time()
                self._active.move_to_end(key)
                return activation
            await self._passivate(key)
        while len(self._active) >= self.spec.agent_cls.max_active_keys:
            idle = next((k for k in self._active if k not in self._running), None)
            if idle is None:
                break
            await self._passivate(idle)
        agent = self.spec.instance(
            self.host.runtime,
            0,
            AgentLog(_logger, {"agent": self.name, "replica": key}),
            _KeyContext(self, key),
            key=None if self.stateful else key,
        )
        saved: str | None = None
        if self.state_type is not None:
            saved = await self._client.hget(part.keys.state, key)
            agent.state = load_state(self.state_type, saved, agent.log)
        await agent.on_start()
        activation = _Activation(key, agent, saved, trio.current_time(), part.token)
        self._active[key] = activation
        self.counters.active_keys = len(self._active)
        return activation

    def passivate_soon(self, key: str) -> None:
        """Passivate ``key`` once no worker handles it."""
        if key in self._running:
            self._to_passivate.add(key)

    async def _passivate(self, key: str) -> None:
        self._to_passivate.discard(key)
        activation = self._active.pop(key, None)
        if activation is None:
            return
        self.counters.active_keys = len(self._active)
        with trio.move_on_after(self.host.grace_period):
            try:
                await activation.agent.on_stop()
            except Exception as exc:
                self.log.warning("key %r: on_stop raised %s: %s", key, type(exc).__name__, exc)

    async def _passivator(self) -> None:
        idle_after = self.spec.agent_cls.passivate_after
        while True:
            await trio.sleep(min(1.0, idle_after / 4))
            cutoff = trio.current_time() - idle_after
            for key, activation in list(self._active.items()):
                if activation.last_used > cutoff:
                    break  # least recently used first: the rest are more recent
                if key not in self._running and key not in self._queues:
                    await self._passivate(key)

    # -- handling -------------------------------------------------------------------

    async def _handle(
        self, key: str, part: _Partition, delivery: Delivery, message: Message[Any]
    ) -> bool:
        """Handle one message, retrying in place; False if the partition was lost."""
        counters = self.counters
        log = self.log
        max_deliveries = delivery.binding.max_deliveries
        attempt = delivery.delivery_count
        while True:
            with self.host.observer.handling(self.name, message) as handling:
                counters.received += 1
                token = current_message_id.set(delivery.id)
                started = time.perf_counter()
                activation = None
                try:
                    activation = await self._activation(key, part)
                    log = activation.agent.log
                    result = await handler_of(activation.agent, self._sync)(message)
                except Exception as exc:
                    counters.handler_finished(time.perf_counter() - started)
                    counters.failed += 1
                    handling.failed(exc)
                    if activation is not None:
                        self._restore(activation)
                    if message.reply_to is not None and activation is not None:
                        log.warning(
                            "handler raised %s: %s (answered to the asker as RemoteError)",
                            type(exc).__name__,
                            exc,
                        )
                        return await self._commit(part, activation, delivery, message, error=exc)
                    if attempt >= max_deliveries:
                        await self._settler.refused(
                            delivery,
                            f"handler failed on delivery {attempt} of {max_deliveries}",
                            exc,
                        )
                        return True
                    delay = self.host.settings.redelivery.delay(attempt - 1)
                    log.warning(
                        "handler raised %s: %s (delivery %d of %d; retrying in %.2f s, before"
                        " the key's next message)",
                        type(exc).__name__,
                        exc,
                        attempt,
                        max_deliveries,
                        delay,
                    )
                    counters.retried += 1
                    self.host.observer.retried(self.name, attempt, delay)
                else:
                    counters.handler_finished(time.perf_counter() - started)
                    counters.processed += 1
                    counters.mailbox_processed += 1
                    return await self._commit(part, activation, delivery, message, result=result)
                finally:
                    current_message_id.reset(token)
            attempt += 1
            message = attrs.evolve(message, delivery_count=attempt)
            await trio.sleep(delay)
            if not delivery.binding.active:
                return False

    def _restore(self, activation: _Activation) -> None:
        """Put the state back as it was saved (a failed handler's changes are undone)."""
        if self.state_type is not None:
            activation.agent.state = load_state(
                self.state_type, activation.saved, activation.agent.log
            )

    async def _commit(
        self,
        part: _Partition,
        activation: _Activation,
        delivery: Delivery,
        message: Message[Any],
        result: Any = None,
        error: Exception | None = None,
    ) -> bool:
        """Save the state, acknowledge and answer, in one script under the lease.

        A message of a stateless agent that no one waits for is acknowledged in the
        next batch instead (nothing to keep atomic with). The script is idempotent —
        the same state written again, an XACK of an acknowledged entry, a reply the
        asker already has (it drops it) — so a commit whose outcome is unknown (the
        connection broke) is simply sent again, for as long as the lease is trusted.
        """
        binding = delivery.binding
        key = activation.key
        if self.state_type is None and message.reply_to is None:
            self._settler.ack(binding, delivery.id)
            return True
        text = activation.saved
        change = ""
        if self.state_type is not None and error is None:
            text = dump_state(activation.agent.state)
            if text != activation.saved:
                change = "s"
        channel = reply = ""
        if message.reply_to is not None:
            assert message.correlation is not None
            channel = message.reply_to
            try:
                reply = encode_reply(message.correlation, result, error, agent=self.name)
            except DecodeError as exc:  # the return value is not JSON: the asker gets why
                reply = encode_reply(message.correlation, error=exc, agent=self.name)
        args = [part.token, GROUP, delivery.id, key, change, text or "", channel, reply]
        failures = 0
        while trio.current_time() < part.valid_until:
            try:
                committed = await COMMIT(
                    self._client, [part.keys.lease, part.keys.state, binding.stream], args
                )
            except RedisError as exc:
                failures += 1
                activation.agent.log.warning("could not commit (%s); trying again", exc)
                await trio.sleep(self.host.settings.read_retry.delay(failures))
                continue
            if committed:
                activation.saved = text
                binding.held.pop(delivery.id, None)
                return True
            break
        activation.agent.log.warning(
            "partition %d: lease lost before the commit; the message is left to the next holder",
            part.number,
        )
        if self._owned.get(part.number) is part:
            self._lose(part)
        return False

"""The :class:`Runtime`: a trio nursery that runs agents, and the client to talk to them.

``async with Runtime(config, namespace="demo") as runtime:`` connects (one shared
command connection, one pub/sub connection, one blocking connection per mailbox reader
— usually one), registers the process, and runs whatever is spawned until the block
ends. A runtime that spawns nothing is just a client: ``send``, ``ask``, ``publish``,
``dead_letters``, ``registry``.

Shutdown is graceful whichever way it comes — the block ends, ``runtime.stop()`` is
called, a signal arrives (``handle_signals=True`` or :meth:`Runtime.run_forever`), or an
agent escalates: reading stops, in-flight handlers get ``grace_period`` seconds to
finish, what finished is acknowledged, what did not stays pending for other replicas,
``on_stop`` runs, the process leaves the registry and the connections close. A second
signal forces: everything is cancelled at once (nothing is lost either; unacknowledged
entries stay pending).
"""

from __future__ import annotations

import datetime
import functools
import itertools
import logging
import math
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import sniffio
import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.clients._errors import raise_reply_error
from ailf.codec import loads
from ailf.config import RedisConfig, given_or_from_env
from ailf.errors import ConfigError, EscalationError, NotReplicated, RedisError
from ailf.observability import NO_OBSERVER, ObservabilitySettings, Observer
from ailf.runtime._acker import Acker
from ailf.runtime._admission import MailboxGate
from ailf.runtime._agent import Agent
from ailf.runtime._broadcast import BroadcastHub, ReplyInbox, bell_command
from ailf.runtime._cell import Cell
from ailf.runtime._host import HostContext
from ailf.runtime._keyed import KeyedHost
from ailf.runtime._keys import Address, Keys, check_name
from ailf.runtime._mailbox import busy, delete_idle_consumers, open_mailbox
from ailf.runtime._message import ENVELOPE_FIELD, DeadLetter, encode_envelope
from ailf.runtime._observe import make_observer, serve_metrics, stop_metrics
from ailf.runtime._partitions import (
    DEFAULT_PARTITIONS,
    DESCRIBE,
    MARK_STATEFUL,
    check_key,
    check_partitions,
    partition_of,
)
from ailf.runtime._reader import MailboxReader
from ailf.runtime._reader_pool import ReaderPool
from ailf.runtime._registry import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TTL_INTERVALS,
    Heartbeat,
    RegistrySnapshot,
    heartbeat_fields,
    read_registry,
    write_heartbeat,
)
from ailf.runtime._settings import MailboxSettings, check_setting
from ailf.runtime._spawn import SpawnSpec, spawn_spec
from ailf.runtime._state import load_state
from ailf.runtime._statistics import AgentStatistics, Counters
from ailf.runtime._supervisor import Supervisor, unwrap
from ailf.runtime._timekeeper import Timekeeper
from ailf.runtime._timers import (
    Recurrence,
    Reminder,
    TimerId,
    cancel,
    due_ms,
    list_reminders,
    reminder_field,
    reminder_value,
    schedule,
)

__all__ = ["Runtime"]

log = logging.getLogger("ailf.runtime")

T = TypeVar("T")


class Runtime:
    """Runs agents on Redis; see the module docstring for the lifetime.

    ``config`` defaults to :meth:`RedisConfig.from_env`. Keyword arguments:

    - ``namespace``: the key prefix ``ailf:{namespace}:`` shared by everything.
    - ``grace_period``: seconds in-flight handlers (and each ``on_stop``) get at shutdown.
    - ``handle_signals``: stop gracefully on SIGINT/SIGTERM, force on the second one
      (main thread only; :meth:`run_forever` does this anyway).
    - ``batch_size``: entries per mailbox per read (and the per-instance queue's scale).
    - ``mailbox_maxlen``: approximate cap on a mailbox stream's length, applied by
      senders (None: no cap). Entries beyond it are trimmed even if unread — a warning
      is logged when that happens; acknowledged entries are trimmed by the readers.
    - ``dead_letter_maxlen``: approximate cap on each dead-letter stream.
    - ``max_message_size``: bytes; bigger envelopes are refused when sent
      (MessageTooLarge) and dead-lettered when received.
    - ``mailbox_limit``: backlog (unread plus pending entries) at which ``send`` and
      ``ask`` wait for room, up to ``send_timeout`` seconds, then raise MailboxFull
      (None, the default: no limit; see ailf/runtime/_admission.py).
    - ``heartbeat_interval``: seconds between registry heartbeats; the entry expires
      after ``HEARTBEAT_TTL_INTERVALS`` (3) of them (see ailf/runtime/_registry.py).
    - ``retry_backoff``/``retry_backoff_max``: seconds before redelivering a failed
      message, doubling per delivery.
    - ``stale_consumer_after``: seconds idle before a consumer holding nothing is
      deleted from a mailbox's group.
    - ``wait_replicas``: a ``send``/``ask`` returns only once this many replicas of the
      mailbox's primary have the message (Redis ``WAIT``), and raises
      :class:`~ailf.errors.NotReplicated` if fewer confirm within ``wait_timeout``
      seconds; 0 (the default) returns once the primary has it (see
      docs/reliability.md#replication).
    - ``tracing``: OpenTelemetry spans (None, the default: when a tracer provider is
      configured), ``metrics_port``/``metrics_host``: serve Prometheus metrics there,
      ``metrics_interval``: seconds between readings of the mailbox gauges (see
      :class:`~ailf.observability.ObservabilitySettings` and docs/observability.md).
    """

    def __init__(
        self,
        config: RedisConfig | None = None,
        *,
        namespace: str = "default",
        grace_period: float = 10.0,
        handle_signals: bool = False,
        batch_size: int = 128,
        mailbox_maxlen: int | None = 100_000,
        dead_letter_maxlen: int = 10_000,
        max_message_size: int = 1 << 20,
        mailbox_limit: int | None = None,
        send_timeout: float = 10.0,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        retry_backoff: float = 0.1,
        retry_backoff_max: float = 5.0,
        stale_consumer_after: float = 60.0,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        tracing: bool | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_interval: float = 5.0,
    ) -> None:
        check_setting("heartbeat_interval", heartbeat_interval)
        check_setting("grace_period", grace_period)
        check_setting("wait_timeout", wait_timeout)
        if type(wait_replicas) is not int or wait_replicas < 0:
            raise ConfigError(
                f"wait_replicas: expected an integer >= 0 (replicas that must confirm each"
                f" send), got {wait_replicas!r}"
            )
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.config = given_or_from_env(config, "Runtime")
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.grace_period = grace_period
        self.handle_signals = handle_signals
        self.heartbeat_interval = heartbeat_interval
        self.settings = MailboxSettings(
            batch_size=batch_size,
            mailbox_maxlen=mailbox_maxlen,
            dead_letter_maxlen=dead_letter_maxlen,
            max_message_size=max_message_size,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            stale_consumer_after=stale_consumer_after,
        )
        self.gate = MailboxGate(mailbox_limit, send_timeout)
        self.observability = ObservabilitySettings(
            tracing=tracing,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_interval=metrics_interval,
        )
        #: The hooks every part of the runtime calls (tracing, metrics); set at start.
        self.observer: Observer = NO_OBSERVER
        #: Where the metrics are served while the runtime runs (None: they are not).
        self.metrics_url: str | None = None
        self.host = socket.gethostname()
        self.pid = os.getpid()
        #: This runtime's id in the registry, and the prefix of its consumer names.
        # The host part as a name (an odd hostname must not make the id, which is in the
        # process's reply inbox, fail Keys.is_reply).
        host = re.sub(r"[^A-Za-z0-9_.\-]", "-", self.host) or "host"
        self.process_id = f"{host}:{self.pid}:{secrets.token_hex(3)}"
        self.started_at = 0.0
        self.stop_requested = trio.Event()
        self._heartbeat = Heartbeat(heartbeat_interval, self._beat)
        self._supervisor = Supervisor(self.stop_requested, self.escalate)
        self._client: AsyncRedisClient | None = None
        self.acker: Acker
        self.hub: BroadcastHub
        self._inbox: ReplyInbox
        self._readers: ReaderPool
        self._host_context: HostContext
        self._specs: dict[str, SpawnSpec] = {}
        #: Keyed agents hosted here, by name.
        self._keyed: dict[str, KeyedHost] = {}
        #: Keyed agent name -> its number of partitions, as read from Redis.
        self._partition_counts: dict[str, int] = {}
        self._counters: dict[str, Counters] = {}
        self._replica_numbers: dict[str, itertools.count[int]] = {}
        self._agents: trio.Nursery | None = None
        self._body: trio.CancelScope | None = None
        self._services: trio.Nursery | None = None
        self._root: trio.CancelScope | None = None
        self._escalation: EscalationError | None = None
        self._broadcast_ids = itertools.count(1)
        self._cm: AbstractAsyncContextManager[Runtime] | None = None

    def __repr__(self) -> str:
        return f"<Runtime {self.namespace!r} on {self.config.url} as {self.process_id}>"

    @property
    def cells(self) -> set[Cell]:
        """The agent instances running in this process now."""
        return self._supervisor.cells

    @property
    def stopping(self) -> bool:
        """True once the runtime has begun to stop (no more spawns, no more restarts)."""
        return self._supervisor.stopping

    @property
    def client(self) -> AsyncRedisClient:
        """The runtime's Redis client (for agents that need plain Redis commands too)."""
        if self._client is None:
            raise RuntimeError(
                "this Runtime is not running: use it inside `async with Runtime(...) as runtime:`"
            )
        return self._client

    # -- lifetime -------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        library = sniffio.current_async_library()
        if library != "trio":
            raise RuntimeError(
                f"the ailf Runtime runs on trio, not on {library}: start it with"
                " trio.run(main). From"
                " asyncio code, run it in a thread of its own —"
                " `await asyncio.to_thread(trio.run, main)` — or use trio-asyncio"
                " (see docs/concepts.md#trio-and-asyncio); the clients (AsyncRedisClient,"
                " AsyncRedisPubSub, AsyncRedisStream) work under asyncio directly"
            )
        if self._cm is not None:
            raise RuntimeError("a Runtime can be entered only once; make a new one")
        self._cm = self._lifecycle()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._cm is not None, "__aexit__ without __aenter__"
        return await self._cm.__aexit__(*exc_info)

    @asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[Runtime]:
        body_error: BaseException | None = None
        self.observer = make_observer(
            self.observability,
            self.namespace,
            lambda: list(self._counters.values()),
            lambda: self.client.reconnects,
        )
        try:
            with trio.CancelScope() as self._root:
                async with AsyncRedisClient(self.config) as client, trio.open_nursery() as services:
                    self._client = client
                    self._services = services
                    self.started_at = time.time()
                    self.acker = Acker(client)
                    self._inbox = ReplyInbox(self.keys.reply(self.process_id), self.namespace)
                    self.hub = BroadcastHub(client, self._inbox)
                    timekeeper = Timekeeper(client, self.hub, self.settings)
                    self._host_context = HostContext(
                        client=client,
                        keys=self.keys,
                        settings=self.settings,
                        acker=self.acker,
                        hub=self.hub,
                        grace_period=self.grace_period,
                        runtime=self,
                        observer=self.observer,
                        timekeeper=timekeeper,
                    )
                    self._readers = ReaderPool(self._host_context, self.process_id)
                    await services.start(self.hub.run)
                    await services.start(self.acker.run)
                    await services.start(timekeeper.run)
                    await services.start(self._readers.run)
                    await self._beat()
                    log.info(
                        "runtime %s started on %s, namespace %r",
                        self.process_id,
                        self.config.url,
                        self.namespace,
                    )
                    services.start_soon(self._heartbeat.run)
                    self.metrics_url = serve_metrics(
                        self.observer,
                        self.observability,
                        self.client,
                        self.keys,
                        lambda: list(self._specs),
                        services,
                    )
                    if self.handle_signals:
                        services.start_soon(self._watch_signals)
                    async with trio.open_nursery() as agents:
                        self._agents = agents
                        try:
                            with trio.CancelScope() as self._body:
                                yield self
                        except BaseException as exc:
                            body_error = exc
                            raise
                        finally:
                            self._begin_stop()
                            await self._supervisor.wait_all_done()
                    await self._leave()
                    log.info("runtime %s left the registry; closing", self.process_id)
                    services.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nurseries wrap whatever escapes in groups; give back the one exception
            # that caused it (the body's own, or e.g. a refused connection, which
            # cancelled the body) unwrapped.
            error = unwrap(group)
            caused_by_us = body_error is None or isinstance(body_error, trio.Cancelled)
            if error is body_error or (caused_by_us and isinstance(error, Exception)):
                raise error from None
            raise
        finally:
            stop_metrics(self.observer)
            self.metrics_url = None
        if self._escalation is not None:
            raise self._escalation

    def _begin_stop(self) -> None:
        """Stop reading and ask every instance to stop; the agents nursery then drains."""
        if not self.stopping and self.cells:
            busy = sum(cell.in_flight for cell in self.cells)
            log.info(
                "runtime %s stopping: %d instance(s), %d handler(s) in flight, given up to"
                " %.1f s to finish",
                self.process_id,
                len(self.cells),
                busy,
                self.grace_period,
            )
        self.stop_requested.set()
        self._heartbeat.stop()
        self._readers.stop()
        self._supervisor.stop_all()
        for keyed in self._keyed.values():
            keyed.request_stop()

    async def _leave(self) -> None:
        """After the agents stopped: send the last acks, drop idle consumers, unregister."""
        with trio.move_on_after(self.grace_period) as scope:
            scope.shield = True
            try:
                await self._unregister()
            except RedisError as exc:
                log.warning(
                    "could not unregister from Redis at %s (%s); the registry entry expires"
                    " by itself, and unacknowledged messages stay pending",
                    self.config.address,
                    exc,
                )

    async def _unregister(self) -> None:
        """Send the last acks, delete this process's consumers that hold nothing, and
        leave the registry."""
        await self.acker.flush()
        await delete_idle_consumers(
            self.client,
            [
                (self.keys.mailbox(name), reader.consumer)
                for name in self._specs
                for reader in self._readers
            ],
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.keys.process(self.process_id))
        pipe.execute_command("ZREM", self.keys.processes, self.process_id)
        await pipe.execute(raise_on_error=False)

    def stop(self) -> None:
        """Request a graceful stop: the ``async with`` body is cancelled (like a nursery's
        ``cancel_scope.cancel()``) and the runtime shuts down as described above. Safe
        to call from agents, from the body and more than once."""
        if self._body is not None:
            self._body.cancel()
        self.stop_requested.set()

    def escalate(self, error: EscalationError) -> None:
        """Stop the runtime because of ``error``, which its ``async with`` then raises."""
        if self._escalation is None:
            self._escalation = error
        self.stop()

    def _force(self) -> None:
        log.warning("forced stop: cancelling every agent now")
        if self._root is not None:
            self._root.cancel()

    async def run_forever(self) -> None:
        """Serve until :meth:`stop`, SIGINT/SIGTERM (graceful; a second one forces) or an
        escalation. Signals are handled only in the main thread."""
        if not self.handle_signals and threading.current_thread() is threading.main_thread():
            self.handle_signals = True
            assert self._services is not None
            self._services.start_soon(self._watch_signals)
        await trio.sleep_forever()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if not self.stopping and not self.stop_requested.is_set():
                    log.warning(
                        "%s: stopping gracefully (within %.1f s); send it again to force",
                        signal.Signals(signum).name,
                        self.grace_period,
                    )
                    self.stop()
                else:
                    self._force()

    def counters_for(self, name: str) -> Counters:
        counters = self._counters.get(name)
        if counters is None:
            counters = self._counters[name] = Counters(name)
        return counters

    # -- spawning -------------------------------------------------------------------

    async def spawn(
        self,
        agent_cls: type[Agent],
        name: str | None = None,
        *,
        replicas: int = 1,
        options: Any = None,
        topics: Iterable[str] = (),
        claim_idle: float | None = None,
        concurrency: int | None = None,
        first_replica: int | None = None,
        keyed: bool = False,
        partitions: int | None = None,
    ) -> None:
        """Start ``replicas`` instances of ``agent_cls`` reading the mailbox ``name``.

        ``name`` defaults to the class name. ``options`` is None, a dict (structured into
        ``agent_cls.Options``; a :class:`ConfigError` names bad fields) or an
        ``Options`` instance. ``topics`` add to the class's; ``claim_idle`` and
        ``concurrency`` override the class's. Returns once every new instance has run
        ``on_start`` (or failed it: then its restart policy applies). Spawning the same
        name again adds replicas. Other processes may host replicas of the same name:
        they share the mailbox as competing consumers.

        The new instances' ``self.replica`` numbers count on from this runtime's last
        one for ``name`` (0, 1, … on the first spawn), or from ``first_replica``: a
        launcher that spreads one agent's replicas over processes (``ailf run``) gives
        each process its own range, so that numbers are unique across them.

        Raises :class:`~ailf.errors.ResponseError` (code ``NOPERM``) when Redis refuses
        to subscribe one of the topics (the ACL user has no rights on that channel):
        then no instance was started, and the runtime goes on.

        ``keyed=True`` makes a keyed agent: one instance per key (``send(name, body,
        key="user-42")``), activated on a key's first message and passivated when idle,
        each key's messages handled in order, one at a time, in whichever process holds
        the key's partition (see docs/concepts.md#keyed-agents). Then ``replicas`` is how
        many keys this process handles at once, and ``partitions`` (default 64, fixed by
        the first spawn or send) how many partitions the keys are spread over.
        """
        if self._agents is None or self.stopping:
            raise RuntimeError("spawn() works inside `async with Runtime(...)`, before it stops")
        spec = spawn_spec(
            agent_cls,
            name,
            replicas=replicas,
            options=options,
            topics=topics,
            claim_idle=claim_idle,
            concurrency=concurrency,
            first_replica=first_replica,
            keyed=keyed,
        )
        name = spec.name
        if partitions is not None and not keyed:
            raise ConfigError(f"spawn({name!r}): partitions= is for keyed agents (keyed=True)")
        if keyed or agent_cls.state_type is not None:
            await self._spawn_keyed(spec, replicas, partitions)
            return
        await self._check_named(name, stateful=False)
        known = self._specs.get(name)
        if known is not None and known.agent_cls is not agent_cls:
            raise ConfigError(
                f"spawn({name!r}): this runtime already runs {name!r} as "
                f"{known.agent_cls.__qualname__}, not {agent_cls.__qualname__}"
            )
        self._specs[name] = spec
        try:
            await open_mailbox(self.client, self.keys.mailbox(name), check=known is None)
            # Before any instance starts, so that Redis refusing a topic (NOPERM) fails
            # this call with nothing started; the instances find their topics subscribed.
            for topic in spec.topics:
                await self.hub.subscribe(self.keys.topic(topic))
        except BaseException:
            if self._specs.get(name) is spec:
                if known is None:
                    del self._specs[name]
                else:
                    self._specs[name] = known
            raise
        counters = self.counters_for(name)
        numbers = self._replica_numbers.setdefault(name, itertools.count())
        if first_replica is not None:
            numbers = self._replica_numbers[name] = itertools.count(first_replica)
        for _ in range(replicas):
            reader = await self._readers.take(name)
            counters.replicas += 1
            await self._agents.start(self._replica, spec, next(numbers), reader, counters)
        log.info(
            "spawned %d replica(s) of %s as %r%s",
            replicas,
            agent_cls.__qualname__,
            name,
            f", hearing {', '.join(spec.topics)}" if spec.topics else "",
        )
        self._heartbeat.announce()  # other processes (`ailf status`) see the replicas at once

    async def _spawn_keyed(self, spec: SpawnSpec, workers: int, partitions: int | None) -> None:
        """A keyed agent, or a named agent with state: one partition, its own mailbox,
        one instance at a time across processes (the others stand by)."""
        name = spec.name
        if name in self._specs:
            raise ConfigError(
                f"spawn({name!r}): this runtime already runs {name!r}; an agent with state"
                " or keys is spawned once per process (replicas= sets how many keys run"
                " at once)"
            )
        if spec.keyed:
            count = await self._partitions(name, partitions, create=True)
            assert count is not None
        else:
            await self._check_named(name, stateful=True)
            count, workers = 1, 1
        self._specs[name] = spec
        counters = self.counters_for(name)
        reader = await self._readers.take(name)
        keyed = KeyedHost(
            self._host_context,
            spec,
            reader,
            counters,
            partitions=count,
            workers=workers,
            member=self.process_id,
            stateful=not spec.keyed,
        )
        self._keyed[name] = keyed
        counters.replicas += workers
        assert self._agents is not None
        await self._agents.start(keyed.run)
        log.info(
            "spawned keyed agent %s as %r: %d partitions, %d key(s) at once here, holding"
            " %d partition(s) now",
            spec.agent_cls.__qualname__,
            name,
            count,
            workers,
            len(keyed.owned),
        )
        self._heartbeat.announce()

    async def _check_named(self, name: str, *, stateful: bool) -> None:
        """Refuse a named spawn onto a keyed agent's name, and mixing replicas with and
        without state (a stateless one would read the mailbox beside the one instance
        with state); mark the name as an agent with state when it is one."""
        descriptor = self.keys.agent(name)
        if stateful:
            marked = await MARK_STATEFUL(self.client, [descriptor], [])
            keyed = not marked
        else:
            found = await self.client.hgetall(descriptor)
            keyed = "partitions" in found
            if not keyed and "stateful" in found:
                raise ConfigError(
                    f"spawn({name!r}): {name!r} is a named agent with state in namespace"
                    f" {self.namespace!r} ({descriptor}); spawn a class with that"
                    " state_type, or use another name"
                )
        if keyed or name in self._partition_counts:
            raise ConfigError(
                f"spawn({name!r}): {name!r} is a keyed agent in namespace"
                f" {self.namespace!r} ({descriptor} exists); spawn it with"
                " keyed=True, or use another name"
            )

    async def _partitions(
        self, name: str, wanted: int | None = None, *, create: bool = False
    ) -> int | None:
        """How many partitions keyed agent ``name`` has (None: it is not keyed).

        Stored in the agent's descriptor hash by the first spawn or keyed send
        (``create``), so that every process maps a key to the same partition; a spawn
        asking for another number is refused, since that would move keys between
        partitions under running hosts.
        """
        if wanted is not None:
            wanted = check_partitions(name, wanted)
        count = self._partition_counts.get(name)
        if count is None:
            descriptor = self.keys.agent(name)
            record = (wanted or DEFAULT_PARTITIONS) if create else ""
            stored = await DESCRIBE(self.client, [descriptor], [record])
            if stored is None:
                return None
            try:
                count = check_partitions(name, int(stored))
            except (ValueError, ConfigError):
                raise ConfigError(
                    f"agent {name!r}: {descriptor} field 'partitions' holds {stored!r}, not a"
                    " number of partitions; delete the key (DEL) to start the agent afresh"
                ) from None
            self._partition_counts[name] = count
        if wanted is not None and wanted != count:
            raise ConfigError(
                f"spawn({name!r}): the agent has {count} partitions in namespace"
                f" {self.namespace!r}, not {wanted}; the number is fixed by the first spawn"
                " or send"
            )
        return count

    async def _address(self, to: str, key: Any, *, create: bool = False) -> Address:
        """Where a message to agent ``to`` goes: its mailbox, or for a keyed agent
        ``key``'s partition (the agent's descriptor is written first if ``create``)."""
        check_name("agent", to)
        if key is None:
            if to in self._partition_counts:
                raise ConfigError(f"{to!r} is a keyed agent: say which key, e.g. key='user-42'")
            return self.keys.address(to)
        key = check_key(to, key)
        count = await self._partitions(to, create=create)
        if count is None:
            raise ConfigError(f"{to!r} is not a keyed agent: it takes no key")
        return self.keys.partition(to, partition_of(key, count)).address

    async def _add(self, address: Address, text: str, *, approximate: bool = False) -> str:
        """XADD an envelope to a mailbox and ring its doorbell, in one round trip.

        The bell only saves the reader a wait: if it cannot be rung (a user without
        channel rights may still send), the reader finds the entry on its next sweep.
        """
        xadd: tuple[Any, ...] = ("XADD", address.mailbox)
        maxlen = self.settings.mailbox_maxlen
        if maxlen is not None:
            xadd += ("MAXLEN", "~" if approximate else "=", maxlen)
        ring = (bell_command(self.client), address.bell, "")
        commands = [(*xadd, "*", ENVELOPE_FIELD, text), ring]
        if self.wait_replicas:
            # On a connection of its own (a blocking command's), right after the XADD.
            timeout_ms = max(1, int(self.wait_timeout * 1000))
            commands.insert(1, ("WAIT", self.wait_replicas, timeout_ms))
        # The client's engine straight away, not a pipeline: this is every send's path,
        # and a pipeline's bookkeeping costs more than the two commands.
        replies = await self.client._execute_many(commands, bool(self.wait_replicas))
        entry_id = replies[0]
        if isinstance(entry_id, Exception):
            raise_reply_error(entry_id, self.config.address)
        if self.wait_replicas:
            self._check_replicated(address.mailbox, str(entry_id), replies[1])
        return str(entry_id)

    def _check_replicated(self, mailbox: str, entry_id: str, confirmed: Any) -> None:
        if isinstance(confirmed, Exception):
            raise_reply_error(confirmed, self.config.address)
        if int(confirmed) < self.wait_replicas:
            raise NotReplicated(
                f"entry {entry_id} of {mailbox} is on the primary, but {confirmed} of the"
                f" {self.wait_replicas} replica(s) asked for (wait_replicas) confirmed it"
                f" within {self.wait_timeout} s; it is sent, and lost only if the primary"
                " fails before a replica has it. Check the replicas (INFO replication)",
                mailbox=mailbox,
                entry_id=entry_id,
                confirmed=int(confirmed),
                wanted=self.wait_replicas,
            )

    async def _replica(
        self,
        spec: SpawnSpec,
        replica: int,
        reader: MailboxReader,
        counters: Counters,
        *,
        task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One replica, supervised, until it is gone for good; then its reader slot is
        free again, and the registry hears of it."""
        new_cell = functools.partial(Cell, self._host_context, spec, replica, reader, counters)
        try:
            await self._supervisor.supervise(spec, replica, new_cell, task_status=task_status)
        finally:
            self._readers.release(spec.name, reader)
            if not self.stopping:  # statistics() after a stop keep the count it stopped with
                counters.replicas -= 1
            self._heartbeat.announce()

    # -- talking to agents ----------------------------------------------------------

    async def send(
        self,
        to: str,
        body: Any,
        *,
        sender: str | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | float | None = None,
    ) -> str:
        """Add a message to agent ``to``'s mailbox; returns its stream entry id.

        The agent need not run yet: its mailbox keeps the message until it does (up to
        ``mailbox_maxlen``). Raises MessageTooLarge past ``max_message_size``, and
        MailboxFull when the mailbox stayed at ``mailbox_limit`` for ``send_timeout``.
        For a keyed agent, ``key`` says which entity the message is for.

        ``delay`` (seconds from now) or ``at`` (an aware datetime, or epoch seconds; a
        past one is due at once) makes a timed message: it waits in Redis, not in this
        process, and enters the mailbox when due (see docs/time.md). Then the return
        value is the timer's id, for :meth:`cancel_scheduled`.
        """
        when = None if delay is None and at is None else due_ms(f"send({to!r})", delay, at)
        address = await self._address(to, key, create=True)
        with self.observer.producing("send", to) as producing:
            text = encode_envelope(
                body,
                sender=sender,
                headers=producing.inject(headers),
                max_size=self.settings.max_message_size,
                key=key,
            )
            if when is not None:
                partition = None if key is None else await self.partition_of(to, key)
                timer = TimerId.new(to, partition)
                await schedule(self.client, address, timer.field, text, when)
                producing.sent(str(timer))
                return str(timer)
            await self.gate.admit(self.client, address.mailbox)
            entry_id = await self._add(address, text, approximate=True)
            producing.sent(entry_id)
        return entry_id

    async def cancel_scheduled(self, timer_id: str) -> bool:
        """Cancel a timed message by the id ``send(..., delay=...)`` returned: True if it
        had not entered the mailbox yet (it never will), False if it had (or the id was
        cancelled before). A malformed id is a :class:`~ailf.errors.ConfigError`."""
        timer = TimerId.parse(timer_id)
        if timer.partition is None:
            address = self.keys.address(timer.agent)
        else:
            address = self.keys.partition(timer.agent, timer.partition).address
        return await cancel(self.client, address, timer.field)

    async def set_reminder(
        self,
        agent: str,
        name: str,
        body: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | float | None = None,
        every: float | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        sender: str | None = None,
    ) -> Reminder:
        """Set reminder ``name`` on agent ``agent`` (on ``key`` of a keyed agent),
        replacing one of that name: a message carrying ``body``, with
        ``message.reminder == name``, added to the agent's mailbox when it fires.

        One-shot: ``delay`` or ``at``. Recurring: ``every`` seconds (first after
        ``delay``/``at`` if given, else after one period) or at the times of ``cron``
        (five fields, in ``timezone``; needs ``ailf[cron]``). After downtime a recurring
        reminder fires once for all it missed (docs/time.md#catch-up). Returns the
        reminder as :meth:`reminders` lists it.
        """
        what = f"set_reminder({agent!r}, {name!r})"
        check_name("reminder", name)
        recurrence = Recurrence(every=every, cron=cron, timezone=timezone)
        when: tuple[int | None, int | None]
        if cron is not None:
            if delay is not None or at is not None:
                raise ConfigError(
                    f"{what}: a cron reminder fires at the cron's times; no delay= or at="
                )
            now = int(time.time() * 1000)
            when = (None, recurrence.next_ms(now, now))
        elif every is not None and delay is None and at is None:
            when = due_ms(what, delay=every)
        else:
            when = due_ms(what, delay, at)
        address = await self._address(agent, key, create=True)
        text = encode_envelope(
            body,
            sender=sender,
            max_size=self.settings.max_message_size,
            key=key,
            reminder=name,
        )
        field, value = reminder_field(name, key), reminder_value(recurrence, text)
        due = await schedule(self.client, address, field, value, when)
        return Reminder.from_hash(field, value, due)

    async def cancel_reminder(self, agent: str, name: str, *, key: str | None = None) -> bool:
        """Cancel reminder ``name`` of agent ``agent`` (on ``key``); True if it was set
        (and, for a one-shot reminder, had not fired yet)."""
        check_name("reminder", name)
        address = await self._address(agent, key)
        return await cancel(self.client, address, reminder_field(name, key))

    async def reminders(self, agent: str, *, key: str | None = None) -> list[Reminder]:
        """The reminders set on agent ``agent`` (on ``key`` of a keyed agent), by when
        they fire next."""
        address = await self._address(agent, key)
        return await list_reminders(self.client, address, key)

    async def ask(
        self,
        to: str,
        body: Any,
        timeout: float = 10,  # noqa: ASYNC109 - part of the documented API
        *,
        sender: str | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> Any:
        """Send a request and return the handler's return value (for a keyed agent, the
        handler of ``key``).

        ``timeout`` is a finite number of seconds > 0 (:class:`~ailf.errors.ConfigError`
        otherwise). Raises :class:`~ailf.errors.AskTimeout` (also a TimeoutError) naming
        the agent after ``timeout`` seconds, and :class:`~ailf.errors.RemoteError` (with the remote
        exception's ``type_name`` and ``message``) when the handler raised. A reply
        arriving after the timeout is dropped. The first ask subscribes this process's
        reply channel: if Redis refuses it (``NOPERM``), the ask raises that
        :class:`~ailf.errors.ResponseError` before sending, and the next ask tries again.
        """
        address = await self._address(to, key, create=True)
        number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if not (number and 0 < timeout < math.inf):
            raise ConfigError(f"ask({to!r}): timeout must be seconds > 0, not {timeout!r}")
        max_size = self.settings.max_message_size
        # Waiting for room is not the ask's time.
        await self.gate.admit(self.client, address.mailbox)
        await self.hub.open_inbox()
        with self.observer.producing("ask", to) as producing:

            async def request(correlation: str) -> None:
                text = encode_envelope(
                    body,
                    sender=sender,
                    headers=producing.inject(headers),
                    reply_to=self._inbox.channel,
                    correlation=correlation,
                    max_size=max_size,
                    key=key,
                )
                producing.sent(await self._add(address, text))

            return await self._inbox.ask(to, timeout, request)

    async def publish(self, topic: str, body: Any, *, sender: str | None = None) -> int:
        """Broadcast ``body`` to every instance subscribed to ``topic``, in every process.

        Best-effort (pub/sub): only processes subscribed right now receive it. Returns
        the number of processes that did.
        """
        with self.observer.producing("publish", check_name("topic", topic)) as producing:
            message_id = f"{self.process_id}-{next(self._broadcast_ids)}"
            text = encode_envelope(
                body,
                sender=sender,
                headers=producing.inject(None),
                topic=topic,
                message_id=message_id,
                max_size=self.settings.max_message_size,
            )
            receivers: int = await self.client.publish(self.keys.topic(topic), text)
            producing.sent(message_id)
        return receivers

    async def dead_letters(
        self, name: str, count: int = 100, *, key: str | None = None
    ) -> list[DeadLetter]:
        """The oldest ``count`` dead letters of agent ``name``, oldest first; for a keyed
        agent, of every key, or of ``key`` only."""
        check_name("agent", name)
        if key is None:
            streams = await self.dead_letter_streams(name)
        else:
            streams = [(await self.address_of(name, key)).dead]
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xrange(stream, count=count)
        letters = [
            DeadLetter.from_entry(dead_id, fields)
            for entries in await pipe.execute()
            for dead_id, fields in entries
        ]
        if key is not None:
            letters = [letter for letter in letters if letter.key == key]
        if len(streams) > 1:  # the partitions' letters merged by when they failed
            letters.sort(key=lambda letter: (letter.failed_at, letter.dead_letter_id))
        return letters[:count]

    async def dead_letter_streams(self, name: str) -> list[str]:
        """The dead-letter streams of agent ``name``: one, or one per partition of a
        keyed agent."""
        partitions = await self._partitions(check_name("agent", name))
        if partitions is None:
            return [self.keys.dead(name)]
        return [self.keys.partition(name, number).dead for number in range(partitions)]

    async def address_of(self, name: str, key: str | None = None) -> Address:
        """The mailbox, dead-letter stream and doorbell of agent ``name`` — for a keyed
        agent, of ``key``'s partition (``ailf dlq redrive`` puts a dead letter back
        there)."""
        return await self._address(name, key)

    async def partition_of(self, name: str, key: str) -> int:
        """The partition of keyed agent ``name`` that ``key`` belongs to."""
        check_name("agent", name)
        partitions = await self._partitions(name)
        if partitions is None:
            raise ConfigError(f"{name!r} is not a keyed agent: it takes no key")
        return partition_of(check_key(name, key), partitions)

    async def ring(self, address: Address) -> None:
        """Ring a mailbox's doorbell: its reader reads it now rather than at its next
        sweep (for entries added by other means than :meth:`send`)."""
        await self.client.execute_command(bell_command(self.client), address.bell, "")

    async def state(
        self, name: str, key: str | None = None, state_type: type[T] | None = None
    ) -> Any:
        """The state agent ``name`` saved — a keyed agent's for ``key``, a named agent
        with state its one (no key) —: a dict of its fields (an instance of
        ``state_type`` if given), or None if nothing was saved.

        It is the state as of the last message whose handling committed; an instance
        handling a message now may hold a newer one in memory.
        """
        check_name("agent", name)
        partitions = await self._partitions(name)
        if key is None:
            if partitions is not None:
                raise ConfigError(f"state({name!r}): a keyed agent: say which key")
            where, field = self.keys.stateful(name).state, name
        elif partitions is None:
            raise ConfigError(
                f"state({name!r}): {name!r} is not a keyed agent in namespace"
                f" {self.namespace!r} (no {self.keys.agent(name)}); a named agent's state"
                " is read without a key"
            )
        else:
            field = check_key(name, key)
            where = self.keys.partition(name, partition_of(field, partitions)).state
        text = await self.client.hget(where, field)
        if text is None:
            return None
        if state_type is not None:
            return load_state(state_type, text, log)
        return loads(text)

    # -- observing ------------------------------------------------------------------

    def statistics(self) -> dict[str, AgentStatistics]:
        """This process's counters, per agent name."""
        return {name: counters.snapshot() for name, counters in self._counters.items()}

    async def registry(self) -> RegistrySnapshot:
        """Every live process in the namespace, its agents, and counters summed over them
        (as of each process's last heartbeat; this process's is refreshed first)."""
        await self._beat()
        return await read_registry(self.client, self.keys)

    async def cluster_statistics(self) -> dict[str, AgentStatistics]:
        """Counters per agent name, summed over every live process."""
        return (await self.registry()).statistics

    async def _beat(self) -> None:
        agents = {name: c.replicas for name, c in self._counters.items() if c.replicas}
        problems = {
            name: why for reader in self._readers for name, why in reader.problems().items()
        }
        fields = heartbeat_fields(
            self.host,
            self.pid,
            self.started_at,
            agents,
            list(self.statistics().values()),
            problems,
        )
        await write_heartbeat(
            self.client,
            self.keys,
            self.process_id,
            fields,
            HEARTBEAT_TTL_INTERVALS * self.heartbeat_interval,
        )

    async def wait_idle(
        self,
        names: Iterable[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - part of the documented API
    ) -> None:
        """Wait until every named agent (default: those spawned here) has nothing left:
        no unread and no pending entries in its mailbox, across all processes, and no
        message queued, in flight, awaiting a retry or an ack here.

        Raises TimeoutError naming the busy agents after ``timeout`` seconds.
        """
        wanted = list(self._specs) if names is None else [check_name("agent", n) for n in names]
        for name in wanted:  # which are keyed (read once): their partitions are waited on
            await self._partitions(name)
        busy: dict[str, str] = {}
        quiet = 0
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                busy = await self._busy(wanted)
                quiet = 0 if busy else quiet + 1
                if quiet >= 2:
                    return
                await trio.sleep(0.01)
        detail = ", ".join(f"{name} ({why})" for name, why in busy.items())
        raise TimeoutError(f"agents still busy after {timeout} s: {detail}")

    async def _busy(self, names: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        local = {cell.spec.name for cell in self.cells if cell.busy()}
        local.update(name for name, keyed in self._keyed.items() if keyed.busy())
        streams: dict[str, list[str]] = {}
        for name in names:
            count = self._partition_counts.get(name)
            if count is None:
                streams[name] = [self.keys.mailbox(name)]
            else:
                streams[name] = [self.keys.partition(name, p).mailbox for p in range(count)]
        for name in names:
            if name in local:
                found[name] = "handling here"
            elif any(
                self.acker.busy(stream) or self._readers.retries_pending(stream)
                for stream in streams[name]
            ):
                found[name] = "acks or retries due here"
        remaining = {
            stream: name for name in names if name not in found for stream in streams[name]
        }
        if remaining:
            for stream, why in (await busy(self.client, list(remaining))).items():
                found.setdefault(remaining[stream], why)
        return found

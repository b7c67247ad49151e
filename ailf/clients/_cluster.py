"""The async engine for a Redis Cluster: the router's steps, carried out under trio or
asyncio.

:class:`ClusterBackend` drives :class:`~ailf.clients._cluster_router.ClusterRouter`
(which decides where each command goes and what each reply means) over one engine per
node — under trio a :class:`~ailf.clients._trio_backend.TrioBackend`, the same shared,
pipelined connection and pool of blocking connections as on one server; under asyncio an
:class:`~ailf.clients._asyncio_backend.AsyncioBackend`. Sends to several nodes run at
once (a pipeline over the whole cluster costs one round trip, not one per node), tasks
waiting for a newer map wait on one event, and the map is refreshed in the background:
soon after anything made it suspect (at most every :data:`REFRESH_SPACING` seconds,
however many MOVED arrive at once), and every :data:`REFRESH_PERIOD` seconds anyway,
since nothing else tells a client of a failed replica or a new node. Under trio, a
command of one slot whose owner is connected goes straight to that owner's shared
connection; pub/sub on a cluster (:mod:`ailf.clients._cluster_pubsub`) runs under trio.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import sniffio
import trio

from ailf.clients._async_tools import AsyncTools, TrioTools, tools_for
from ailf.clients._backend import AsyncBackend, AsyncReserved, PubSubSession
from ailf.clients._cluster_pubsub import ClusterPubSub
from ailf.clients._cluster_router import (
    Attempt,
    AwaitMap,
    ClusterRouter,
    RefreshSoon,
    Send,
    SendAll,
    Sleep,
    Steps,
    redirect_of,
    trouble_in,
)
from ailf.clients._errors import NotConnected
from ailf.clients._resp import pack_command
from ailf.clients._slots import ONE_KEY, SLOTS, command_keys, key_slot
from ailf.clients._topology import Node
from ailf.clients._trio_backend import TrioBackend
from ailf.config import RedisConfig
from ailf.errors import (
    ClusterUnavailableError,
    RedisError,
    ResponseError,
    WatchError,
)

__all__ = ["REFRESH_PERIOD", "REFRESH_SPACING", "ClusterBackend", "ClusterReserved"]

Command = tuple[Any, ...]

#: The least time between two refreshes of the map, so that a burst of MOVED costs one.
REFRESH_SPACING = 0.1
#: How often the map is read again anyway.
REFRESH_PERIOD = 30.0


class ClusterBackend:
    """The :class:`~ailf.clients._backend.AsyncBackend` for ``RedisConfig(cluster=True)``,
    under trio or asyncio (whichever runs it); see the module docstring."""

    def __init__(self, config: RedisConfig, nursery: trio.Nursery | None) -> None:
        self._config = config
        self.tools: AsyncTools = tools_for(nursery)
        self.router = ClusterRouter(config, self.tools.now)
        self._links: dict[Node, AsyncBackend] = {}
        #: Slot -> its owner's engine under trio, for :meth:`execute`'s fast path; built
        #: slot by slot, emptied whenever the router's map changes (its generation).
        self._slot_links: list[TrioBackend | None] = [None] * SLOTS
        self._slot_links_of = self.router.generation
        self._changed = self.tools.event()
        self._refresh_lock = self.tools.lock()
        self._refreshed_at = -math.inf
        self._refresh_wanted = False
        self._closed = False

    # -- lifetime ---------------------------------------------------------------------

    @staticmethod
    async def probe(config: RedisConfig) -> None:
        """PING the seeds until one answers (``health_check``)."""
        if sniffio.current_async_library() == "asyncio":
            from ailf.clients._asyncio_backend import AsyncioBackend

            probe = AsyncioBackend.probe
        else:
            probe = TrioBackend.probe
        failure: RedisError | None = None
        for seed in config.seeds:
            try:
                await probe(seed)
                return
            except RedisError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def open(self) -> None:
        """Read the map, so that a wrong address fails at ``async with``."""
        await self._refresh(self.router.generation)
        if self.tools.background:
            self.tools.spawn(self._refresh_periodically)

    async def aclose(self) -> None:
        self._closed = True
        self.tools.close()
        for link in list(self._links.values()):
            await link.aclose()

    async def sleep(self, seconds: float) -> None:
        await self.tools.sleep(seconds)

    @property
    def reconnects(self) -> int:
        """Summed over the nodes' links."""
        return sum(link.reconnects for link in list(self._links.values()))

    # -- carrying out steps -----------------------------------------------------------

    async def drive(self, steps: Steps) -> Any:
        """Carry out ``steps`` until they return; what they return."""
        answer: Any = None
        failure: BaseException | None = None
        while True:
            try:
                step = steps.send(answer) if failure is None else steps.throw(failure)
            except StopIteration as done:
                return done.value
            answer = failure = None
            try:
                answer = await self._carry_out(step)
            except RedisError as exc:
                failure = exc

    async def _carry_out(self, step: Any) -> Any:
        if type(step) is Send:
            return await self._send(step)
        if type(step) is SendAll:
            return await self._send_all(step)
        if type(step) is Sleep:
            await self.tools.sleep(step.seconds)
        elif type(step) is AwaitMap:
            await self._await_map(step)
        elif type(step) is RefreshSoon:
            self._want_refresh()
        return None

    def node_config(self, node: Node) -> RedisConfig:
        """The config of a plain connection to ``node``. It does not retry connecting:
        the router waits out a node that will not connect, within
        ``cluster_retry_timeout``, so a link reports failure at once, not after backoff."""
        config = self._config.node(node.host, node.port)
        return config.replace(retry=attrs.evolve(config.retry, attempts=0))

    def _link(self, node: Node) -> AsyncBackend:
        link = self._links.get(node)
        if link is None:
            config = self.node_config(node)
            if self.tools.name == "asyncio":
                from ailf.clients._asyncio_backend import AsyncioBackend

                link = AsyncioBackend(config)
            else:
                assert isinstance(self.tools, TrioTools)
                link = TrioBackend(config, self.tools.nursery)
            self._links[node] = link
        return link

    def session(self, node: Node) -> PubSubSession:
        """A pub/sub session to ``node`` that ends when its connection does."""
        return self._link(node).pubsub(reconnect=False)

    async def _send(self, step: Send) -> list[Any]:
        """One node's commands in one write; every engine raises
        :class:`~ailf.clients._errors.NotConnected` when connecting failed."""
        return await self._link(step.node).execute_many(step.commands, step.blocking)

    async def _send_all(self, step: SendAll) -> list[Any]:
        outcomes: list[Any] = [None] * len(step.sends)

        def one(index: int, send: Send) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                try:
                    outcomes[index] = await self._send(send)
                except RedisError as exc:
                    outcomes[index] = exc

            return run

        await self.tools.all([one(index, send) for index, send in enumerate(step.sends)])
        return outcomes

    async def _await_map(self, step: AwaitMap) -> None:
        if self.tools.background and self.router.generation == step.seen:
            self._want_refresh()
            await self.tools.wait(self._changed, step.until)
        if self.router.stale(step.seen):
            with contextlib.suppress(RedisError):
                await self._refresh(step.seen)

    # -- the map ------------------------------------------------------------------------

    def want_refresh(self) -> None:
        """Have the map read again soon, in the background."""
        self._want_refresh()

    async def refresh(self) -> None:
        """Read the map again now (unless another task is, or just did)."""
        await self._refresh(self.router.generation)

    async def await_newer_map(self, seen: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until the map is newer than generation ``seen``, ``timeout`` at most."""
        if self.router.generation == seen:
            await self.tools.wait(self._changed, self.tools.now() + timeout)

    def _want_refresh(self) -> None:
        if not self.tools.background or self._refresh_wanted or self._closed:
            return
        self._refresh_wanted = True
        self.tools.spawn(self._refresh_soon)

    async def _refresh_soon(self) -> None:
        seen = self.router.generation
        await self.tools.sleep(max(0.0, self._refreshed_at + REFRESH_SPACING - self.tools.now()))
        self._refresh_wanted = False
        with contextlib.suppress(RedisError):  # no node answers now: commands wait, ask again
            await self._refresh(seen)

    async def _refresh_periodically(self) -> None:
        while not self._closed:
            await self.tools.sleep(REFRESH_PERIOD)
            with contextlib.suppress(RedisError):
                await self._refresh(self.router.generation)

    async def _refresh(self, seen: int) -> None:
        """Read the map again, unless another task did since generation ``seen``."""
        async with self._refresh_lock:
            if not self.router.stale(seen):
                return
            fresh = await self.drive(self.router.read_map())
            gone = self.router.install(fresh)
            self._refreshed_at = self.tools.now()
            self._changed.set()
            self._changed = self.tools.event()
        for node in gone:  # left the cluster: its commands in flight fail, as they would
            link = self._links.pop(node, None)
            if link is not None:
                await link.aclose()

    # -- the AsyncBackend contract ------------------------------------------------------

    def execute(self, args: Command, blocking: bool) -> Awaitable[Any]:
        """One command's reply. The common case — keys of one slot whose owner is
        connected — goes straight to that owner's shared connection; anything else, and
        any reply that redirects, through the router's steps."""
        if not blocking and len(args) > 1:
            slot = -1
            if args[0] in ONE_KEY:
                slot = key_slot(args[1])
            else:
                keys = command_keys(args)
                if keys and all(key_slot(key) == key_slot(keys[0]) for key in keys):
                    slot = key_slot(keys[0])
            if slot >= 0:
                if self._slot_links_of != self.router.generation:
                    self._slot_links = [None] * SLOTS
                    self._slot_links_of = self.router.generation
                link = self._slot_links[slot]
                if link is None:
                    link = self._owner_link(slot)
                shared = link.ready() if link is not None else None
                if shared is not None:
                    return shared.request(pack_command(args))
        return self.drive(self.router.execute(args, blocking))

    def _owner_link(self, slot: int) -> TrioBackend | None:
        """The engine of ``slot``'s owner under trio if it exists, remembered for the slot
        (looking a node up compares its fields; a list index does not)."""
        node = self.router.map.owners[slot]
        link = self._links.get(node) if node is not None else None
        if not isinstance(link, TrioBackend):
            return None
        self._slot_links[slot] = link
        return link

    async def recover(self, args: Command, reply: Exception, blocking: bool) -> Any:
        """The reply of a command sent straight to its owner (see :meth:`execute`) that
        answered with an error: a redirect or a "later" (it did not run) is sent again
        through the router, which follows what it is told; any other error is the
        command's own."""
        if not isinstance(reply, ResponseError) or trouble_in([reply]) is None:
            return reply
        self._want_refresh()
        slot = await self.drive(self.router.slot([args]))
        [answer] = await self.drive(self.router.run(Attempt(slot), [args], blocking))
        return answer

    async def execute_many(self, commands: Sequence[Command], blocking: bool) -> list[Any]:
        replies: list[Any] = await self.drive(self.router.execute_many(commands, blocking))
        return replies

    async def reserve(self) -> ClusterReserved:
        return ClusterReserved(self)

    def pubsub(self, *, reconnect: bool = True) -> ClusterPubSub:
        """Classic and sharded pub/sub over the cluster (:mod:`ailf.clients._cluster_pubsub`);
        its sessions always move to where their channels live."""
        return ClusterPubSub(self)


class ClusterReserved:
    """A watching pipeline's connection on a cluster (``pipe.watch()`` … ``EXEC``).

    It is bound on the first request to the owner of that request's slot (a WATCH names
    the keys), and every later request must stay in that slot: a transaction runs on
    one node. If the slot moves while watching, the transaction could not run there:
    :class:`~ailf.errors.WatchError`, which ``client.transaction()`` retries, on the
    new owner.
    """

    def __init__(self, backend: ClusterBackend) -> None:
        self._backend = backend
        self._slot: int | None = None
        self._reserved: AsyncReserved | None = None
        self._released = False

    @property
    def closed(self) -> bool:
        return self._released or (self._reserved is not None and self._reserved.closed)

    async def request(self, commands: Sequence[Command], blocking: bool = False) -> list[Any]:
        backend = self._backend
        router = backend.router
        self._slot = await backend.drive(router.bound_slot(self._slot, commands))
        if self._reserved is None:
            owner = router.owner(self._slot)
            if owner is None:
                await backend.drive(router.read_map())
                owner = router.owner(self._slot)
            if owner is None:
                raise ClusterUnavailableError(f"no node serves slot {self._slot}")
            try:
                self._reserved = await backend._link(owner).reserve()
            except NotConnected:
                backend._want_refresh()
                raise
        replies: list[Any] = await self._reserved.request(commands, blocking)
        moved = next((r for r in replies if redirect_of(r) is not None), None)
        if moved is not None:
            backend._want_refresh()
            await self.release()
            raise WatchError(
                f"slot {self._slot} is moving ({moved}) while the pipeline watched it;"
                " the transaction did not run: read and try again"
            )
        return replies

    async def release(self) -> None:
        self._released = True
        if self._reserved is not None:
            await self._reserved.release()

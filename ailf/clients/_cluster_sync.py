"""The sync engine for a Redis Cluster: the router's steps, carried out by blocking calls.

:class:`SyncClusterBackend` drives the same :class:`~ailf.clients._cluster_router.
ClusterRouter` as the trio engine (so both route, redirect, wait and refuse alike) over
one :class:`~ailf.clients._sync_backend.RedisPyBackend` per node: redis-py's pool of
blocking connections, which a sync client shares between its threads. Sends to several
nodes go one after the other; the map is read again inline, at most every
:data:`~ailf.clients._cluster.REFRESH_SPACING` seconds, when a reply made it suspect.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.cluster

from ailf.clients._cluster import REFRESH_SPACING
from ailf.clients._cluster_router import (
    AwaitMap,
    ClusterRouter,
    RefreshSoon,
    Send,
    SendAll,
    Sleep,
    Steps,
    redirect_of,
)
from ailf.clients._errors import NotConnected
from ailf.clients._sync_backend import RedisPyBackend, RedisPyReserved
from ailf.clients._topology import Node
from ailf.config import RedisConfig
from ailf.errors import ClusterUnavailableError, RedisError, WatchError

__all__ = ["SyncClusterBackend", "SyncClusterReserved"]

Command = tuple[Any, ...]


class SyncClusterBackend:
    """The :class:`~ailf.clients._backend.SyncBackend` for ``RedisConfig(cluster=True)``."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.router = ClusterRouter(config, time.monotonic)
        self._links: dict[Node, RedisPyBackend] = {}
        self._lock = threading.Lock()
        self._refreshed_at = -math.inf
        self._redis: redis.cluster.RedisCluster | None = None

    @property
    def redis(self) -> redis.cluster.RedisCluster:
        """redis-py's cluster client on the same seeds (``RedisClient.client``)."""
        if self._redis is None:
            seed = self.config.seeds[0]
            kwargs = seed.redis_py_kwargs()
            for unsupported in ("db", "max_connections"):
                kwargs.pop(unsupported, None)
            self._redis = redis.cluster.RedisCluster(
                startup_nodes=[
                    redis.cluster.ClusterNode(s.host, s.port) for s in self.config.seeds
                ],
                **kwargs,
            )
        return self._redis

    # -- carrying out steps -----------------------------------------------------------

    def drive(self, steps: Steps) -> Any:
        """Carry out ``steps`` until they return; what they return. The first call
        reads the map."""
        if self.router.stale(0):
            self._refresh(0)
        return self._drive(steps)

    def _drive(self, steps: Steps) -> Any:
        answer: Any = None
        failure: BaseException | None = None
        while True:
            try:
                step = steps.send(answer) if failure is None else steps.throw(failure)
            except StopIteration as done:
                return done.value
            answer = failure = None
            try:
                answer = self._carry_out(step)
            except RedisError as exc:
                failure = exc

    def _carry_out(self, step: Any) -> Any:
        if type(step) is Send:
            return self._link(step.node).execute_many(step.commands, step.blocking)
        if type(step) is SendAll:
            outcomes: list[Any] = []
            for send in step.sends:
                try:
                    outcomes.append(
                        self._link(send.node).execute_many(send.commands, send.blocking)
                    )
                except RedisError as exc:
                    outcomes.append(exc)
            return outcomes
        if type(step) is Sleep:
            time.sleep(step.seconds)
        elif type(step) is AwaitMap:
            time.sleep(
                max(0.0, min(step.until, self._refreshed_at + REFRESH_SPACING) - time.monotonic())
            )
            if self.router.stale(step.seen):
                with contextlib.suppress(RedisError):
                    self._refresh(step.seen)
        elif type(step) is RefreshSoon and time.monotonic() >= self._refreshed_at + REFRESH_SPACING:
            with contextlib.suppress(RedisError):
                self._refresh(self.router.generation)
        return None

    def _link(self, node: Node) -> RedisPyBackend:
        link = self._links.get(node)
        if link is None:
            with self._lock:
                link = self._links.get(node)
                if link is None:
                    link = self._links[node] = RedisPyBackend(
                        self.config.node(node.host, node.port)
                    )
        return link

    def _refresh(self, seen: int) -> None:
        with self._lock:
            if not self.router.stale(seen):
                return
        fresh = self._drive(self.router.read_map())
        with self._lock:
            gone = self.router.install(fresh)
            self._refreshed_at = time.monotonic()
            links = [self._links.pop(node) for node in gone if node in self._links]
        for link in links:
            link.close()

    # -- the SyncBackend contract -------------------------------------------------------

    def execute(self, args: Command, blocking: bool) -> Any:
        return self.drive(self.router.execute(args, blocking))

    def execute_many(self, commands: Sequence[Command], blocking: bool) -> list[Any]:
        replies: list[Any] = self.drive(self.router.execute_many(commands, blocking))
        return replies

    def reserve(self) -> SyncClusterReserved:
        return SyncClusterReserved(self)

    def probe(self) -> None:
        """PING the seeds until one answers (``health_check``)."""
        failure: RedisError | None = None
        for seed in self.config.seeds:
            try:
                RedisPyBackend(seed).probe()
                return
            except RedisError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def close(self) -> None:
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()
        if self._redis is not None:
            self._redis.close()


class SyncClusterReserved:
    """:class:`~ailf.clients._cluster.ClusterReserved` for the sync client."""

    def __init__(self, backend: SyncClusterBackend) -> None:
        self._backend = backend
        self._slot: int | None = None
        self._reserved: RedisPyReserved | None = None
        self._released = False

    @property
    def closed(self) -> bool:
        return self._released or (self._reserved is not None and self._reserved.closed)

    def request(self, commands: Sequence[Command], blocking: bool = False) -> list[Any]:
        backend = self._backend
        router = backend.router
        self._slot = backend.drive(router.bound_slot(self._slot, commands))
        if self._reserved is None:
            owner = router.owner(self._slot)
            if owner is None:
                raise ClusterUnavailableError(f"no node serves slot {self._slot}")
            try:
                self._reserved = backend._link(owner).reserve()
            except NotConnected:
                backend._refresh(router.generation)
                raise
        replies = self._reserved.request(commands, blocking)
        moved = next((r for r in replies if redirect_of(r) is not None), None)
        if moved is not None:
            self.release()
            with contextlib.suppress(RedisError):
                backend._refresh(router.generation)
            raise WatchError(
                f"slot {self._slot} is moving ({moved}) while the pipeline watched it;"
                " the transaction did not run: read and try again"
            )
        return replies

    def release(self) -> None:
        self._released = True
        if self._reserved is not None:
            self._reserved.release()

"""A throwaway Redis Cluster on loopback, for tests and local work.

:class:`RedisClusterServer` starts ``primaries * (1 + replicas)`` embedded servers
(:class:`~ailf.server.RedisServer`: no persistence, a watchdog that kills each with its
owner) in cluster mode, and joins them with cluster commands rather than ``redis-cli``,
which the embedded Valkey binary does not ship. ``ailf server --cluster 3 --replicas 1``
runs one from the command line.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import redis

from ailf.errors import ConfigError, EmbeddedServerError
from ailf.server import RedisServer, check_port_free

__all__ = ["SLOT_COUNT", "RedisClusterServer"]


def _cluster_ports(count: int) -> list[int]:
    """``count`` client ports whose cluster-bus ports (port + 10000) are free too, all
    below the kernel's ephemeral range: a bus port that an outgoing connection happens
    to take makes a node fail to start (seen with ports picked by the kernel)."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(12000, 22700)
        if port in ports or port + 10000 in ports:
            continue
        try:
            check_port_free(port)
            check_port_free(port + 10000)
        except EmbeddedServerError:
            continue
        ports.append(port)
    return ports


class RedisClusterServer:
    """A throwaway Redis Cluster on loopback: ``primaries`` nodes owning the 16384 slots
    in equal ranges, each with ``replicas`` replicas, for tests and local development.

    Every node is a :class:`RedisServer` (no persistence, a watchdog that kills it with
    its owner), started with cluster mode on and joined with cluster commands rather
    than ``redis-cli`` (which the embedded Valkey binary does not ship). ``start()``
    returns once every node agrees on the slots, ``cluster_state`` is ``ok`` everywhere
    and every replica is in sync: about two seconds for 3 + 3 nodes.

    ``node_timeout`` (milliseconds) is how long a silent node takes to be declared
    failed, so how long a failover after a crash takes (about twice it, measured):
    short here so that tests of failovers are quick; Redis's default is 15000.
    """

    def __init__(
        self,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout: int = 1000,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if isinstance(primaries, bool) or not isinstance(primaries, int) or primaries < 1:
            raise ConfigError(f"RedisClusterServer.primaries: expected >= 1, got {primaries!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ConfigError(f"RedisClusterServer.replicas: expected >= 0, got {replicas!r}")
        self.primaries = primaries
        self.replicas = replicas
        self._startup_timeout = startup_timeout
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout),
            # Replicas sync at once, not after the default five seconds' wait.
            "--repl-diskless-sync-delay", "0",
            "--repl-ping-replica-period", "1",
        )  # fmt: skip
        ports = _cluster_ports(primaries * (1 + replicas))
        #: Every node: the primaries first, then the replicas of primary 0, of 1...
        self.nodes = [RedisServer(port=port, args=args, binary=binary) for port in ports]

    @property
    def url(self) -> str:
        """The URL of the first primary, with ``?cluster=true``."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true"

    @property
    def seeds(self) -> list[tuple[str, int]]:
        """Every node's address, as ``(host, port)``."""
        return [("127.0.0.1", node.port) for node in self.nodes if node.port is not None]

    def start(self) -> RedisClusterServer:
        """Start every node and join them into a cluster; returns ``self``."""
        for node in self.nodes:
            node.start()
        try:
            self._join()
        except BaseException:
            self.close()
            raise
        return self

    def _join(self) -> None:
        links = [_raw_link(node.port) for node in self.nodes]
        try:
            primaries, replicas = links[: self.primaries], links[self.primaries :]
            for index, link in enumerate(primaries):
                low = index * SLOT_COUNT // self.primaries
                high = (index + 1) * SLOT_COUNT // self.primaries
                link.execute_command("CLUSTER", "ADDSLOTS", *range(low, high))
            for link in links[1:]:
                link.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
            self._wait(
                lambda: all(_info(x)["cluster_known_nodes"] == str(len(links)) for x in links)
            )
            ids = [_my_id(link) for link in primaries]
            for index, link in enumerate(replicas):
                link.execute_command("CLUSTER", "REPLICATE", ids[index // self.replicas])
            self._wait(lambda: self._ready(links))
        finally:
            for link in links:
                link.close()

    def _ready(self, links: list[redis.Redis]) -> bool:
        if any(_info(link)["cluster_state"] != "ok" for link in links):
            return False
        layouts = {str(sorted(link.execute_command("CLUSTER", "SLOTS"))) for link in links}
        if len(layouts) != 1:
            return False
        if not all(
            _fields(link.execute_command("INFO", "replication")).get("master_link_status") == "up"
            for link in links[self.primaries :]
        ):
            return False
        return all(_all_online(link) for link in links)

    def _wait(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass  # a node still joining refuses some commands
            time.sleep(0.01)
        raise EmbeddedServerError(
            f"the cluster on ports {[node.port for node in self.nodes]} did not come up"
            f" within {self._startup_timeout} s"
        )

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisClusterServer {self.primaries}x(1+{self.replicas}) {self.url}>"


#: The number of hash slots of a Redis Cluster.
SLOT_COUNT = 16384


def _raw_link(port: int | None) -> redis.Redis:
    """A redis-py connection that returns replies as they come (no parsing callbacks)."""
    assert port is not None  # cluster nodes listen on TCP
    link = redis.Redis(port=port, decode_responses=True, protocol=2)
    link.response_callbacks.clear()
    return link


def _fields(text: str) -> dict[str, str]:
    """``key:value`` lines (INFO, CLUSTER INFO) as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _all_online(link: redis.Redis) -> bool:
    """Whether every node that ``CLUSTER SHARDS`` lists is ``online`` there (a replica
    still reads ``loading`` for a moment after its link came up); True on a server
    without CLUSTER SHARDS (Redis 6), which has nothing more to tell."""
    try:
        shards = link.execute_command("CLUSTER", "SHARDS")
    except redis.ResponseError:
        return True
    for shard in shards:
        fields = dict(zip(shard[::2], shard[1::2], strict=True))
        for node in fields.get("nodes", []):
            if dict(zip(node[::2], node[1::2], strict=True)).get("health") != "online":
                return False
    return True


def _info(link: redis.Redis) -> dict[str, str]:
    return _fields(link.execute_command("CLUSTER", "INFO"))


def _my_id(link: redis.Redis) -> str:
    """The node's id, from CLUSTER NODES (CLUSTER MYID is Redis 7 only)."""
    nodes: str = link.execute_command("CLUSTER", "NODES")
    for line in nodes.splitlines():
        fields = line.split()
        if "myself" in fields[2].split(","):
            node_id: str = fields[0]
            return node_id
    raise EmbeddedServerError("a cluster node did not say which node it is")

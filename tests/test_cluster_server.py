"""RedisClusterServer: a throwaway Redis Cluster on loopback, as the cluster tests (and
users testing their own code against a cluster) start it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import redis
from redis.cluster import RedisCluster

from ailf import ConfigError, RedisClient, RedisClusterServer, RedisConfig


def test_a_cluster_of_three_primaries_and_three_replicas() -> None:
    with RedisClusterServer(primaries=3, replicas=1) as cluster:
        assert cluster.url.endswith("/0?cluster=true")
        assert len(cluster.nodes) == len(cluster.seeds) == 6
        client = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        try:
            for n in range(300):
                client.set(f"key-{n}", n)
            owners = {client.get_node_from_key(f"key-{n}").port for n in range(300)}
            assert owners == {node.port for node in cluster.nodes[:3]}  # every primary owns some
            assert [int(client.get(f"key-{n}")) for n in range(300)] == list(range(300))
        finally:
            client.close()
        for replica in cluster.nodes[3:]:
            info = redis.Redis(port=replica.port).info("replication")
            assert info["role"] == "slave" and info["master_link_status"] == "up"
        pids = [node.pid for node in cluster.nodes]
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no such process any more


def test_one_primary_alone_owns_every_slot() -> None:
    with RedisClusterServer(primaries=1, replicas=0) as cluster:
        link = redis.Redis(port=cluster.nodes[0].port, decode_responses=True)
        assert "cluster_slots_assigned:16384" in link.execute_command("CLUSTER", "INFO")
        link.close()


@pytest.mark.parametrize(("primaries", "replicas"), [(0, 1), (1, -1), (True, 0), (1, "1")])
def test_bad_shapes_are_config_errors(primaries: object, replicas: object) -> None:
    with pytest.raises(ConfigError, match="RedisClusterServer"):
        RedisClusterServer(primaries=primaries, replicas=replicas)  # type: ignore[arg-type]


def test_ailf_server_cluster_runs_one_until_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ailf", "server", "--cluster", "2", "--replicas", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:") and url.endswith("?cluster=true")
        with RedisClient(RedisConfig.from_url(url)) as client:
            for n in range(100):
                client.set(f"k{n}", n)
            assert client.dbsize() == 100
        ports = [
            int(p[1])
            for p in redis.Redis.from_url(url.split("?")[0]).execute_command("CLUSTER", "SLOTS")
        ]
        assert len(ports) == 2
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--replicas", "1"], "--replicas goes with --cluster"),
        (["--cluster", "2", "--persistent"], "--cluster picks its own ports"),
        (["--cluster", "0"], "expected an integer >= 1"),
    ],
)
def test_bad_cluster_options_are_usage_errors(argv: list[str], fragment: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ailf", "server", *argv], capture_output=True, text=True
    )
    assert done.returncode == 2 and fragment in done.stderr

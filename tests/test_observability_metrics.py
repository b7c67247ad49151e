"""Prometheus metrics: a runtime's endpoint, and a scenario's worker processes' endpoints."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ailf import Agent, Message, RedisConfig, Runtime
from ailf.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


class Picky(Agent):
    """Returns the body, raises on ``{"fail": true}`` (two deliveries, then a dead letter)."""

    max_deliveries = 2

    async def on_message(self, message: Message) -> Any:
        if message.body.get("fail"):
            raise ValueError("picky")
        return message.body


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_the_endpoint_serves_counters_histograms_and_mailbox_gauges(
    redis_config: RedisConfig,
) -> None:
    async with Runtime(
        redis_config,
        namespace="metered",
        metrics_port=0,
        metrics_interval=0.05,
        retry_backoff=0.01,
    ) as runtime:
        assert runtime.metrics_url is not None
        assert runtime.metrics_url.startswith("http://127.0.0.1:")
        await runtime.spawn(Picky, name="picky", replicas=2)
        for n in range(5):
            await runtime.send("picky", {"n": n})
        await runtime.send("picky", {"fail": True})
        assert await runtime.ask("picky", {"asked": 1}) == {"asked": 1}
        await runtime.wait_idle(timeout=10)
        await trio.sleep(0.2)  # a reading of the mailbox gauges after the drain
        samples = await trio.to_thread.run_sync(scrape, runtime.metrics_url)
    ours = {"namespace": "metered", "agent": "picky"}
    assert value(samples, "ailf_messages_handled_total", **ours) == 6
    assert value(samples, "ailf_messages_failed_total", **ours) == 2
    assert value(samples, "ailf_messages_retried_total", **ours) == 1
    assert value(samples, "ailf_messages_dead_lettered_total", **ours) == 1
    assert value(samples, "ailf_messages_received_total", **ours) == 8
    assert value(samples, "ailf_instances", **ours) == 2
    assert value(samples, "ailf_handler_duration_seconds_count", **ours) == 8
    assert value(samples, "ailf_ask_duration_seconds_count", **ours, outcome="ok") == 1
    assert value(samples, "ailf_mailbox_backlog", **ours) == 0
    assert value(samples, "ailf_mailbox_lag", **ours) == 0
    assert value(samples, "ailf_mailbox_pending", **ours) == 0
    assert value(samples, "ailf_dead_letters", **ours) == 1
    assert ("ailf_redis_reconnects_total", (("namespace", "metered"),)) in samples


async def test_the_endpoint_closes_with_the_runtime(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="metered", metrics_port=0) as runtime:
        url = runtime.metrics_url
        assert url is not None
    assert runtime.metrics_url is None
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(scrape, url)


def test_a_bad_metrics_port_fails_where_it_was_written(redis_config: RedisConfig) -> None:
    with pytest.raises(ConfigError, match="metrics_port"):
        Runtime(redis_config, metrics_port=70000)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on loopback now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                taken = socket.socket()
                sockets.append(taken)
                taken.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for taken in sockets:
                taken.close()
    raise RuntimeError("no run of free ports found")


SCENARIO = """
[scenario]
name = "metered-run"
until = "stop"
timeout = 60

[[agents]]
name = "echo"
class = "ailf.agents.echo:Echo"
replicas = 2
processes = 2

[[messages]]
to = "echo"
count = 40
"""


def test_a_scenario_serves_each_worker_process_on_its_own_port(
    tmp_path: Path, redis_config: RedisConfig
) -> None:
    file = tmp_path / "metered.toml"
    file.write_text(SCENARIO)
    port = free_ports(2)
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ailf",
            "run",
            str(file),
            "--redis",
            redis_config.url,
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        ours = {"namespace": "metered-run", "agent": "echo"}
        handled: list[float] = []
        instances: list[float] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                both = [scrape(f"http://127.0.0.1:{p}/metrics") for p in (port, port + 1)]
            # A worker not serving yet: refused, or — the port being free, in the
            # ephemeral range — a connection to itself that reads back its own request.
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
                continue
            handled = [value(s, "ailf_messages_handled_total", **ours) for s in both]
            instances = [value(s, "ailf_instances", **ours) for s in both]
            if sum(handled) == 40:
                break
            time.sleep(0.05)
        # Each process its own endpoint, its own replica; the counts add up to the run's.
        assert sum(handled) == 40, handled
        assert instances == [1, 1]
    finally:
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=30)


async def test_a_broken_connection_made_again_counts_as_a_reconnect(
    redis_config: RedisConfig,
) -> None:
    from ailf import AsyncRedisClient

    async with AsyncRedisClient(redis_config) as client:
        assert client.reconnects == 0
        own = await client.execute_command("CLIENT", "ID")
        async with AsyncRedisClient(redis_config) as other:
            await other.execute_command("CLIENT", "KILL", "ID", own)
        with trio.fail_after(10):
            while True:  # the first command after the kill may fail: it was in flight
                try:
                    await client.ping()
                    break
                except Exception:
                    await trio.sleep(0.01)
        assert client.reconnects == 1


async def test_without_prometheus_client_metrics_say_what_to_install(
    redis_config: RedisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ailf.observability import metrics

    monkeypatch.setattr(metrics, "_prometheus", None)
    with pytest.raises(ImportError, match=r"pip install 'ailf\[metrics\]'"):
        async with Runtime(redis_config, metrics_port=0):
            pass


async def test_a_metrics_port_taken_says_so(redis_config: RedisConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            async with Runtime(redis_config, metrics_port=port):
                pass

"""The ceiling of the client workloads: ``redis-benchmark`` (C, no Python) on the same server.

``redis-benchmark`` ships with Redis (Debian's ``redis-tools``). It bounds what any
client could reach on this machine and server for each client workload:

- one connection, SET/GET, one command at a time (``-c 1 -P 1``): the round-trip ceiling;
- fifty connections, SET/GET (``-c 50 -P 1``): against 50 tasks sharing a client;
- one connection, the client benchmark's XADD pipelined by 100 (``-c 1 -P 100``).
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess

from bench import client as client_bench

RATE = re.compile(r"([\d.]+) requests per second")


def _run(port: int, arguments: list[str]) -> float:
    """Requests per second, averaged over the tests one ``redis-benchmark`` call ran."""
    output = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-q", *arguments],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    finals = [line for line in re.split(r"[\r\n]", output) if "requests per second" in line]
    if not finals:
        raise RuntimeError(f"redis-benchmark printed no rate: {output[-300:]!r}")
    return statistics.mean(float(RATE.search(line).group(1)) for line in finals)


def available() -> bool:
    return shutil.which("redis-benchmark") is not None


def ceilings(port: int, operations: int) -> dict[str, float]:
    """Operations per second of each ceiling, named like the client workloads."""
    fields = [word for pair in client_bench.FIELDS.items() for word in pair]
    xadd = ["XADD", "bench:ceiling", "MAXLEN", "~", "100000", "*", *fields]
    sequential = max(operations // 5, 1000)
    return {
        "tasks": _run(
            port, ["-n", str(operations), "-c", str(client_bench.TASKS), "-t", "set,get"]
        ),
        "sequential": _run(port, ["-n", str(sequential), "-c", "1", "-t", "set,get"]),
        "xadd": _run(
            port, ["-n", str(operations), "-c", "1", "-P", str(client_bench.BATCH), *xadd]
        ),
    }

"""Benchmark roles in processes of their own, and the line protocol the suite drives them by.

Every consumer the suite times — an ailf agent, a hand-written redis-py loop, a peer
framework's worker — runs in a subprocess started as ``python -m bench.<module> ROLE URL
COUNT PREFILL``. It prints one JSON line when it is ready, then obeys commands read from
its stdin, one per line:

- ``go``: start consuming (so that every process starts at once, after the queue was
  filled and every other consumer is connected);
- ``count``: print ``{"count": n}``, the messages handled so far;
- ``stop``: print ``{"count": n, "first": t0, "last": t1}`` and exit at once.

``first`` and ``last`` are ``time.monotonic()`` readings (CLOCK_MONOTONIC, the same clock
in every process on the machine), so the driver can time several processes as one:
from the first message any of them handled to the last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Each role's stderr, overwritten by the next run of that role.
LOGS = ROOT / "bench" / "results" / "logs"


#: Where :func:`emit` writes: stdout, until :meth:`Tally.serve` keeps it for the protocol.
_protocol = sys.stdout


def emit(**figures: Any) -> None:
    """Print one JSON line of figures for the driver."""
    print(json.dumps(figures), file=_protocol, flush=True)


def keep_stdout_for_protocol() -> None:
    """Send everything else printed to stdout (a peer's log lines) to stderr instead."""
    global _protocol
    _protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


class Tally:
    """Counts handled messages and when the first and the last were handled.

    ``hit()`` is meant for one thread (the event loop's); a consumer whose handlers run
    on several threads (Dramatiq) calls it under a lock of its own.
    """

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.go = threading.Event()

    def hit(self) -> None:
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now

    def serve(self) -> None:
        """Answer the driver's commands on a daemon thread (the main thread runs the
        consumer's event loop)."""
        keep_stdout_for_protocol()
        threading.Thread(target=self._commands, daemon=True).start()

    def _commands(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                self.go.set()
            elif command == "count":
                emit(count=self.count)
            elif command == "stop":
                emit(**self.summary())
                os._exit(0)

    def summary(self) -> dict[str, Any]:
        """What ``stop`` prints."""
        return {"count": self.count, "first": self.first, "last": self.last}


class RoleProcess:
    """A role running in ``python -m module``; read its JSON lines, send it commands."""

    def __init__(self, module: str, role: str, url: str, count: int, prefill: bool = False):
        self.role = role
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log = LOGS / f"{module.rpartition('.')[2]}-{role}.log"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, role, url, str(count), str(int(prefill))],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-20:])
            raise RuntimeError(
                f"bench role {self.role!r} exited with {self.process.wait()};"
                f" the end of its log ({self.log}):\n{tail}"
            )
        return json.loads(line)

    def command(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str) -> dict[str, Any]:
        self.command(command)
        return self.read()

    def close(self, wait: float = 0.0) -> None:
        """Wait up to ``wait`` seconds for the role to end by itself, then SIGTERM it
        (SIGKILL if it ignores that for 10 s)."""
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def drain(module: str, role: str, url: str, count: int, processes: int = 1) -> dict[str, Any]:
    """Time ``processes`` consumers of ``role`` draining ``count`` pre-filled messages.

    The first process fills the queue before it says it is ready, and only then are the
    others started (so that none of them sees a half-filled queue); all of them get
    ``go`` together. Returns the messages handled per second (first to last handled, over all
    processes) and how they were shared.
    """
    children = [RoleProcess(module, role, url, count, prefill=True)]
    try:
        children[0].read()
        children += [RoleProcess(module, role, url, count) for _ in range(processes - 1)]
        for child in children[1:]:
            child.read()
        for child in children:
            child.command("go")
        deadline = time.monotonic() + 600
        while sum(child.ask("count")["count"] for child in children) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{role}: {count:,} messages not handled within 600 s")
            time.sleep(0.02)
        finals = [child.ask("stop") for child in children]
    finally:
        for child in children:
            child.close(wait=5)
    handled = sum(final["count"] for final in finals)
    seconds = max(f["last"] for f in finals) - min(f["first"] for f in finals if f["count"])
    return {
        "rate": handled / seconds,
        "messages": handled,
        "seconds": seconds,
        "per_process": [final["count"] for final in finals],
    }

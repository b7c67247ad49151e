"""One worker process of a scenario run (``python -m ailf _worker``), started by the runner.

It loads the scenario file again (the same checks, so a worker never runs something
``ailf check`` would refuse), connects to ``AILF_REDIS_URL``, spawns its share of
each agent's replicas, and then reports to the runner on the events pipe, one JSON
object per line:

- ``{"event": "ready"}`` once every agent is spawned;
- ``{"event": "stats", "agents": {name: counters}}`` every :data:`REPORT_INTERVAL`
  seconds, and once more after the runtime stopped;
- ``{"event": "stop_requested"}`` when an agent called ``runtime.stop()``;
- ``{"event": "stopping", "in_flight": {"worker[3]": 1}, "grace_period": 10.0}`` when
  told to stop: the handlers it lets finish, for at most that many seconds;
- ``{"event": "fatal", "error": "..."}`` when the runtime failed for good (an
  escalated supervision failure, an unreachable Redis).

``stop`` on stdin, or the end of stdin, stops the runtime gracefully: in-flight
handlers finish, what finished is acknowledged, the rest stays pending for others.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import IO, Any

import trio

from ailf.config import RedisConfig
from ailf.errors import AilfError
from ailf.runtime._runtime import Runtime
from ailf.scenario._imports import import_agent_class
from ailf.scenario._load import load_scenario
from ailf.scenario._model import Scenario

__all__ = ["REPORT_INTERVAL", "run_worker"]

#: Seconds between two counter reports to the runner.
REPORT_INTERVAL = 0.1


class _Events:
    """The pipe to the runner: one JSON object per line, flushed at once."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def emit(self, event: str, **fields: Any) -> None:
        try:
            self._stream.write(json.dumps({"event": event, **fields}) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            pass  # the runner is gone; stdin's end will stop us too

    def stats(self, runtime: Runtime) -> None:
        self.emit("stats", agents={s.name: s.to_json() for s in runtime.statistics().values()})


async def _watch_stdin(runtime: Runtime, events: _Events, stopped_by_runner: list[bool]) -> None:
    """Stop the runtime on ``stop`` or at the end of stdin, saying what it waits for."""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        buffered = b""
        while b"stop" not in buffered:
            chunk = await stdin.receive_some()
            if not chunk:
                break
            buffered += chunk
    stopped_by_runner.append(True)
    events.emit("stopping", in_flight=_in_flight(runtime), grace_period=runtime.grace_period)
    runtime.stop()


def _in_flight(runtime: Runtime) -> dict[str, int]:
    """``{"worker[3]": 1}``: the instances with handlers running, and how many each."""
    return {
        f"{cell.spec.name}[{cell.replica}]": cell.in_flight
        for cell in sorted(runtime.cells, key=lambda cell: (cell.spec.name, cell.replica))
        if cell.in_flight
    }


async def _report(runtime: Runtime, events: _Events) -> None:
    while True:
        events.stats(runtime)
        await trio.sleep(REPORT_INTERVAL)


async def _serve(
    scenario: Scenario, process: int, events: _Events, metrics_port: int | None
) -> None:
    config = RedisConfig.from_env()
    stopped_by_runner: list[bool] = []
    async with Runtime(config, namespace=scenario.namespace, metrics_port=metrics_port) as runtime:
        for spec in scenario.agents:
            replicas = spec.replicas_in(process)
            if replicas:
                await runtime.spawn(
                    import_agent_class(spec.class_),
                    name=spec.name,
                    replicas=replicas,
                    options=spec.options,
                    topics=spec.topics,
                    claim_idle=spec.claim_idle,
                    concurrency=spec.concurrency,
                    first_replica=None if spec.keyed else spec.first_replica_in(process),
                    keyed=spec.keyed,
                    partitions=spec.partitions,
                )
        events.emit("ready")
        # runtime.stop() — from the runner via stdin, or from an agent — cancels this
        # body, and with it these two tasks; the runtime then shuts down gracefully.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_stdin, runtime, events, stopped_by_runner)
            nursery.start_soon(_report, runtime, events)
    events.stats(runtime)
    if not stopped_by_runner:
        events.emit("stop_requested")


def run_worker(
    file: str,
    *,
    process: int,
    events_fd: int,
    only: tuple[str, ...] = (),
    metrics_port: int | None = None,
) -> int:
    """The body of ``ailf _worker``: 0 after a graceful stop, 1 after a fatal error.

    ``metrics_port`` is this process's own (the runner adds the process number)."""
    # stdout is a pipe to the runner, which shows each line as it comes: what an agent
    # prints must not wait in a buffer for 8 KB or the end of the process.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(
        level=os.environ.get("AILF_LOG_LEVEL", "WARNING").upper(),
        stream=sys.stderr,
        format=f"%(asctime)s [process {process} pid %(process)d] %(levelname)s %(message)s",
    )
    with os.fdopen(events_fd, "w", encoding="utf-8") as stream:
        events = _Events(stream)
        try:
            scenario = load_scenario(file).only(only)
            trio.run(_serve, scenario, process, events, metrics_port)
        except Exception as exc:
            if not isinstance(exc, AilfError):  # ailf's own errors were logged where raised
                logging.getLogger("ailf.scenario").exception("worker process %d failed", process)
            events.emit("fatal", error=f"{type(exc).__name__}: {exc}")
            return 1
    return 0

"""Run a scenario: worker processes, supervised; messages; the end condition; the summary.

The runner itself hosts no agent. It starts ``scenario.process_count`` worker processes
(``python -m ailf _worker``, see :mod:`ailf.scenario._worker`); process *i* spawns its
share of the replicas of every agent with more than *i* processes. A worker reports
to the runner over a pipe, one JSON line per event (``ready``, ``stats``,
``stop_requested``, ``fatal``), and is told to stop by ``stop`` on its stdin (or by
the end of its stdin, so a runner that dies takes its workers with it).

A worker that dies without reporting a fatal error — killed, crashed — is restarted
with backoff, at most :data:`MAX_RESTARTS` times within :data:`RESTART_PERIOD`
seconds; the messages it held stay pending in Redis and are claimed by the other
replicas (or by its own next incarnation) once idle for ``claim_idle`` seconds. Its
last counters are kept and summed with everything else.

The run sends its messages once every worker is ready, then ends when the scenario's
``until`` condition holds (every mailbox drained; or an agent called
``runtime.stop()``), or fails at its ``timeout``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from ailf._admin import describe_dead_letter, leftovers
from ailf._text import count_of
from ailf.config import RedisConfig, RetryPolicy
from ailf.errors import AilfError, ConfigError, RedisError
from ailf.observability import metrics
from ailf.runtime._mailbox import mailbox_report
from ailf.runtime._runtime import Runtime
from ailf.runtime._statistics import AgentStatistics
from ailf.runtime._supervisor import unwrap
from ailf.scenario._model import FaultSpec, MessageSpec, Scenario
from ailf.scenario._report import Progress, RunReport, check_expectations, combine
from ailf.server import RedisServer

__all__ = ["MAX_RESTARTS", "RESTART_PERIOD", "run_scenario"]

#: A worker process that dies more often than this within RESTART_PERIOD fails the run.
MAX_RESTARTS = 5
RESTART_PERIOD = 30.0
#: The pause before restarting a worker that died: 0.1 s, doubling with each death
#: within RESTART_PERIOD, at most 2 s.
_RESTART_BACKOFF = RetryPolicy(backoff_initial=0.1, backoff_max=2.0, jitter=False)
#: Seconds a worker is given to stop when the run ends: the runtime's own grace period
#: for in-flight handlers (10 s) plus time for on_stop and goodbyes.
STOP_GRACE = 15.0
#: Seconds a worker's output is still read after it exited.
OUTPUT_GRACE = 1.0
#: How many dead letters per agent the summary shows.
DEAD_LETTERS_SHOWN = 5


def _describe_stopping(index: int, event: dict[str, Any]) -> str:
    """A worker's answer to ``stop``: the handlers it waits for, and for how long at most."""
    handlers: dict[str, int] = event.get("in_flight", {})
    if not handlers:
        return f"process {index}: no handler in flight; stopping"
    total = sum(handlers.values())
    which = ", ".join(
        instance if count == 1 else f"{instance} ({count})" for instance, count in handlers.items()
    )
    return (
        f"process {index}: waiting up to {event.get('grace_period', 0):g} s for"
        f" {count_of(total, 'handler')} in flight: {which}"
    )


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerProcess:
    """One of the run's OS processes, restarted when it dies unexpectedly."""

    def __init__(self, index: int, run: ScenarioRun) -> None:
        self.index = index
        self._run = run
        #: The last counters each incarnation reported, oldest first.
        self.snapshots: list[dict[str, AgentStatistics]] = []
        self.restarts = 0
        self.ready = trio.Event()
        self.alive = False
        self.pid: int | None = None
        self._stopping = False
        self._forced = False
        self._process: trio.Process | None = None
        self._crashes: collections.deque[float] = collections.deque()

    async def supervise(self) -> None:
        """Run the worker until the run stops it; restart it when it dies on its own."""
        while not self._stopping:
            code, fatal = await self._run_once()
            if fatal is not None:  # a failure even while stopping: it may explain the stop
                self._run.fail(f"process {self.index}: {fatal}")
                return
            if self._stopping:
                return
            now = trio.current_time()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > RESTART_PERIOD:
                self._crashes.popleft()
            what = f"process {self.index} (pid {self.pid}) {_describe_exit(code)}"
            if len(self._crashes) > MAX_RESTARTS:
                self._run.fail(
                    f"{what}; it died {len(self._crashes)} times within {RESTART_PERIOD:.0f} s,"
                    " giving up (see its log lines above)"
                )
                return
            self.restarts += 1
            self._run.note(f"{what}; restarting it")
            await trio.sleep(_RESTART_BACKOFF.delay(len(self._crashes) - 1))

    async def _run_once(self) -> tuple[int, str | None]:
        read_fd, write_fd = os.pipe()
        try:
            self._process = await trio.lowlevel.open_process(
                self._run.worker_argv(self.index, write_fd),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(write_fd,),
                cwd=self._run.workdir,
                env=self._run.child_env,
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.pid = self._process.pid
        if self._forced:  # kill_now() came while this incarnation was starting
            self._kill_group(self._process)
        elif self._stopping:  # stop() came while this incarnation was starting
            await self._ask_to_stop(self._process)
        self.snapshots.append({})
        fatal: str | None = None
        async with trio.open_nursery() as pumps:
            assert self._process.stdout is not None and self._process.stderr is not None
            pumps.start_soon(self._forward, self._process.stdout, "stdout")
            pumps.start_soon(self._forward, self._process.stderr, "stderr")
            async with trio.lowlevel.FdStream(read_fd) as events:
                buffered = b""
                while chunk := await events.receive_some():
                    buffered += chunk
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        fatal = self._handle(json.loads(line)) or fatal
            code = await self._process.wait()
            # What the worker wrote last is still in the pipes; a process its agents
            # started may hold them open after it is gone, so not for long.
            pumps.cancel_scope.deadline = trio.current_time() + OUTPUT_GRACE
        self.alive = False
        return code, fatal

    async def _forward(self, pipe: trio.abc.ReceiveStream, where: str) -> None:
        """Hand the worker's output on to the run, a line at a time."""
        buffered = b""
        try:
            while chunk := await pipe.receive_some():
                buffered += chunk
                complete, _, buffered = buffered.rpartition(b"\n")
                if complete:
                    self._run.output((complete + b"\n").decode(errors="replace"), where)
        finally:
            if buffered:
                self._run.output(buffered.decode(errors="replace") + "\n", where)

    def _handle(self, event: dict[str, Any]) -> str | None:
        kind = event["event"]
        if kind == "ready":
            self.alive = True
            self.ready.set()
        elif kind == "stats":
            self.snapshots[-1] = {
                name: AgentStatistics.from_json(data) for name, data in event["agents"].items()
            }
            self._run.stats_updated()
        elif kind == "stop_requested":
            self._run.finish("stopped by an agent")
        elif kind == "stopping" and (event.get("in_flight") or self._run.interrupted):
            self._run.say(_describe_stopping(self.index, event))
        elif kind == "fatal":
            return str(event["error"])
        return None

    @staticmethod
    async def _ask_to_stop(process: trio.Process) -> None:
        try:
            assert process.stdin is not None
            await process.stdin.send_all(b"stop\n")
            await process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it is gone already, or was told

    def kill(self) -> int | None:
        """SIGKILL the current incarnation (a fault); the supervisor restarts it."""
        process = self._process
        if process is None or process.returncode is not None:
            return None
        process.send_signal(signal.SIGKILL)
        return process.pid

    def kill_now(self) -> None:
        """A forced stop: SIGKILL the worker and whatever it started, restart nothing.

        What its handlers held stays pending in Redis, as after any crash."""
        self._stopping = self._forced = True
        if self._process is not None:
            self._kill_group(self._process)

    @staticmethod
    def _kill_group(process: trio.Process) -> None:
        # The worker leads its own session (start_new_session), so its group is its pid
        # and holds whatever its agents started.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
                os.killpg(process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Ask the worker to stop gracefully; SIGKILL it after :data:`STOP_GRACE` seconds."""
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        await self._ask_to_stop(process)
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
            return
        self._run.note(f"process {self.index} did not stop within {STOP_GRACE:.0f} s; killed")
        process.kill()


class ScenarioRun:
    """The state of one run; :meth:`main` is the whole of it."""

    def __init__(
        self,
        scenario: Scenario,
        url: str | None,
        json_output: bool,
        only: tuple[str, ...],
        metrics_port: int | None = None,
    ) -> None:
        #: The whole file; ``scenario`` is the part this run hosts (all of it without --only).
        self.whole = scenario
        self.scenario = scenario.only(only)
        self._url = url
        self._only = only
        #: Worker process i serves its metrics on this port + i (None: no metrics).
        self._metrics_port = metrics_port or scenario.scenario.metrics_port
        self.workdir = str(Path(scenario.path).resolve().parent)
        self.child_env: dict[str, str] = {}
        self._progress = Progress(scenario.name, eta=scenario.scenario.until == "idle")
        self._json = json_output
        self.workers = [WorkerProcess(i, self) for i in range(self.scenario.process_count)]
        self._finished = trio.Event()
        self._outcome = ""
        self._problems: list[str] = []
        self._events: list[str] = []
        self._replies: list[dict[str, Any]] = []
        self._sent = trio.Event()
        self._stats_changed = trio.Event()
        #: The signal that interrupted the run, if one did.
        self.interrupted: str | None = None
        #: Set by a second signal: the workers were killed, the run ends at once.
        self.forced = False
        self._run_scope = trio.CancelScope()

    # -- what workers and tasks report ---------------------------------------------------

    def worker_argv(self, index: int, events_fd: int) -> list[str]:
        # -P: ``python -m`` would put the working directory — the scenario's folder —
        # first on sys.path, where a stray attr.py would shadow ``attrs`` before ailf
        # even starts; the worker adds the folder last itself (ailf.scenario._imports).
        script = str(Path(self.scenario.path).resolve())
        argv = [sys.executable, "-P", "-m", "ailf", "_worker", script]
        argv += ["--process", str(index), "--events-fd", str(events_fd)]
        if self._only:
            argv += ["--only", *self._only]
        port = self._metrics_port
        if port is not None:
            argv += ["--metrics-port", str(port + index)]
        return argv

    def finish(self, outcome: str) -> None:
        if not self._finished.is_set():
            self._outcome = outcome
            self._finished.set()

    def fail(self, problem: str) -> None:
        self._problems.append(problem)
        self._progress.note(f"failure: {problem}")
        self._outcome = "failed"
        self._finished.set()

    def note(self, text: str) -> None:
        """A line on stderr that the summary repeats among its events."""
        self._events.append(text)
        self._progress.note(text)

    def say(self, text: str) -> None:
        """A line on stderr only: news while it happens, not worth the summary."""
        self._progress.note(text)

    def stats_updated(self) -> None:
        """A worker reported counters: wake whoever waits for a count to be reached."""
        self._stats_changed.set()
        self._stats_changed = trio.Event()

    def totals(self) -> dict[str, AgentStatistics]:
        return combine(snapshot for w in self.workers for snapshot in w.snapshots)

    # -- the run -------------------------------------------------------------------------

    async def main(self) -> RunReport:
        """The whole run; raises KeyboardInterrupt after a forced stop (a second signal)."""
        started = trio.current_time()
        report: RunReport | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals)
            with self._run_scope:
                report = await self._serve_and_run(started)
            nursery.cancel_scope.cancel()
        if report is None:  # forced: the run scope was cancelled
            raise KeyboardInterrupt
        return report

    async def _serve_and_run(self, started: float) -> RunReport:
        async with trio.open_nursery() as server_nursery:
            url = self._url
            if url is None:
                server = await server_nursery.start(RedisServer().serve)
                url = server.url
                self._progress.note(f"embedded Redis server started at {url}")
            config = RedisConfig.from_url(url)
            self.child_env = {**os.environ, "AILF_REDIS_URL": url}
            try:
                return await self._run_with(config, started)
            finally:
                # Only now, with every worker gone: workers that outlived their Redis
                # would spend their grace period failing to reach it, and say so.
                server_nursery.cancel_scope.cancel()

    async def _run_with(self, config: RedisConfig, started: float) -> RunReport:
        timeout = self.scenario.scenario.timeout
        async with Runtime(config, namespace=self.scenario.namespace) as client:
            await self._warn_of_leftovers(client)
            async with trio.open_nursery() as workers:
                for worker in self.workers:
                    workers.start_soon(worker.supervise)
                try:
                    with trio.move_on_after(timeout - (trio.current_time() - started)):
                        await self._drive(client)
                    if not self._finished.is_set():
                        self.fail(self._timeout_problem(timeout))
                finally:
                    with trio.CancelScope(shield=True):
                        async with trio.open_nursery() as stopping:
                            for worker in self.workers:
                                stopping.start_soon(worker.stop)
            self._progress.done()
            totals = self.totals()
            dead = await self._dead_letters(client, totals)
        problems = list(self._problems)
        # An interrupted run is not expected to be complete: its [expect] tables are moot.
        checks = [] if self.interrupted else check_expectations(self.scenario, totals)
        problems += [f"expected {c.describe()}" for c in checks if not c.ok]
        return RunReport(
            scenario=self.scenario.name,
            namespace=self.scenario.namespace,
            redis=config.url,
            until=self.scenario.scenario.until,
            ok=not problems,
            outcome=self._outcome,
            elapsed=trio.current_time() - started,
            agents=tuple(
                attrs.evolve(totals.get(a.name, AgentStatistics(a.name)), replicas=a.replicas)
                for a in self.scenario.agents
            ),
            processes=len(self.workers),
            restarts=sum(w.restarts for w in self.workers),
            problems=tuple(problems),
            events=tuple(self._events),
            replies=tuple(self._replies),
            dead_letters=dead,
            checks=tuple(checks),
            interrupted=self.interrupted is not None,
        )

    async def _warn_of_leftovers(self, client: Runtime) -> None:
        """Say so when the namespace already holds messages or dead letters (a persistent
        Redis, an earlier run): this run handles them, and its counters include them."""
        found = await leftovers(client, [agent.name for agent in self.scenario.agents])
        if found:
            namespace = self.scenario.namespace
            since = "an earlier run" + (" (or a run of this file elsewhere)" if self._only else "")
            self.note(
                f"warning: namespace {namespace!r} already holds {found.describe()} from {since};"
                f" this run handles them and counts them (ailf reset -n {namespace} clears it)"
            )

    def _timeout_problem(self, timeout: float) -> str:
        until = self.scenario.scenario.until
        waiting = {
            "idle": "every mailbox to drain",
            "stop": "an agent to call runtime.stop()",
        }[until]
        if not all(w.ready.is_set() for w in self.workers):
            waiting = "every worker process to start"
        return f"timed out after {timeout:g} s waiting for {waiting} (until = {until!r})"

    async def _watch_signals(self) -> None:
        """Ctrl-C or SIGTERM ends the run gracefully, with a summary; a second one forces:
        the workers are killed, then the embedded server stops, and nothing more is said."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.forced:
                    continue  # stopping already, as fast as it can
                if self.interrupted:
                    self._force()
                    continue
                self.interrupted = signal.Signals(signum).name
                self.fail(f"interrupted by {self.interrupted}")
                self._outcome = "interrupted"
                self._progress.note(
                    "stopping the workers: handlers in flight may finish"
                    " (press Ctrl-C again to stop at once)"
                )

    def _force(self) -> None:
        self.forced = True
        self.say("stopping at once: worker processes killed; what they held stays pending in Redis")
        for worker in self.workers:
            worker.kill_now()
        self._run_scope.cancel()

    async def _drive(self, client: Runtime) -> None:
        async with trio.open_nursery() as tasks:
            tasks.start_soon(self._show_progress, client)
            tasks.start_soon(self._start_then_send, client, tasks)
            await self._finished.wait()
            tasks.cancel_scope.cancel()

    async def _start_then_send(self, client: Runtime, tasks: trio.Nursery) -> None:
        for worker in self.workers:
            await worker.ready.wait()
        total = sum(m.count for m in self.scenario.messages)
        processes = count_of(len(self.workers), "worker process")
        self._progress.note(f"{processes} ready; sending {count_of(total, 'message')}")
        for fault in self.scenario.faults:
            tasks.start_soon(self._inject, fault)
        for schedule in self.scenario.schedules:
            await client.set_reminder(
                schedule.to,
                schedule.name,
                schedule.body,
                key=schedule.key,
                delay=schedule.delay,
                every=schedule.every,
                cron=schedule.cron,
                timezone=schedule.timezone,
            )
        for message in self.scenario.messages:
            await self._send(client, message)
        self._sent.set()
        if self.scenario.scenario.until == "idle":
            await self._wait_for_messages_from_elsewhere(client)
            await client.wait_idle(names=[a.name for a in self.whole.agents])
            self.finish("every mailbox drained")

    async def _wait_for_messages_from_elsewhere(self, client: Runtime) -> None:
        """With ``--only``, the file's messages may be sent by a run on another host:
        "idle" counts only once something was added to their mailboxes, or an empty
        start would end the run before anything arrived."""
        for target in sorted({m.to for m in self.whole.messages if m.to is not None}):
            # Polling Redis, not local state: there is no event to wait for.
            while not await _has_had_entries(client, target):  # noqa: ASYNC110
                await trio.sleep(0.1)

    async def _send(self, client: Runtime, message: MessageSpec) -> None:
        for _ in range(message.count):
            if message.delay:
                await trio.sleep(message.delay)
            if message.topic is not None:
                await client.publish(message.topic, message.body)
                continue
            assert message.to is not None  # the loader checked: one of to and topic is set
            if message.ask:
                await self._ask(client, message.to, message)
            else:
                await client.send(message.to, message.body, key=message.key)

    async def _ask(self, client: Runtime, to: str, message: MessageSpec) -> None:
        try:
            reply = await client.ask(to, message.body, timeout=10, key=message.key)
        except AilfError as exc:
            error = f"{type(exc).__name__}: {exc}"
            entry = {"to": message.to, "body": message.body, "error": error}
        else:
            entry = {"to": message.to, "body": message.body, "reply": reply}
        self._replies.append(entry)
        if not self._json:
            shown = entry.get("reply", entry.get("error"))
            print(f"ask {message.to} {json.dumps(message.body)} -> {json.dumps(shown)}", flush=True)

    async def _inject(self, fault: FaultSpec) -> None:
        spec = self.scenario.agent(fault.kill)
        worker = self.workers[spec.processes - 1 if fault.process is None else fault.process]
        if fault.after is not None:
            await self._sent.wait()
            await trio.sleep(fault.after)
            when = f"{fault.after:g} s after the messages were sent"
        else:
            wanted = fault.after_processed or 0
            while self.totals().get(fault.kill, AgentStatistics(fault.kill)).processed < wanted:
                await self._stats_changed.wait()
            when = f"once {fault.kill} had processed {fault.after_processed} messages"
        pid = worker.kill()
        where = f"process {worker.index} (pid {pid}, hosting {fault.kill})"
        self.note(f"fault: SIGKILL to {where} {when}")

    async def _show_progress(self, client: Runtime) -> None:
        backlog: int | None = None
        read_at = -math.inf
        while True:
            if trio.current_time() - read_at >= 1.0:  # Redis once a second, not per redraw
                read_at = trio.current_time()
                backlog = await self._backlog(client)
            alive = sum(w.alive for w in self.workers)
            self._progress.update(self.totals(), alive, len(self.workers), backlog=backlog)
            await trio.sleep(0.25)

    async def _backlog(self, client: Runtime) -> int | None:
        """What the scenario's mailboxes hold still (None if Redis would not say)."""
        try:
            return sum(
                [
                    (await mailbox_report(client.client, client.keys, agent.name)).waiting
                    for agent in self.scenario.agents
                ]
            )
        except RedisError:
            return None

    def output(self, text: str, where: str) -> None:
        """A worker's output (its agents' prints, its log lines): written whole lines
        at a time above the progress line; to stderr in a ``--json`` run, whose stdout
        is the summary's."""
        stream = sys.stderr if where == "stderr" or self._json else sys.stdout
        self._progress.output(text, stream)

    async def _dead_letters(
        self, client: Runtime, totals: dict[str, AgentStatistics]
    ) -> dict[str, tuple[str, ...]]:
        found = {}
        for name, stats in totals.items():
            if not stats.dead_lettered:
                continue
            letters = await client.dead_letters(name, count=DEAD_LETTERS_SHOWN)
            found[name] = tuple(
                f"{describe_dead_letter(letter)}; body {json.dumps(letter.body, default=str)}"
                for letter in letters
            )
        return found


async def _has_had_entries(client: Runtime, agent: str) -> bool:
    """Whether anything was ever added to ``agent``'s mailbox (any partition's, for a
    keyed agent): it holds entries, or its group has read some."""
    report = await mailbox_report(client.client, client.keys, agent)
    return report.length > 0 or (report.group is not None and report.group.last_delivered != "0-0")


def run_scenario(
    scenario: Scenario,
    *,
    redis_url: str | None = None,
    only: tuple[str, ...] = (),
    json_output: bool = False,
    metrics_port: int | None = None,
) -> RunReport:
    """Run ``scenario`` to its end and return the report (printed unless ``json_output``).

    ``redis_url`` overrides the file's ``[redis] url``; with neither, an embedded server
    is started for the run and stopped after it. ``only`` restricts the run to some
    agents (see :meth:`Scenario.only`). ``metrics_port`` overrides the file's
    ``[scenario] metrics_port``: worker process *i* serves Prometheus metrics on that
    port plus *i*. Raises :class:`~ailf.errors.RedisError` when
    Redis cannot be reached.
    """
    url = redis_url or scenario.redis.url
    if url:
        RedisConfig.from_url(url)  # a bad --redis URL fails here, before anything starts
    if (metrics_port or scenario.scenario.metrics_port) and not metrics.available():
        raise ConfigError("metrics need prometheus-client: pip install 'ailf[metrics]'")
    run = ScenarioRun(scenario, url, json_output, only, metrics_port)
    try:
        report = trio.run(run.main)
    except BaseExceptionGroup as group:
        # trio's nurseries wrap errors: unwrapped, callers can catch RedisConnectionError.
        raise unwrap(group) from None
    if not json_output:
        print(report.format(), flush=True)
    return report

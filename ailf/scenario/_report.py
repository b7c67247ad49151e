"""What a scenario run reports: live progress on stderr, and the summary at the end.

The summary aggregates the per-agent counters of every process the run started —
including processes that crashed or were killed, whose last report is kept — and
checks the scenario's ``[expect]`` tables against them.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import attrs

from ailf._text import count_of, format_table
from ailf.runtime._statistics import AgentStatistics
from ailf.scenario._model import Scenario

__all__ = ["Check", "Progress", "RunReport", "check_expectations", "combine"]


def combine(snapshots: Iterable[dict[str, AgentStatistics]]) -> dict[str, AgentStatistics]:
    """Sum per-agent statistics over processes (and over incarnations of one process)."""
    parts: dict[str, list[AgentStatistics]] = {}
    for snapshot in snapshots:
        for name, stats in snapshot.items():
            parts.setdefault(name, []).append(stats)
    return {name: AgentStatistics.combine(name, found) for name, found in parts.items()}


@attrs.frozen
class Check:
    """One ``[expect.AGENT]`` counter compared with what the run did."""

    agent: str
    counter: str
    wanted: int
    found: int
    ok: bool

    def describe(self) -> str:
        if self.counter == "processed_at_least":
            claim = f"{self.agent} processed at least {self.wanted}"
            return f"{claim}: {'ok' if self.ok else 'FAILED'} ({self.found})"
        claim = f"{self.agent}.{self.counter} = {self.wanted}"
        return f"{claim}: ok" if self.ok else f"{claim}: FAILED, found {self.found}"


def check_expectations(scenario: Scenario, totals: dict[str, AgentStatistics]) -> list[Check]:
    """Every counter of every ``[expect.AGENT]`` table, compared with the totals."""
    checks = []
    for name, expectation in scenario.expect.items():
        stats = totals.get(name, AgentStatistics(name=name))
        for field in attrs.fields(type(expectation)):
            wanted = getattr(expectation, field.name)
            if wanted is None:
                continue
            if field.name == "processed_at_least":
                found = stats.processed
                ok = found >= wanted
            else:
                found = getattr(stats, field.name)
                ok = found == wanted
            checks.append(Check(name, field.name, wanted, found, ok))
    return checks


@attrs.frozen
class RunReport:
    """The outcome of one ``ailf run``: ``ok`` decides the exit code."""

    scenario: str
    namespace: str
    redis: str
    until: str
    ok: bool
    outcome: str
    elapsed: float
    agents: tuple[AgentStatistics, ...]
    processes: int
    #: Worker processes restarted after they died (an agent instance restarted by its
    #: supervisor inside a process is not one: the process lived on).
    restarts: int = 0
    problems: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    replies: tuple[dict[str, Any], ...] = ()
    dead_letters: dict[str, tuple[str, ...]] = attrs.Factory(dict)
    checks: tuple[Check, ...] = ()
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["agents"] = {stats.name: stats.to_json() for stats in self.agents}
        data["problems"] = list(self.problems)
        data["events"] = list(self.events)
        data["replies"] = list(self.replies)
        data["dead_letters"] = {k: list(v) for k, v in self.dead_letters.items()}
        data["checks"] = [attrs.asdict(check) for check in self.checks]
        return data

    def format(self) -> str:
        """The human summary: a headline, one row per agent, then what went wrong."""
        verdict = "ok" if self.ok else "FAILED"
        lines = [
            f"scenario {self.scenario}: {verdict} — {self.outcome} after {self.elapsed:.1f} s"
            f" (namespace {self.namespace}, {count_of(self.processes, 'process')},"
            f" {count_of(self.restarts, 'process restart')}, redis {self.redis})",
            "",
            _table(self.agents),
        ]
        if self.restarts:
            lines.append(
                "(counters of a process that died are as of its last report, at most 0.1 s"
                " before; what it held was handled again elsewhere)"
            )
        if self.events:
            lines += ["", *(f"  {event}" for event in self.events)]
        if self.checks:
            lines += ["", *(f"expect {check.describe()}" for check in self.checks)]
        for name, reasons in self.dead_letters.items():
            lines.append("")
            lines.append(f"dead letters of {name} (ailf dlq list {name} -n {self.namespace}):")
            lines += [f"  {reason}" for reason in reasons]
        if self.problems:
            lines += ["", *(f"problem: {problem}" for problem in self.problems)]
        return "\n".join(lines)


_COLUMNS = (
    ("agent", "name", "{}"),
    ("replicas", "replicas", "{}"),
    ("received", "received", "{}"),
    ("processed", "processed", "{}"),
    ("failed", "failed", "{}"),
    ("retried", "retried", "{}"),
    ("dead", "dead_lettered", "{}"),
    ("p50 ms", "latency_p50", "{:.2f}"),
    ("p99 ms", "latency_p99", "{:.2f}"),
    ("mean ms", "latency_mean", "{:.2f}"),
)


def _table(rows: Iterable[AgentStatistics]) -> str:
    cells = [[title for title, _, _ in _COLUMNS]]
    for stats in rows:
        row = []
        for _, field, style in _COLUMNS:
            value = getattr(stats, field)
            row.append(style.format(value * 1000 if field.startswith("latency") else value))
        cells.append(row)
    return format_table(cells)


class Progress:
    """One status line on stderr, at most every ``interval`` seconds: the counts, the
    rate over the last :data:`RATE_WINDOW` seconds, the backlog and, when the run ends at
    idle, the time left at that rate.

    On a terminal the line is rewritten in place, and whatever else is written —
    :meth:`note`, the agents' own output through :meth:`output` — is written above it,
    never into it; otherwise (a log file, a pipe) each update is a new line, so logs
    stay readable.
    """

    #: Seconds of counts the rate is computed over (workers report every 0.1 s).
    RATE_WINDOW = 5.0

    def __init__(
        self, name: str, stream: TextIO | None = None, interval: float = 1.0, *, eta: bool = False
    ) -> None:
        self._name = name
        self._stream = stream or sys.stderr
        self._interval = interval
        self._eta = eta
        self._started = time.monotonic()
        self._last = 0.0
        self._tty = self._stream.isatty()
        self._line = ""
        self._counts: collections.deque[tuple[float, int]] = collections.deque()

    def _rate(self, now: float, processed: int) -> float | None:
        counts = self._counts
        counts.append((now, processed))
        while now - counts[0][0] > self.RATE_WINDOW:
            counts.popleft()
        span = now - counts[0][0]
        return (processed - counts[0][1]) / span if span > 0.5 else None

    def update(
        self,
        totals: dict[str, AgentStatistics],
        alive: int,
        processes: int,
        force: bool = False,
        *,
        backlog: int | None = None,
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        processed = sum(s.processed for s in totals.values())
        failed = sum(s.failed for s in totals.values())
        dead = sum(s.dead_lettered for s in totals.values())
        rate = self._rate(now, processed)
        per_agent = " ".join(f"{name}={s.processed}" for name, s in totals.items())
        speed = "" if rate is None else f" ({rate:,.0f}/s)"
        waiting = ""
        if backlog is not None:
            waiting = f" backlog {backlog:,}"
            if self._eta and backlog and rate:
                waiting += f" eta {_duration(backlog / rate)}"
        line = (
            f"[{self._name} {now - self._started:5.1f}s] processed {processed}{speed}"
            f" failed {failed} dead {dead}{waiting} | {per_agent} | processes {alive}/{processes}"
        )
        if self._tty:
            self._stream.write("\r" + line.ljust(len(self._line)))
            self._line = line
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def output(self, text: str, stream: TextIO) -> None:
        """Write ``text`` (whole lines, from an agent's print or logging) to ``stream``
        above the status line, which is drawn again below it."""
        self._clear()
        stream.write(text)
        stream.flush()
        if self._tty and self._line:
            self._stream.write(self._line)
            self._stream.flush()

    def _clear(self) -> None:
        if self._tty and self._line:
            self._stream.write("\r" + " " * len(self._line) + "\r")
            self._stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (a crash, a restart, a fault fired)."""
        elapsed = time.monotonic() - self._started
        self.output(f"[{self._name} {elapsed:5.1f}s] {text}\n", self._stream)

    def done(self) -> None:
        if self._tty and self._line:
            self._stream.write("\n")
            self._stream.flush()
            self._line = ""


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h10m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

"""``ailf top`` and ``ailf run``'s progress line: what a namespace is doing, live."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from rich.console import Console
from runtime_helpers import Echo

from ailf import RedisConfig, Runtime
from ailf._sampling import History, sample
from ailf._top import render, top
from ailf.runtime._statistics import AgentStatistics
from ailf.scenario._report import Progress

ROOT = Path(__file__).resolve().parent.parent


async def test_a_frame_shows_each_agent_its_counts_backlog_and_processes(
    redis_config: RedisConfig,
) -> None:
    async with Runtime(redis_config, namespace="watched", heartbeat_interval=0.05) as runtime:
        await runtime.spawn(Echo, name="echo", replicas=2)
        for n in range(7):
            await runtime.send("echo", {"n": n})
        await runtime.wait_idle(timeout=10)
        for n in range(3):  # waiting for an agent that is not running
            await runtime.send("sleeper", {"n": n})
        history = History()
        await trio.sleep(0.2)  # a heartbeat with the final counters
        first = await sample(runtime.client, "watched", history)
        await runtime.send("echo", {"n": 7})
        await runtime.wait_idle(names=["echo"], timeout=10)
        await trio.sleep(0.2)
        view = await sample(runtime.client, "watched", history)
        console = Console(record=True, width=140, file=io.StringIO())
        console.print(render(view, redis_config.url))
        frame = console.export_text()
    agents = {agent.name: agent for agent in view.agents}
    assert first.agents[0].rate is None  # one reading: no rate yet
    assert agents["echo"].handled == 8
    assert agents["echo"].replicas == 2
    assert agents["echo"].rate is not None and agents["echo"].rate > 0
    assert agents["sleeper"].backlog == 3 and agents["sleeper"].replicas == 0
    assert view.hosts and len(view.processes) == 1
    lines = {line.split()[0]: line.split() for line in frame.splitlines() if line.strip()}
    assert lines["echo"][1:3] == ["2", "1"]  # replicas, processes
    assert lines["echo"][4] == "8"  # handled
    assert lines["sleeper"][5] == "3"  # backlog
    assert "ailf top watched" in frame
    assert runtime.process_id in frame


async def test_top_runs_its_frames_then_returns(redis_config: RedisConfig) -> None:
    async with Runtime(redis_config, namespace="watched") as runtime:
        await runtime.spawn(Echo, name="echo")
        out = io.StringIO()
        await top(
            redis_config,
            "watched",
            interval=0.01,
            iterations=2,
            console=Console(file=out, width=120, force_terminal=False),
        )
    assert "echo" in out.getvalue()


def test_the_command_shows_one_frame_with_iterations_1(redis_config: RedisConfig) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ailf",
            "top",
            "-n",
            "nothing-here",
            "--redis",
            redis_config.url,
            "--iterations",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "no agents in this namespace" in result.stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_has_a_rate_a_backlog_and_an_eta_and_output_goes_above_it() -> None:
    screen = Terminal()
    progress = Progress("demo", screen, interval=0, eta=True)
    progress.RATE_WINDOW = 60.0
    stats = {"echo": AgentStatistics("echo", processed=0)}
    progress.update(stats, 1, 1, backlog=100)
    progress._counts[0] = (progress._counts[0][0] - 2.0, 0)  # two seconds ago: 0 processed
    progress.update({"echo": AgentStatistics("echo", processed=100)}, 1, 1, backlog=100)
    line = screen.getvalue().rsplit("\r", 1)[-1]
    assert "processed 100 (50/s)" in line
    assert "backlog 100 eta 2s" in line
    printed = Terminal()
    progress.output("hello from a handler\n", printed)
    # The status line was wiped before the agent's line, and drawn again after it.
    assert screen.getvalue().endswith("\r" + " " * len(line) + "\r" + line)
    assert printed.getvalue() == "hello from a handler\n"


def test_without_rich_top_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ailf import cli

    monkeypatch.setitem(sys.modules, "rich", None)
    assert cli.main(["top", "-n", "any"]) == cli.EXIT_USAGE
    assert "ailf top needs rich: pip install 'ailf[top]'" in capsys.readouterr().err

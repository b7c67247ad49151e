"""``ailf top``: a namespace's agents live in the terminal, refreshed until ``q`` or Ctrl-C.

Needs rich (``pip install 'ailf[top]'``); the command line says so when it is missing.
Everything shown comes from Redis (:mod:`ailf._sampling`), so it works from any host that
can reach it, and shows every process of the namespace wherever it runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Iterator

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ailf._sampling import History, NamespaceView, sample
from ailf.clients._async_client import AsyncRedisClient
from ailf.config import RedisConfig

__all__ = ["render", "top"]


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def render(view: NamespaceView, redis: str = "") -> RenderableType:
    """One frame: a headline, a row per agent, a row per live process."""
    hosts = ", ".join(view.hosts) or "no host"
    headline = Text.assemble(
        ("ailf top ", "bold"),
        (view.namespace, "bold cyan"),
        f"  {len(view.processes)} live process{'es' if len(view.processes) != 1 else ''}"
        f" on {hosts}",
        f"  {redis}" if redis else "",
        f"  {time.strftime('%H:%M:%S', time.localtime(view.taken_at))}",
    )
    agents = Table(expand=True, box=None, header_style="bold")
    for title in ("agent", "replicas", "procs", "rate/s", "handled", "backlog", "lag"):
        agents.add_column(title, justify="left" if title == "agent" else "right")
    for title in ("in flight", "failed", "retried", "dead"):
        agents.add_column(title, justify="right")
    for agent in view.agents:
        agents.add_row(
            agent.name,
            str(agent.replicas),
            str(agent.processes),
            _rate(agent.rate),
            _count(agent.handled),
            _count(agent.backlog),
            _count(agent.lag),
            _count(agent.pending),
            Text(_count(agent.failed), style="red" if agent.failed else ""),
            _count(agent.retried),
            Text(_count(agent.dead_letters), style="bold red" if agent.dead_letters else ""),
        )
    processes = Table(expand=True, box=None, header_style="bold")
    for title in ("process", "host", "pid", "agents", "heartbeat", "up"):
        processes.add_column(title)
    for process in view.processes:
        processes.add_row(
            process["id"],
            process["host"],
            str(process["pid"]),
            ", ".join(f"{name}({n})" for name, n in process["agents"].items()) or "-",
            f"{process['heartbeat_age']:.1f}s ago",
            f"{process['uptime']:.0f}s",
        )
    listed: RenderableType = agents
    if not view.agents:
        listed = Text("no agents in this namespace (yet)", style="dim")
    parts: list[RenderableType] = [headline, Text(), listed, Text(), processes]
    problems = [f"{agent.name}: {agent.problem}" for agent in view.agents if agent.problem]
    parts += [Text(f"problem: {problem}", style="red") for problem in problems]
    if not view.complete:
        parts.append(Text("(this Redis user may not SCAN: only live processes' agents)"))
    parts.append(Text("in flight: delivered, not yet acknowledged.  q or Ctrl-C quits", "dim"))
    return Group(*parts)


@contextlib.contextmanager
def _keys_one_by_one() -> Iterator[bool]:
    """The terminal in cbreak mode (a key arrives without Enter), restored afterwards;
    yields False when stdin is no terminal (then only Ctrl-C quits)."""
    if not sys.stdin.isatty():
        yield False
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait_for_q(quit: trio.Event) -> None:
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as keys:
        while chunk := await keys.receive_some():
            if b"q" in chunk.lower():
                break
    quit.set()


async def top(
    config: RedisConfig,
    namespace: str,
    *,
    interval: float = 1.0,
    iterations: int | None = None,
    console: Console | None = None,
) -> None:
    """Show ``namespace`` every ``interval`` seconds until ``q``, Ctrl-C, or after
    ``iterations`` frames (the last one stays on the screen)."""
    console = console or Console()
    history = History()
    quit = trio.Event()
    async with AsyncRedisClient(config) as client, trio.open_nursery() as nursery:
        with _keys_one_by_one() as keys, Live(console=console, auto_refresh=False) as live:
            if keys:
                nursery.start_soon(_wait_for_q, quit)
            shown = 0
            while not quit.is_set():
                view = await sample(client, namespace, history)
                live.update(render(view, config.url), refresh=True)
                shown += 1
                if iterations is not None and shown >= iterations:
                    break
                with trio.move_on_after(interval):
                    await quit.wait()
        nursery.cancel_scope.cancel()

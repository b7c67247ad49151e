"""What runtime tests in several files share: a runtime in a child process, an echo agent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import trio

from ailf.runtime import Agent, Message

CHILD = Path(__file__).with_name("runtime_child.py")


def child_runtime(
    url: str, namespace: str, **spec: Any
) -> AbstractContextManager[subprocess.Popen[str]]:
    """A real OS process running ``runtime_child.py`` with ``spec``; killed on exit."""
    spec = {"url": url, "namespace": namespace, **spec}
    return child_process(CHILD, json.dumps(spec))


@contextmanager
def child_process(script: Path, *arguments: str) -> Iterator[subprocess.Popen[str]]:
    """``python script arguments…`` as a real OS process, its stdout piped; killed on exit."""
    process = subprocess.Popen(
        [sys.executable, str(script), *arguments], stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


async def ready(process: subprocess.Popen[str]) -> None:
    """Wait until the child printed ``ready`` (its agents are spawned)."""
    assert process.stdout is not None
    line = await trio.to_thread.run_sync(process.stdout.readline)
    assert line.strip() == "ready", f"child exited with {process.poll()}"


class Echo(Agent):
    """Answers with the body; records broadcasts in ``Echo.heard`` (reset it per test)."""

    topics = ("news",)
    heard: list[Any] = []

    async def on_message(self, message: Message) -> Any:
        if message.topic is not None:
            Echo.heard.append(message.body)
        return message.body

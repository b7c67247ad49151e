"""Looking at real processes from tests: is a server still running, who are a process's
children, does anything still answer on a port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

#: For tests that read the process table (Linux's /proc).
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="reads the process table in /proc"
)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or None if there is no
    such process. The name is in parentheses and may hold spaces, hence the split."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie counts as gone: an orphan is reaped by whoever
    adopts it, and some init processes take their time."""
    if Path("/proc/self/stat").exists():
        fields = _stat_fields(pid)
        return fields is not None and fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def in_group(pgid: int) -> list[int]:
    """The running pids of process group ``pgid`` (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and fields[2] == str(pgid):
                found.append(int(entry.name))
    return found


def command_name(pid: int) -> str:
    """The executable's name (``redis-server``...), or "" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def answers(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False

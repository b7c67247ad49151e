"""The chaos run, sized for CI: ``bench/chaos.py run`` with 20,000 messages.

Three worker processes, one SIGKILLed and replaced every two seconds, the Redis server
(AOF, ``appendfsync always``) SIGKILLed and restarted halfway: every message must be
processed at least once, and every ask made meanwhile must come back with its answer or
a clear error — never hang. The long mode (100,000 messages) is run by hand; its
figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


def run_chaos(*argv: str, timeout: float) -> dict:
    result = subprocess.run(
        [sys.executable, str(CHAOS), *argv, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    logging.getLogger("ailf.test").warning("%s: %s", argv[0], figures)
    assert result.returncode == 0, (figures, result.stderr[-3000:])
    return figures


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_run_loses_nothing() -> None:
    figures = run_chaos(
        "run", "--messages", "20000", "--rate", "1500", "--kill-every", "2", timeout=200
    )
    assert figures["lost"] == 0
    assert figures["processed_distinct"] == 20_000
    assert figures["dead_letters"] == 0
    assert figures["worker_kills"] >= 4
    assert figures["redis_restarts"] == 1
    # Asks in flight during the faults: an answer or a clear error, never a hang.
    assert figures["asks_answered"] > 0
    assert figures["asks_wrong_answer"] == 0
    assert figures["asks_other_error"] == []
    assert figures["ask_longest_seconds"] <= figures["ask_timeout"] + 2
    assert figures["duplicates"] >= 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_overload_run_stays_bounded_and_drains() -> None:
    figures = run_chaos("overload", "--seconds", "5", "--limit", "500", timeout=100)
    assert figures["lost"] == 0 and figures["handled"] == figures["sent"]
    assert figures["backlog_max"] <= figures["mailbox_limit"]
    assert figures["mailbox_full_errors"] == 0  # senders waited, well within send_timeout
    assert figures["redis_used_memory_max"] - figures["redis_used_memory_before"] < 20 * 2**20

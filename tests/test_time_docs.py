"""docs/time.md's example runs as written, against a throwaway server (its
``RedisConfig.from_env()`` reads ``AILF_REDIS_URL``), and prints what the page says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ailf import RedisConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "time.md"


def test_the_documented_example_runs(redis_config: RedisConfig, tmp_path: Path) -> None:
    (block,) = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    script = tmp_path / "time_example.py"
    script.write_text(block)
    environment = {**os.environ, "AILF_REDIS_URL": redis_config.url}
    done = subprocess.run(
        [sys.executable, str(script)], env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    got = [line for line in lines if line.startswith("billing got")]
    assert got[:2] == ["billing got {'follow_up': True}", "billing got {'x': 1}"]
    assert set(got[2:]) == {"billing got {'x': 2}", "billing got {'followed': True}"}
    assert "billing got {'x': 3}" not in lines
    assert any(line.startswith("[('invoice', '0 6 1 * *', ") for line in lines)

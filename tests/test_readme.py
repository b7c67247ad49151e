"""The README's examples: the Python block runs, the two commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ailf import RedisServer

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_python_example_runs(redis_server: RedisServer, tmp_path: Path) -> None:
    (code,) = _blocks("python")
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    env = {**os.environ, "AILF_REDIS_URL": redis_server.url}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'hello': 'ask'}"


def test_the_commands_are_the_ones_ci_runs() -> None:
    run_command, test_command = (block.strip() for block in _blocks("sh")[:2])
    assert run_command.endswith("ailf run scenarios/quickstart.toml")
    assert Path(README.parent, "scenarios/quickstart.toml").exists()
    ci = Path(README.parent, ".ci/run").read_text()
    for step in test_command.split(" && "):
        assert step.replace("'", '"') in ci.replace("'", '"'), step


def test_scenario_example_is_valid(tmp_path: Path) -> None:
    (toml,) = _blocks("toml")
    path = tmp_path / "readme.toml"
    path.write_text(toml)
    result = subprocess.run(
        [sys.executable, "-m", "ailf", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

"""``ailf.testing``: the example in docs/testing.md runs, as a user would run it — a
separate pytest session with the plugin turned on in its conftest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "testing.md"


def _named_blocks() -> dict[str, str]:
    """``python`` blocks of the doc whose first line is ``# <file name>.py``."""
    blocks: dict[str, str] = {}
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
        first = block.splitlines()[0]
        match = re.fullmatch(r"# (\w+\.py)", first)
        if match and match[1] not in blocks:
            blocks[match[1]] = block
    return blocks


def test_the_doc_has_the_example_and_its_conftest() -> None:
    assert {"conftest.py", "test_ledger.py"} <= set(_named_blocks())


@pytest.mark.timeout(180)
def test_the_documented_example_passes(tmp_path: Path) -> None:
    for name, text in _named_blocks().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


@pytest.mark.timeout(180)
def test_the_fixtures_do_not_clash_with_a_project_of_its_own(tmp_path: Path) -> None:
    """A project may have fixtures named like ours without the prefix (ailf's own
    suite has ``redis_server``); the plugin's are all ``ailf_*``."""
    (tmp_path / "conftest.py").write_text(
        'import pytest\n\npytest_plugins = ["ailf.testing"]\n\n\n'
        "@pytest.fixture\ndef redis_server():\n    return 'mine'\n"
    )
    (tmp_path / "test_names.py").write_text(
        "def test_both(redis_server, ailf_server, ailf_namespace):\n"
        "    assert redis_server == 'mine'\n"
        "    assert ailf_server.url.startswith('redis://127.0.0.1:')\n"
        "    assert ailf_namespace.startswith('test-test_both-')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr

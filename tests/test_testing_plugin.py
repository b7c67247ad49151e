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


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own in ``folder``, as a user's project would run it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(folder)],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=folder,
    )


def test_the_doc_has_the_example_and_its_conftest() -> None:
    assert {"conftest.py", "test_ledger.py"} <= set(_named_blocks())


@pytest.mark.timeout(180)
def test_the_documented_example_passes(tmp_path: Path) -> None:
    for name, text in _named_blocks().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    result = _pytest(tmp_path)
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
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_trio_mode_the_failure_says_what_to_set(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["ailf.testing"]\n')
    (tmp_path / "test_plain.py").write_text(
        "async def test_async(ailf_runtime):\n    pass\n\n\n"
        "def test_sync(ailf_runtime):\n    pass\n"
    )
    result = _pytest(tmp_path)
    assert result.returncode == 1
    for name in ("test_async", "test_sync"):
        assert (
            f"{name} uses ailf_runtime, which runs under trio: set trio_mode = true in your"
            " pytest configuration"
        ) in result.stdout
    assert "AssertionError" not in result.stdout
    assert "no plugin or hook that handled it" not in result.stdout


def test_valkeylites_fixtures_go_with_its_plugin(tmp_path: Path) -> None:
    """docs/testing.md: ``-p no:valkey`` leaves the ailf fixtures the only Redis ones."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["ailf.testing"]\n')
    listed = _pytest(tmp_path, "--fixtures", "-p", "no:valkey").stdout
    assert "ailf_runtime" in listed
    assert "valkey" not in listed.replace("no:valkey", "")

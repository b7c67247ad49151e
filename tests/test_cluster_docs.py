"""docs/cluster.md's examples run on a real cluster, as written (``cluster_url`` is the
cluster the page's reader started with ``ailf server --cluster 3``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ailf import RedisClusterServer

DOC = Path(__file__).resolve().parent.parent / "docs" / "cluster.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)


def test_the_page_has_examples() -> None:
    assert len(python_blocks()) == 3


@pytest.mark.parametrize("number", range(3))
def test_the_examples_run(number: int, capsys: pytest.CaptureFixture[str]) -> None:
    with RedisClusterServer(primaries=3, replicas=0) as cluster:
        namespace: dict[str, Any] = {"__name__": "docs_cluster", "cluster_url": cluster.url}
        exec(compile(python_blocks()[number], f"docs/cluster.md block {number}", "exec"), namespace)
    if number == 1:
        assert "keys of 2 hash slots in one MGET" in capsys.readouterr().out
    if number == 2:
        assert "ada visited 3 times" in capsys.readouterr().out

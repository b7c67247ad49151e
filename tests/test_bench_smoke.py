"""The benchmark suite's quick mode runs end to end: every workload, JSON, table, charts.

Figures are not checked (the machine is shared and the counts are tiny); what is checked
is that each workload ran, handled every message it sent, and reported every target.
Peers and charts are covered when the ``bench`` extra is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAVE_CHARTS = importlib.util.find_spec("matplotlib") is not None


def run_bench(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *map(str, arguments)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


def test_quick_suite_runs_every_workload(tmp_path: Path) -> None:
    images = tmp_path / "img"
    charts = [] if HAVE_CHARTS else ["--no-charts"]
    done = run_bench("--quick", "--results", tmp_path, "--images", images, *charts)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "latest-quick.json").read_text())
    counts = results["counts"]
    meta = results["meta"]
    for field in ("python", "trio", "redis_py", "redis_server", "load_average"):
        assert meta[field], field

    assert [row["key"] for row in results["client"]] == ["tasks", "sequential", "xadd"]
    assert all(row["ailf"] and row["baseline"] for row in results["client"])
    for key in ("ailf_1", "ailf_2", "redis_py_1", "redis_py_2"):
        assert results["tell"][key]["messages"] == counts["tell"]
        assert all(rate > 0 for rate in results["tell"][key]["rates"])
    for key in ("ailf", "redis_py"):
        assert results["ask"][key]["samples"] == counts["asks"]
        assert results["fanout"][key]["samples"] == counts["broadcasts"]
        assert results["fanout"][key]["incomplete"] == 0
    assert results["agents"]["agents"] == counts["agents"]
    assert all(isinstance(target["holds"], bool) for target in results["targets"])

    assert "| target | measured | holds |" in done.stdout
    if HAVE_CHARTS:
        pngs = sorted(path.name for path in images.glob("*.png"))
        assert pngs == ["bench-client.png", "bench-latency.png", "bench-tell.png"]
        assert all(path.read_bytes().startswith(b"\x89PNG") for path in images.glob("*.png"))

    again = run_bench("--from-json", tmp_path / "latest-quick.json", "--no-charts")
    assert again.returncode == 0, again.stderr[-3000:]
    assert done.stdout.splitlines()[-5:] == again.stdout.splitlines()[-5:]


def test_the_observability_bench_measures_every_setting() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.observability", "--count", "300", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for setting in ("off", "metrics", "tracing", "both"):
        assert f"| {setting} | " in done.stdout
    assert "do-nothing hooks:" in done.stdout

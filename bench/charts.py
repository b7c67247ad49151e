"""PNG charts of a suite run (matplotlib, the ``bench`` extra), for docs/performance.md.

One chart per question a reader asks: how fast is the client next to redis-py and the
C ceiling; how many messages a second reach an agent next to a hand-written loop and
the peers; how long an ask and a broadcast take. Every bar is labelled with its
figure, and the axes start at zero, so bar lengths compare honestly.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

#: File name -> the chart's title (also its alt text in the docs).
CHARTS = {
    "bench-client.png": "Client layer: operations per second",
    "bench-tell.png": "Tell throughput: messages consumed per second",
    "bench-latency.png": "Ask and broadcast latency",
}

AILF = "#1f77b4"
BASELINE = "#7f7f7f"
CEILING = "#c7c7c7"
PEER = "#ff7f0e"


def _thousands(value: float, _position: int) -> str:
    return f"{value / 1000:,.0f}k" if value else "0"


def _bars(axis: Any, labels: list[str], values: list[float], colors: list[str], unit: str) -> None:
    positions = range(len(labels))
    axis.barh(positions, values, color=colors)
    axis.set_yticks(list(positions), labels)
    axis.invert_yaxis()
    axis.set_xlim(0, max(values) * 1.3)
    axis.xaxis.set_major_formatter(FuncFormatter(_thousands))
    for position, value in zip(positions, values, strict=True):
        axis.text(value, position, f"  {value:,.0f}{unit}", va="center", fontsize=9)
    axis.spines[["top", "right"]].set_visible(False)


def client_chart(results: dict[str, Any], path: Path) -> None:
    rows = results["client"]
    figure, axes = plt.subplots(len(rows), 1, figsize=(9, 1.5 + 1.4 * len(rows)))
    for axis, row in zip(axes, rows, strict=True):
        labels = ["ailf AsyncRedisClient", row["baseline_name"]]
        values = [statistics.median(row["ailf"]), statistics.median(row["baseline"])]
        colors = [AILF, BASELINE]
        if row["ceiling"]:
            labels.append("redis-benchmark (C ceiling)")
            values.append(row["ceiling"])
            colors.append(CEILING)
        _bars(axis, labels, values, colors, "")
        axis.set_title(
            f"{row['workload']} — ailf {statistics.median(row['ratios']):.1f}x redis-py",
            loc="left",
            fontsize=10,
        )
    axes[-1].set_xlabel("operations per second (median of runs)")
    figure.suptitle(CHARTS[path.name], x=0.01, ha="left", fontweight="bold")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def tell_chart(results: dict[str, Any], path: Path) -> None:
    tell = results["tell"]
    keys = [
        key
        for key in (
            "ailf_1",
            "ailf_2",
            "redis_py_1",
            "redis_py_2",
            "faststream_quiet",
            "faststream",
            "dramatiq",
        )
        if key in tell
    ]
    colors = [
        AILF if k.startswith("ailf") else BASELINE if k.startswith("redis") else PEER for k in keys
    ]
    figure, axis = plt.subplots(figsize=(9, 0.5 + 0.45 * len(keys) + 0.8))
    _bars(
        axis,
        [tell[key]["label"] for key in keys],
        [statistics.median(tell[key]["rates"]) for key in keys],
        colors,
        "",
    )
    axis.set_xlabel("messages consumed per second (median of runs; ~150-byte JSON messages)")
    axis.set_title(CHARTS[path.name], loc="left", fontweight="bold")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def latency_chart(results: dict[str, Any], path: Path) -> None:
    panels = [
        (
            "ask round trip (sequential, echo in another process)",
            [
                ("ailf runtime.ask", results["ask"]["ailf"], AILF),
                ("hand-written redis-py asyncio", results["ask"]["redis_py"], BASELINE),
            ]
            + (
                [("FastStream request/reply", results["ask"]["faststream"], PEER)]
                if "faststream" in results["ask"]
                else []
            ),
        ),
        (
            "broadcast to 10 subscribed handlers (slowest of the 10)",
            [
                ("ailf publish -> 10 agents", results["fanout"]["ailf"], AILF),
                (
                    "hand-written redis-py, 10 subscriptions",
                    results["fanout"]["redis_py"],
                    BASELINE,
                ),
            ],
        ),
    ]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    percentiles = [("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")]
    for axis, (title, series) in zip(axes, panels, strict=True):
        width = 0.8 / len(series)
        for n, (label, figures, color) in enumerate(series):
            xs = [k + n * width for k in range(len(percentiles))]
            values = [figures[key] for key, _ in percentiles]
            axis.bar(xs, values, width, label=label, color=color)
            for x, value in zip(xs, values, strict=True):
                axis.text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
        axis.set_xticks(
            [k + width * (len(series) - 1) / 2 for k in range(len(percentiles))],
            [name for _, name in percentiles],
        )
        axis.set_ylabel("milliseconds")
        axis.set_ylim(0, max(f[key] for _, f, _ in series for key, _ in percentiles) * 1.35)
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8, frameon=False, loc="upper left")
        axis.spines[["top", "right"]].set_visible(False)
    figure.suptitle(CHARTS[path.name], x=0.01, ha="left", fontweight="bold")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw(results: dict[str, Any], directory: Path) -> list[Path]:
    """Draw every chart of ``results`` into ``directory``; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn = []
    for name, chart in zip(CHARTS, (client_chart, tell_chart, latency_chart), strict=True):
        chart(results, directory / name)
        drawn.append(directory / name)
    return drawn

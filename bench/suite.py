"""The benchmark suite: ailf, raw Redis clients and peer frameworks side by side, one run.

``python -m bench`` (from the repository root) starts a throwaway ``redis-server``, runs
every workload with its baselines in the same run, prints a table, writes the results
as JSON to ``bench/results/`` and draws the charts into ``docs/img/``. ``--quick`` is
the smoke run CI does (small counts, one repetition, seconds); ``--write-docs`` also
replaces the figures in ``docs/performance.md``; ``--from-json FILE`` redraws the table,
charts and docs from an earlier run without measuring.

The workloads themselves live beside this module: the client layer's in
:mod:`bench.client`, the runtime's in :mod:`bench.runtime`, tell throughput in
:mod:`bench.tell`, broadcast fan-out in :mod:`bench.fanout`, the peers in
:mod:`bench.peers` and the ``redis-benchmark`` ceiling in :mod:`bench.ceiling`.
Comparisons are ratios of figures measured in the same run: the machine is assumed to
be shared, so absolute figures move between runs more than ratios do.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

from ailf import RedisConfig, RedisServer
from bench import ceiling, fanout, peers
from bench import client as client_bench
from bench import runtime as runtime_bench
from bench.machine import describe, machine
from bench.process import ROOT, RoleProcess, drain

RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "docs" / "img"
DOCS = ROOT / "docs" / "performance.md"
MARK_START = "<!-- bench/suite.py figures: start -->"
MARK_END = "<!-- bench/suite.py figures: end -->"

#: Message and operation counts of a full run and of a quick (smoke) run.
FULL = {
    "runs": 3,
    "client_scale": 1.0,
    "tell": 200_000,
    "peer_messages": 20_000,
    "asks": 10_000,
    "broadcasts": 2_000,
    "agents": 10_000,
    "keyed": 50_000,
    "keyed_asks": 2_000,
}
QUICK = {
    "runs": 1,
    "client_scale": 0.02,
    "tell": 5_000,
    "peer_messages": 500,
    "asks": 300,
    "broadcasts": 100,
    "agents": 200,
    "keyed": 2_000,
    "keyed_asks": 100,
}


def _url(config: RedisConfig) -> str:
    return f"redis://{config.host}:{config.port}/0"


def _flush(config: RedisConfig) -> None:
    with redis.Redis(**config.redis_py_kwargs()) as client:
        client.flushall()


def _percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p99 and p99.9 of samples in seconds, in milliseconds."""
    ordered = sorted(samples)
    last = len(ordered) - 1

    def at(fraction: float) -> float:
        return ordered[min(int(len(ordered) * fraction), last)] * 1000

    return {"p50": at(0.50), "p99": at(0.99), "p999": at(0.999), "samples": len(ordered)}


# -- workloads ---------------------------------------------------------------------------


def client_workloads(config: RedisConfig, counts: dict[str, Any]) -> list[dict[str, Any]]:
    """Workload 1: each of bench.client's workloads, taking turns with its baseline."""
    scale = counts["client_scale"]
    limits = ceiling.ceilings(config.port, int(200_000 * scale)) if ceiling.available() else {}
    rows = []
    for key, workload in zip(("tasks", "sequential", "xadd"), client_bench.WORKLOADS, strict=True):
        name, ours, base_name, base, base_kind, operations, target = workload
        segments = client_bench.SEGMENTS
        count = max(int(operations * scale) // segments, client_bench.TASKS * client_bench.BATCH)
        ailf, baseline = [], []
        for _ in range(counts["runs"]):
            our_rate, base_rate = client_bench.alternate(ours, base, base_kind, config, count)
            baseline.append(base_rate)
            ailf.append(our_rate)
        rows.append(
            {
                "key": key,
                "workload": name,
                "operations": count * segments,
                "ailf": ailf,
                "baseline_name": base_name,
                "baseline": baseline,
                "ratios": [a / b for a, b in zip(ailf, baseline, strict=True)],
                "ceiling": limits.get(key),
                "target": target,
            }
        )
    _flush(config)
    return rows


#: Tell consumers: (result key, module, role, processes, label).
TELL = [
    ("ailf_1", "bench.tell", "ailf", 1, "ailf, no-op agent, 1 process"),
    ("ailf_2", "bench.tell", "ailf", 2, "ailf, no-op agent, 2 processes"),
    ("redis_py_1", "bench.tell", "redis-py", 1, "hand-written redis-py loop, 1 process"),
    ("redis_py_2", "bench.tell", "redis-py", 2, "hand-written redis-py loop, 2 processes"),
    ("faststream", "bench.peers", "faststream", 1, "FastStream, defaults (logs each message)"),
    ("faststream_quiet", "bench.peers", "faststream-quiet", 1, "FastStream, no message logs"),
    ("dramatiq", "bench.peers", "dramatiq", 1, "Dramatiq, 1 worker process (8 threads)"),
]


def tell_workloads(config: RedisConfig, counts: dict[str, Any]) -> dict[str, Any]:
    """Workloads 2 and 6: tell throughput, one and two consumer processes, and peers."""
    installed = peers.versions()
    results: dict[str, Any] = {}
    for _ in range(counts["runs"]):
        for key, module, role, processes, label in TELL:
            if module == "bench.peers" and role.partition("-")[0] not in installed:
                continue
            count = counts["peer_messages"] if module == "bench.peers" else counts["tell"]
            _flush(config)
            figures = drain(module, role, _url(config), count, processes)
            entry = results.setdefault(key, {"label": label, "messages": count, "rates": []})
            entry["rates"].append(figures["rate"])
    _flush(config)
    return results


def _faststream_asks(config: RedisConfig, count: int) -> list[float]:
    echo = peers_process("faststream-echo", config, 0)
    try:
        echo.read()
        asker = peers_process("faststream-ask", config, count)
        try:
            return asker.read()["samples"]
        finally:
            asker.close(wait=10)
    finally:
        echo.close()


def ask_workloads(config: RedisConfig, counts: dict[str, Any]) -> dict[str, Any]:
    """Workloads 3 and 6: sequential asks to an echo in another process.

    Each run asks through ailf, then the hand-written redis-py ask, then FastStream
    (a quarter as many: it is several times slower); the percentiles are over the
    samples of all runs pooled, so that a burst of load from elsewhere falls on every
    side rather than on whichever ran during it.
    """
    askers = {
        "ailf": runtime_bench.ailf_ask_samples,
        "redis_py": runtime_bench.baseline_ask_samples,
    }
    if "faststream" in peers.versions():
        askers["faststream"] = _faststream_asks
    samples: dict[str, list[float]] = {key: [] for key in askers}
    for _ in range(counts["runs"]):
        for key, asks in askers.items():
            count = counts["asks"] // 4 if key == "faststream" else counts["asks"]
            samples[key] += asks(config, count)
    _flush(config)
    return {key: _percentiles(values) for key, values in samples.items()}


def peers_process(role: str, config: RedisConfig, count: int) -> RoleProcess:
    return RoleProcess("bench.peers", role, _url(config), count)


def fanout_workloads(config: RedisConfig, counts: dict[str, Any]) -> dict[str, Any]:
    """Workload 4: broadcast to ten subscribed handlers, slowest of the ten; runs
    alternate between ailf and redis-py, percentiles over all runs' broadcasts."""
    slowest: dict[str, list[float]] = {"ailf": [], "redis_py": []}
    incomplete = dict.fromkeys(slowest, 0)
    for _ in range(counts["runs"]):
        for kind, key in (("ailf", "ailf"), ("redis-py", "redis_py")):
            figures = fanout.fan_out(kind, config, counts["broadcasts"])
            slowest[key] += figures["slowest"]
            incomplete[key] += figures["incomplete"]
    _flush(config)
    return {
        key: {**_percentiles(values), "incomplete": incomplete[key]}
        for key, values in slowest.items()
    }


def agents_workload(config: RedisConfig, counts: dict[str, Any]) -> dict[str, Any]:
    """Workload 5: many agents in one process (bench.runtime's)."""
    figures = runtime_bench.many(config, counts["agents"])
    _flush(config)
    return figures


def keyed_workload(config: RedisConfig, counts: dict[str, Any]) -> dict[str, Any]:
    """Workload 6: tell and ask through a keyed agent with state (bench.runtime's)."""
    rates, samples = [], []
    for _ in range(counts["runs"]):
        rate, asked = runtime_bench.keyed_samples(config, counts["keyed"], counts["keyed_asks"])
        rates.append(rate)
        samples += asked
    _flush(config)
    return {"rates": rates, "ask": _percentiles(samples)}


# -- the run -----------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    counts = QUICK if quick else FULL
    results: dict[str, Any] = {"mode": "quick" if quick else "full", "counts": counts}
    load = [os.getloadavg()[0]]
    started = time.monotonic()
    with RedisServer() as server:
        config = server.config
        results["meta"] = machine(config)
        steps = [
            ("client", client_workloads),
            ("tell", tell_workloads),
            ("ask", ask_workloads),
            ("fanout", fanout_workloads),
            ("agents", agents_workload),
            ("keyed", keyed_workload),
        ]
        for key, step in steps:
            print(f"running {key} ...", file=sys.stderr, flush=True)
            results[key] = step(config, counts)
            load.append(os.getloadavg()[0])
    results["meta"]["load_average"] = {"min": min(load), "max": max(load), "samples": load}
    results["meta"]["seconds"] = time.monotonic() - started
    results["targets"] = targets(results)
    return results


# -- targets and the table ---------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the benchmark issue: what was measured and whether it holds."""
    found = []

    def check(name: str, measured: float, limit: float, higher: bool, unit: str) -> None:
        holds = measured >= limit if higher else measured <= limit
        found.append(
            {
                "target": name,
                "measured": measured,
                "limit": limit,
                "higher_is_better": higher,
                "unit": unit,
                "holds": holds,
            }
        )

    for row in results["client"]:
        check(
            f"client, {row['workload']}: ailf / {row['baseline_name']}",
            _median(row["ratios"]),
            row["target"],
            True,
            "x",
        )
    tell = results["tell"]
    ours = _median(tell["ailf_1"]["rates"])
    check("tell, 1 process: ailf msg/s", ours, 20_000, True, "msg/s")
    fast = [
        _median(tell[key]["rates"]) for key in ("faststream", "faststream_quiet") if key in tell
    ]
    if fast:
        check(
            "tell, 1 process: ailf / FastStream (its faster setting)",
            ours / max(fast),
            4,
            True,
            "x",
        )
    ask = results["ask"]
    check("ask p50 (ms)", ask["ailf"]["p50"], 0.6, False, "ms")
    check("ask p99 (ms)", ask["ailf"]["p99"], 1.5, False, "ms")
    check(
        "ask p50: ailf / hand-written redis-py",
        ask["ailf"]["p50"] / ask["redis_py"]["p50"],
        2,
        False,
        "x",
    )
    check(
        "ask p99: ailf / hand-written redis-py",
        ask["ailf"]["p99"] / ask["redis_py"]["p99"],
        2,
        False,
        "x",
    )
    agents = results["agents"]
    check(f"{agents['agents']:,} agents: Redis connections", agents["connections"], 8, False, "")
    check(f"{agents['agents']:,} agents: RSS (MB)", agents["rss_mb"], 500, False, "MB")
    check(
        f"{agents['agents']:,} agents: all answered (s)",
        agents["all_answered_seconds"],
        10,
        False,
        "s",
    )
    return found  # fmt: skip


def _rate(values: list[float]) -> str:
    return f"{_median(values):,.0f}"


def _latency(figures: dict[str, float]) -> str:
    return f"{figures['p50']:.2f} / {figures['p99']:.2f} / {figures['p999']:.2f}"


#: Short names of the peers' configurations, for the ratio column.
SHORT = {
    "faststream": "FastStream (defaults)",
    "faststream_quiet": "FastStream (no message logs)",
    "dramatiq": "Dramatiq",
}


def _latency_ratio(ours: dict[str, float], theirs: dict[str, float], name: str) -> str:
    return (
        f"{ours['p50'] / theirs['p50']:.2f}x / {ours['p99'] / theirs['p99']:.2f}x"
        f" / {ours['p999'] / theirs['p999']:.2f}x {name}"
    )


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table (medians over the runs), then the targets."""
    lines = [
        "| workload | ailf | compared with, same run | ailf / that (throughput: higher is"
        " faster; latency: lower is faster) |",
        "| --- | --- | --- | --- |",
    ]
    for row in results["client"]:
        limit = f"; `redis-benchmark` ceiling {row['ceiling']:,.0f}" if row["ceiling"] else ""
        lines.append(
            f"| client: {row['workload']}, ops/s | {_rate(row['ailf'])}"
            f" | {row['baseline_name']}: {_rate(row['baseline'])}{limit}"
            f" | {_median(row['ratios']):.2f}x redis-py |"
        )
    tell = results["tell"]
    for processes in (1, 2):
        ours = _median(tell[f"ailf_{processes}"]["rates"])
        others = [f"hand-written redis-py loop: {_rate(tell[f'redis_py_{processes}']['rates'])}"]
        ratios = [f"{ours / _median(tell[f'redis_py_{processes}']['rates']):.2f}x redis-py"]
        if processes == 1:
            for key in ("faststream", "faststream_quiet", "dramatiq"):
                if key in tell:
                    others.append(f"{tell[key]['label']}: {_rate(tell[key]['rates'])}")
                    ratios.append(f"{ours / _median(tell[key]['rates']):.1f}x {SHORT[key]}")
        lines.append(
            f"| tell: a no-op agent, {processes} consumer process{'es' if processes > 1 else ''},"
            f" msg/s | {ours:,.0f} | {'; '.join(others)} | {'; '.join(ratios)} |"
        )
    ask = results["ask"]
    others = [f"hand-written redis-py asyncio ask: {_latency(ask['redis_py'])}"]
    ratios = [_latency_ratio(ask["ailf"], ask["redis_py"], "redis-py")]
    if "faststream" in ask:
        others.append(f"FastStream request/reply: {_latency(ask['faststream'])}")
        ratios.append(_latency_ratio(ask["ailf"], ask["faststream"], "FastStream"))
    lines.append(
        f"| ask round trip, p50 / p99 / p99.9 ms ({ask['ailf']['samples']:,} asks)"
        f" | {_latency(ask['ailf'])} | {'; '.join(others)} | {'; '.join(ratios)} |"
    )
    fan = results["fanout"]
    lines.append(
        f"| broadcast to 10 agents, slowest handler, p50 / p99 / p99.9 ms"
        f" ({fan['ailf']['samples']:,} broadcasts) | {_latency(fan['ailf'])}"
        f" | hand-written redis-py, 10 subscriptions: {_latency(fan['redis_py'])}"
        f" | {_latency_ratio(fan['ailf'], fan['redis_py'], 'redis-py')} |"
    )
    agents = results["agents"]
    lines.append(
        f"| {agents['agents']:,} agents in one process | spawned in"
        f" {agents['spawn_seconds']:.1f} s; all answered after"
        f" {agents['all_answered_seconds']:.1f} s; {agents['connections']} Redis"
        f" connections; RSS {agents['rss_mb']:.0f} MB | — | — |"
    )
    keyed = results["keyed"]
    lines.append(
        f"| tell to a keyed agent with state (50 senders, 1,000 keys, a state commit per"
        f" message), msg/s | {_rate(keyed['rates'])} | — | — |"
    )
    lines.append(
        f"| ask a keyed agent with state, p50 / p99 / p99.9 ms ({keyed['ask']['samples']:,}"
        f" asks) | {_latency(keyed['ask'])} | — | — |"
    )
    lines += ["", "| target | measured | holds |", "| --- | --- | --- |"]
    for target in results["targets"]:
        sign = ">=" if target["higher_is_better"] else "<="
        unit = target["unit"] if target["unit"] in ("", "x") else f" {target['unit']}"
        limit = f"{sign} {target['limit']:,g}{unit}"
        value = target["measured"]
        # Three decimals for ratios, so that 1.098x (a miss of a 1.1x target) never reads 1.10x.
        decimals = 3 if target["unit"] == "x" else 2
        measured = f"{value:,.{decimals if value < 100 and not float(value).is_integer() else 0}f}"
        measured += f" {target['unit']}" if target["unit"] not in ("", "x") else target["unit"]
        lines.append(
            f"| {target['target']} {limit} | {measured} | {'yes' if target['holds'] else 'NO'} |"
        )
    return "\n".join(lines)


def _runs(runs: int) -> str:
    return "one run" if runs == 1 else f"medians of {runs} runs"


def conditions(results: dict[str, Any]) -> str:
    meta = results["meta"]
    load = meta["load_average"]
    peers_used = ", ".join(
        f"{name} {meta[name]}" for name in ("faststream", "dramatiq") if meta.get(name)
    )
    return (
        f"Measured {meta['date']} by `python -m bench` ({results['mode']} run,"
        f" {_runs(results['counts']['runs'])} of each throughput workload) on"
        f" {describe(meta)}{'; peers: ' + peers_used if peers_used else ''}. The"
        f" 1-minute load average (anything else running shows there) was"
        f" {load['min']:.1f} to {load['max']:.1f} during the run, which took"
        f" {meta['seconds']:.0f} s."
    )


# -- output ------------------------------------------------------------------------------


def save(results: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"suite-{results['mode']}-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    (directory / f"latest-{results['mode']}.json").write_text(json.dumps(results, indent=2))
    return path


def write_docs(results: dict[str, Any], images: Path) -> None:
    """Replace the suite's figures in docs/performance.md (between its markers)."""
    relative = os.path.relpath(images, DOCS.parent)
    charts = "\n\n".join(
        f"![{title}]({relative}/{name})" for name, title in charts_module().CHARTS.items()
    )
    block = f"{MARK_START}\n{conditions(results)}\n\n{table(results)}\n\n{charts}\n{MARK_END}"
    text = DOCS.read_text()
    if MARK_START not in text:
        raise RuntimeError(f"{DOCS} lacks the marker {MARK_START!r}: add it where figures go")
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    DOCS.write_text(pattern.sub(lambda _: block, text))


def charts_module() -> Any:
    """bench.charts, imported late: matplotlib is a bench-only extra."""
    from bench import charts

    return charts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run (CI smoke)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where JSON goes")
    parser.add_argument("--images", type=Path, default=IMAGES, help="where the PNG charts go")
    parser.add_argument("--no-charts", action="store_true", help="skip the charts")
    parser.add_argument("--write-docs", action="store_true", help="update docs/performance.md")
    parser.add_argument("--from-json", type=Path, help="report an earlier run, measure nothing")
    arguments = parser.parse_args(argv)

    if arguments.from_json:
        results = json.loads(arguments.from_json.read_text())
    else:
        results = run(arguments.quick)
        print(f"results: {save(results, arguments.results)}", file=sys.stderr)
    print(conditions(results))
    print()
    print(table(results))
    if not arguments.no_charts:
        for path in charts_module().draw(results, arguments.images):
            print(f"chart: {path}", file=sys.stderr)
    if arguments.write_docs:
        write_docs(results, arguments.images)

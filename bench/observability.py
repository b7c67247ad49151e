"""What seeing inside costs: tell throughput with tracing and metrics off, and on.

A no-op agent drains a mailbox pre-filled with N envelopes (``bench.runtime``'s body,
each carrying a W3C ``traceparent`` header as a traced sender's would), in this process,
under four settings measured in turn, round after round, so that they share the
machine's ups and downs:

* ``off``: neither (the do-nothing observer every runtime has by default);
* ``metrics``: ``metrics_port=0`` (Prometheus counters read at scrape time, one
  histogram observation per message);
* ``tracing``: an OpenTelemetry SDK tracer provider with a batch span processor and an
  exporter that drops what it gets (the span work without the network);
* ``both``.

Each figure is the median over the rounds, and its ratio to ``off`` of the same run.
With both off, the only cost left is the runtime calling the do-nothing hooks: that is
timed on its own, per message, and given as a share of a message's time at the ``off``
rate. ``python -m bench.observability [--count N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Sequence
from typing import Any

import redis
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ailf import Agent, Message, RedisConfig, RedisServer, Runtime
from ailf.observability import NO_OBSERVER
from ailf.runtime._message import decode_envelope, encode_envelope
from bench import runtime as runtime_bench
from bench.machine import describe, machine

#: A sender's trace context, as every pre-filled envelope carries it.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SETTINGS = {
    "off": {"tracing": False},
    "metrics": {"tracing": False, "metrics_port": 0},
    "tracing": {"tracing": True},
    "both": {"tracing": True, "metrics_port": 0},
}


class Dropped(SpanExporter):
    """Takes every span and sends it nowhere."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Sink(Agent):
    """Counts messages; sets ``done`` at the expected count."""

    expected = 0
    seen = 0
    done: trio.Event

    async def on_message(self, message: Message) -> None:
        Sink.seen += 1
        if Sink.seen == Sink.expected:
            Sink.done.set()


def prefill(config: RedisConfig, count: int) -> None:
    client = redis.Redis(**config.redis_py_kwargs())
    client.delete(runtime_bench.MAILBOX)
    text = encode_envelope(runtime_bench.BODY, sender="bench", headers={"traceparent": TRACEPARENT})
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(runtime_bench.MAILBOX, {"envelope": text})
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.close()


async def drain(config: RedisConfig, count: int, settings: dict[str, Any]) -> float:
    """Messages per second a no-op agent handles from a full mailbox."""
    Sink.expected, Sink.seen, Sink.done = count, 0, trio.Event()
    async with Runtime(
        config, namespace=runtime_bench.NAMESPACE, batch_size=runtime_bench.BATCH, **settings
    ) as runtime:
        started = time.perf_counter()
        await runtime.spawn(Sink, name="sink")
        await Sink.done.wait()
        return count / (time.perf_counter() - started)


def hook_cost() -> float:
    """Seconds the do-nothing hooks add per handled message: ``with`` on the constant
    ``observer.handling(...)`` returns, less the call of an empty function (timeit's own)."""
    message = decode_envelope(encode_envelope(runtime_bench.BODY), message_id="1-0")
    observer = NO_OBSERVER

    def hooks() -> None:
        with observer.handling("sink", message):
            pass

    def nothing() -> None:
        pass

    number = 200_000

    def best(function: Any) -> float:
        return min(timeit.repeat(function, number=number, repeat=5)) / number

    return max(0.0, best(hooks) - best(nothing))


def run(count: int, rounds: int) -> dict[str, Any]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with RedisServer() as server:
        conditions = describe(machine(server.config))
        for _ in range(rounds):
            for name, settings in SETTINGS.items():
                prefill(server.config, count)
                rates[name].append(trio.run(drain, server.config, count, settings))
    provider.shutdown()
    medians = {name: statistics.median(found) for name, found in rates.items()}
    cost = hook_cost()
    return {
        "machine": conditions,
        "count": count,
        "rounds": rounds,
        "rates": rates,
        "medians": medians,
        "ratios": {name: medians[name] / medians["off"] for name in medians},
        "hook_seconds": cost,
        "hook_share": cost * medians["off"],
    }


def report(results: dict[str, Any]) -> str:
    lines = [
        f"tell throughput, a no-op agent draining {results['count']:,} messages,"
        f" median of {results['rounds']} rounds ({results['machine']})",
        "",
        "| setting | messages/s | vs off |",
        "| --- | ---: | ---: |",
    ]
    for name, rate in results["medians"].items():
        lines.append(f"| {name} | {rate:,.0f} | {results['ratios'][name]:.2f}x |")
    lines += [
        "",
        f"do-nothing hooks: {results['hook_seconds'] * 1e9:.0f} ns per message,"
        f" {results['hook_share']:.2%} of a message's time at the off rate",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30_000, help="messages per drain")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the four settings")
    args = parser.parse_args(argv)
    print(report(run(args.count, args.rounds)))


if __name__ == "__main__":
    main()

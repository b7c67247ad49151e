"""OpenTelemetry tracing: one trace across agents and processes, failures on the spans.

Each side runs in a process of its own with the SDK's in-memory exporter
(tests/traced_child.py), as two services of an application would; the suite's own
process sets no tracer provider, so every other test runs untraced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ailf import RedisConfig, Runtime
from ailf.observability import NO_OBSERVER, tracing
from ailf.runtime._message import encode_envelope

CHILD = Path(__file__).with_name("traced_child.py")


def spans_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [span for span in spans if span["name"] == name]
    assert len(found) == 1, (name, [span["name"] for span in spans])
    return found[0]


def test_an_ask_chain_across_two_processes_is_one_trace(
    redis_config: RedisConfig, tmp_path: Path
) -> None:
    spec = {"url": redis_config.url, "namespace": "traced"}
    back_spans, front_spans = tmp_path / "back.jsonl", tmp_path / "front.jsonl"
    with subprocess.Popen(
        [
            sys.executable,
            str(CHILD),
            json.dumps({**spec, "role": "back", "spans": str(back_spans)}),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as back:
        assert back.stdout is not None and back.stdin is not None
        try:
            assert back.stdout.readline().strip() == "ready"
            front = subprocess.run(
                [
                    sys.executable,
                    str(CHILD),
                    json.dumps({**spec, "role": "front", "spans": str(front_spans)}),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            back.stdin.close()
        assert front.returncode == 0, front.stderr
        assert json.loads(front.stdout) == {"front": {"back": {"n": 1}}}
        assert back.wait(timeout=30) == 0

    front_side, back_side = spans_of(front_spans), spans_of(back_spans)
    ask_front = one(front_side, "ask front")
    process_front = one(front_side, "process front")
    ask_back = one(front_side, "ask back")
    process_back = one(back_side, "process back")
    # One trace, each span the child of the one that caused it, across the processes.
    chain = [ask_front, process_front, ask_back, process_back]
    assert {span["trace_id"] for span in chain} == {ask_front["trace_id"]}
    assert ask_front["parent_id"] is None
    assert process_front["parent_id"] == ask_front["span_id"]
    assert ask_back["parent_id"] == process_front["span_id"]
    assert process_back["parent_id"] == ask_back["span_id"]
    assert [span["kind"] for span in chain] == ["CLIENT", "CONSUMER", "CLIENT", "CONSUMER"]
    assert process_back["attributes"]["messaging.system"] == "redis"
    assert process_back["attributes"]["messaging.operation.type"] == "process"
    assert process_back["attributes"]["messaging.destination.name"] == "back"
    assert process_back["attributes"]["ailf.delivery_count"] == 1
    assert (
        process_back["attributes"]["messaging.message.id"]
        == ask_back["attributes"]["messaging.message.id"]
    )
    assert ask_back["attributes"]["messaging.operation.type"] == "send"
    assert ask_back["attributes"]["messaging.operation.name"] == "ask"
    assert all(span["status"] == "UNSET" for span in chain)

    # A keyed agent's span names the key it handled, a child of the ask.
    process_ledger = one(front_side, "process ledger")
    assert process_ledger["attributes"]["ailf.key"] == "k1"
    assert process_ledger["parent_id"] == one(front_side, "ask ledger")["span_id"]

    # The failing agent: two deliveries, both ERROR with the exception; a retry after the
    # first, the dead letter after the second; both children of the one send.
    send_flaky = one(front_side, "send flaky")
    deliveries = sorted(
        (span for span in front_side if span["name"] == "process flaky"),
        key=lambda span: span["attributes"]["ailf.delivery_count"],
    )
    assert [span["attributes"]["ailf.delivery_count"] for span in deliveries] == [1, 2]
    for span in deliveries:
        assert span["status"] == "ERROR"
        assert span["parent_id"] == send_flaky["span_id"]
        assert span["trace_id"] == send_flaky["trace_id"]
        exception = next(e for e in span["events"] if e["name"] == "exception")
        assert exception["attributes"]["exception.type"] == "ValueError"
    assert [e["name"] for e in deliveries[0]["events"]] == ["exception", "ailf.retry"]
    assert [e["name"] for e in deliveries[1]["events"]] == ["exception", "ailf.dead_letter"]
    reason = deliveries[1]["events"][1]["attributes"]["ailf.dead_letter.reason"]
    assert reason == "handler failed on delivery 2 of 2"


def test_the_trace_context_travels_in_the_envelope_headers() -> None:
    """The wire format: ``traceparent`` is one more header, which older runtimes pass on
    to handlers as they would any header (docs/wire-format.md)."""
    text = encode_envelope(
        {"n": 1}, headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    )
    assert json.loads(text)["headers"]["traceparent"].startswith("00-1111")


async def test_without_a_tracer_provider_the_runtime_keeps_the_do_nothing_observer(
    redis_config: RedisConfig,
) -> None:
    assert tracing.available() and not tracing.configured()
    async with Runtime(redis_config, namespace="untraced") as runtime:
        assert runtime.observer is NO_OBSERVER


async def test_tracing_asked_for_without_the_api_says_what_to_install(
    redis_config: RedisConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_trace", None)
    assert not tracing.available() and not tracing.configured()
    async with Runtime(redis_config, namespace="untraced") as runtime:
        assert runtime.observer is NO_OBSERVER  # None: off, quietly
    with pytest.raises(ImportError, match=r"pip install 'ailf\[otel\]'"):
        async with Runtime(redis_config, tracing=True):
            pass

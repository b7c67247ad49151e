"""A traced runtime in a process of its own, for tests/test_observability_tracing.py.

Run as ``python tests/traced_child.py '<json spec>'``. It sets an OpenTelemetry SDK
tracer provider with an in-memory exporter (as an application would, with OTLP), then
plays ``spec["role"]``:

- ``back``: runs agent ``back`` (answers ``{"back": body}``), prints ``ready``, serves
  until stdin ends;
- ``front``: runs agent ``front`` (whose handler asks ``back``) and agent ``flaky``
  (raises, two deliveries at most) and keyed agent ``ledger``, asks ``front`` once and
  ``ledger`` once (key ``k1``), sends ``flaky`` one message and waits for its dead
  letter, then stops and prints the reply.

Either way it writes every finished span to ``spec["spans"]``, one JSON object a line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import attrs
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ailf import Agent, Message, RedisConfig, Runtime


class Back(Agent):
    async def on_message(self, message: Message) -> Any:
        return {"back": message.body}


class Front(Agent):
    async def on_message(self, message: Message) -> Any:
        return {"front": await self.runtime.ask("back", message.body, timeout=10)}


@attrs.define
class Visits:
    count: int = 0


class Ledger(Agent):
    """A keyed agent: its ``process`` span carries the key."""

    state_type = Visits

    async def on_message(self, message: Message) -> Any:
        self.state.count += 1
        return self.state.count


class Flaky(Agent):
    max_deliveries = 2

    async def on_message(self, message: Message) -> Any:
        raise ValueError("flaky on purpose")


def span_json(span: Any) -> dict[str, Any]:
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes),
        "events": [{"name": e.name, "attributes": dict(e.attributes)} for e in span.events],
    }


async def main(spec: dict[str, Any]) -> None:
    async with Runtime(
        RedisConfig.from_url(spec["url"]), namespace=spec["namespace"], retry_backoff=0.01
    ) as runtime:
        if spec["role"] == "back":
            await runtime.spawn(Back, name="back")
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)
            return
        await runtime.spawn(Front, name="front")
        await runtime.spawn(Flaky, name="flaky")
        await runtime.spawn(Ledger, name="ledger", keyed=True, partitions=2)
        reply = await runtime.ask("front", {"n": 1}, timeout=10)
        assert await runtime.ask("ledger", None, key="k1", timeout=10) == 1
        await runtime.send("flaky", {"poison": True})
        with trio.fail_after(10):
            while not await runtime.dead_letters("flaky"):  # noqa: ASYNC110 - polling Redis
                await trio.sleep(0.02)
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        trio.run(main, spec)
    finally:
        with open(spec["spans"], "w") as out:
            for span in exporter.get_finished_spans():
                out.write(json.dumps(span_json(span)) + "\n")

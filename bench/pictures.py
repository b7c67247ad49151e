"""The pictures of docs/observability.md, made from a real run: a trace, ailf top, the dashboard.

A throwaway Redis, one namespace ``shop`` with three agents kept busy for a while
(``orders`` asks ``billing`` for each order; ``flaky`` fails now and then and
dead-letters some), and this process's OpenTelemetry SDK provider with an in-memory
exporter. Then:

* ``docs/img/observability-trace.svg``: the waterfall of one order's trace;
* ``docs/img/observability-top.svg``: ``ailf top``'s frame, as rich exports it;
* ``docs/img/observability-dashboard.png``: the dashboard in headless chromium.

``python -m bench.pictures`` (needs chromium and chromedriver for the last one).
"""

from __future__ import annotations

import html
import io
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from ailf import Agent, Message, RedisConfig, RedisServer, Runtime
from ailf._dashboard import Dashboard
from ailf._sampling import History, sample
from ailf._top import render

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"
NAMESPACE = "shop"
#: Seconds of traffic before the pictures are taken (the dashboard's chart needs some).
BUSY_FOR = 40.0


class Orders(Agent):
    async def on_message(self, message: Message) -> Any:
        invoice = await self.runtime.ask("billing", message.body, timeout=10)
        await trio.sleep(0.002)
        return {"order": message.body["order"], "invoice": invoice}


class Billing(Agent):
    async def on_message(self, message: Message) -> Any:
        await trio.sleep(0.004)
        return {"amount": 12 * message.body["qty"]}


class Flaky(Agent):
    max_deliveries = 2

    async def on_message(self, message: Message) -> None:
        if message.body["n"] % 7 == 0:
            raise RuntimeError("payment gateway timed out")


def _waterfall(spans: list[Any]) -> str:
    """An SVG of one trace: a bar per span, indented under its parent."""
    by_id = {span.context.span_id: span for span in spans}
    children: dict[int | None, list[Any]] = {}
    for span in sorted(spans, key=lambda s: s.start_time):
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in by_id else None, []).append(span)
    rows: list[tuple[int, Any]] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            rows.append((depth, span))
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    start = min(span.start_time for span in spans)
    end = max(span.end_time for span in spans)
    width, label, row = 900, 330, 26
    scale = (width - label - 70) / (end - start)
    colors = {"CLIENT": "#2563eb", "PRODUCER": "#0891b2", "CONSUMER": "#16a34a"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(rows) + 40}"'
        ' font-family="system-ui, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{row * len(rows) + 40}" fill="#ffffff"/>',
        f'<text x="8" y="18" font-weight="bold">one trace: {len(rows)} spans,'
        f" {(end - start) / 1e6:.1f} ms</text>",
    ]
    for index, (depth, span) in enumerate(rows):
        y = 30 + index * row
        x = label + (span.start_time - start) * scale
        bar = max(2.0, (span.end_time - span.start_time) * scale)
        failed = span.status.status_code.name == "ERROR"
        color = "#dc2626" if failed else colors.get(span.kind.name, "#6b7280")
        parts.append(
            f'<text x="{8 + 16 * depth}" y="{y + 15}">{html.escape(span.name)}'
            f' <tspan fill="#6b7280">{span.kind.name.lower()}</tspan></text>'
        )
        parts.append(
            f'<rect x="{x:.1f}" y="{y + 4}" width="{bar:.1f}" height="14" rx="2" fill="{color}"/>'
        )
        parts.append(
            f'<text x="{x + bar + 6:.1f}" y="{y + 15}" fill="#374151">'
            f"{(span.end_time - span.start_time) / 1e6:.2f} ms</text>"
        )
        for event in span.events:
            ex = label + (event.timestamp - start) * scale
            parts.append(f'<circle cx="{ex:.1f}" cy="{y + 11}" r="3" fill="#111827"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def _trace_of_one_order(exporter: InMemorySpanExporter) -> list[Any]:
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "ask orders" and s.parent is None)
    return [s for s in spans if s.context.trace_id == root.context.trace_id]


def _screenshot(url: str, path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#agents tr[data-agent="flaky"]')
        )
        driver.find_element(
            By.CSS_SELECTOR, '#agents tr[data-agent="flaky"] button.show-letters'
        ).click()
        WebDriverWait(driver, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#letters-table tr[data-dead-letter]")
        )
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


async def busy_namespace(config: RedisConfig, exporter: InMemorySpanExporter) -> None:
    async with (
        Runtime(config, namespace=NAMESPACE, heartbeat_interval=0.5, retry_backoff=0.05) as one,
        Runtime(config, namespace=NAMESPACE, heartbeat_interval=0.5, retry_backoff=0.05) as two,
    ):
        await one.spawn(Orders, name="orders", replicas=2, concurrency=4)
        await two.spawn(Billing, name="billing", replicas=3, concurrency=4)
        await two.spawn(Flaky, name="flaky")
        with Dashboard(config, NAMESPACE, port=0) as dashboard:
            async with trio.open_nursery() as traffic:

                async def order(n: int) -> None:
                    await one.ask("orders", {"order": n, "qty": 1 + n % 3}, timeout=10)

                async def shop() -> None:
                    n = 0
                    while True:
                        n += 1
                        traffic.start_soon(order, n)
                        await one.send("flaky", {"n": n})
                        await trio.sleep(0.01 + 0.01 * (n // 500 % 2))

                traffic.start_soon(shop)
                await trio.sleep(BUSY_FOR)
                history = History()
                await sample(one.client, NAMESPACE, history)
                await trio.sleep(2.5)
                view = await sample(one.client, NAMESPACE, history)
                console = Console(record=True, width=118, file=io.StringIO())
                console.print(render(view, config.url))
                console.save_svg(str(IMAGES / "observability-top.svg"), title="ailf top -n shop")
                if shutil.which("chromium") and shutil.which("chromedriver"):
                    await trio.to_thread.run_sync(
                        _screenshot, dashboard.url, IMAGES / "observability-dashboard.png"
                    )
                else:
                    print(
                        "no chromium: the dashboard screenshot is left as it was", file=sys.stderr
                    )
                traffic.cancel_scope.cancel()
    (IMAGES / "observability-trace.svg").write_text(_waterfall(_trace_of_one_order(exporter)))


def main() -> None:
    logging.getLogger("ailf").setLevel(logging.CRITICAL)  # flaky's failures are on purpose
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    with RedisServer() as server:
        trio.run(busy_namespace, server.config, exporter)
    print(f"pictures written to {IMAGES}")


if __name__ == "__main__":
    main()

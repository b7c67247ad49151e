"""docs/reliability.md's idempotent agent does what the page says: every payment sent
twice (as a retrying producer would) is booked once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from ailf import RedisConfig, Runtime

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


def documented_ledger() -> type:
    (block,) = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    namespace: dict[str, Any] = {"__name__": "docs_reliability"}
    exec(compile(block, "docs/reliability.md", "exec"), namespace)
    return namespace["Ledger"]


async def test_the_documented_ledger_books_each_payment_once(redis_config: RedisConfig) -> None:
    ledger = documented_ledger()
    payments = [{"payment_id": f"p{n}", "account": f"a{n % 3}", "cents": 100} for n in range(30)]
    with trio.fail_after(30):
        async with Runtime(redis_config, namespace="docs") as runtime:
            await runtime.spawn(ledger, name="ledger", replicas=2)
            for payment in payments + payments:
                await runtime.send("ledger", payment)
            await runtime.wait_idle(timeout=20)
            balances = await runtime.client.hgetall("ledger:balances")
    assert balances == {"a0": "1000", "a1": "1000", "a2": "1000"}

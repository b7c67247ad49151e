"""docs/wire-format.md's typed-bodies example runs as the page says: an Order sent
arrives as an Order, and the reply comes back as one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from ailf import RedisConfig, Runtime

DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"


def documented_example() -> dict[str, Any]:
    (block,) = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    namespace: dict[str, Any] = {"__name__": "docs_wire_format"}
    exec(compile(block, "docs/wire-format.md", "exec"), namespace)
    return namespace


async def test_typed_bodies_arrive_as_their_class(redis_config: RedisConfig) -> None:
    example = documented_example()
    order, shop = example["Order"], example["Shop"]
    with trio.fail_after(20):
        async with Runtime(redis_config, namespace="docs") as runtime:
            await runtime.spawn(shop, name="shop")
            assert await runtime.ask("shop", order("tea", 2), timeout=5) == order("TEA", 4)

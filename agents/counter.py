"""Counting agents: :class:`Counter` tallies messages, :class:`Collector` gathers results.

Both keep their state in memory, per replica; run them with one replica when the
total matters. Both can end a scenario with ``until = "stop"``: the counter after a
number of messages, the collector once it has every result it was told to expect.
"""

from __future__ import annotations

from collections import Counter as _Tally
from typing import Any

import attrs

from ailf import Agent, Message

__all__ = ["Collector", "Counter"]


class Counter(Agent):
    """Counts messages (and broadcasts), optionally by the value of one body field.

    Every message is answered with the counts so far, so ``ailf send counter '{}'
    --ask`` reads them. With ``stop_at`` it stops the runtime once it has counted that
    many messages.
    """

    @attrs.frozen
    class Options:
        #: Count by this body field's value too (``{"color": "red"}`` with ``by = "color"``).
        by: str | None = None
        #: Stop the runtime after this many messages (for ``until = "stop"``).
        stop_at: int | None = None

    async def on_start(self) -> None:
        self.total = 0
        self.tally: _Tally[str] = _Tally()

    async def on_message(self, message: Message) -> dict[str, Any]:
        self.total += 1
        field = self.options.by
        if field and isinstance(message.body, dict) and field in message.body:
            self.tally[str(message.body[field])] += 1
        if self.options.stop_at is not None and self.total == self.options.stop_at:
            print(f"{self.name}: counted {self.total} messages, stopping", flush=True)
            self.runtime.stop()
        return {"total": self.total, "by": dict(self.tally)}


class Collector(Agent):
    """Collects results keyed by one body field, counting each key once.

    Delivery is at least once, so after a crash some results arrive twice; the
    collector tells distinct results from duplicates. With ``expect`` it prints a
    line and stops the runtime once it holds that many distinct results — a run that
    lost a message never gets there, and times out instead.
    """

    @attrs.frozen
    class Options:
        #: The body field that identifies a result.
        key: str = "job"
        #: Stop the runtime once this many distinct results arrived.
        expect: int | None = None

    async def on_start(self) -> None:
        self.seen: set[str] = set()
        self.received = 0

    async def on_message(self, message: Message) -> dict[str, int]:
        self.received += 1
        body = message.body
        if not isinstance(body, dict) or self.options.key not in body:
            raise ValueError(f"expected a table with a {self.options.key!r} field, got {body!r}")
        key = str(body[self.options.key])
        if key not in self.seen:
            self.seen.add(key)
            if len(self.seen) == self.options.expect:
                duplicates = self.received - len(self.seen)
                print(
                    f"{self.name}: all {len(self.seen)} results collected"
                    f" ({duplicates} duplicate deliveries)",
                    flush=True,
                )
                self.runtime.stop()
        return {"distinct": len(self.seen), "received": self.received}

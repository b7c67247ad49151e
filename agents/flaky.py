"""Flaky: an agent that fails on purpose, to watch retries and dead letters work."""

from __future__ import annotations

import random

import attrs

from ailf import Agent, Message

__all__ = ["Flaky", "InjectedFailure"]


class InjectedFailure(RuntimeError):
    """The failure :class:`Flaky` raises; its message says which rule fired."""


class Flaky(Agent):
    """Fails some deliveries, deterministically or at random, and succeeds otherwise.

    - a body with ``poison_key`` set to true fails on every delivery: after the
      agent's ``max_deliveries`` it lands in the dead-letter stream;
    - every other message fails its first ``fail_deliveries`` deliveries and then
      succeeds (the retry path);
    - ``fail_rate`` adds random failures (seeded with ``seed`` for repeatable runs).

    A successful delivery returns ``{"ok": true, "deliveries": n}``.
    """

    @attrs.frozen
    class Options:
        fail_deliveries: int = attrs.field(default=0, validator=attrs.validators.ge(0))
        poison_key: str = "poison"
        fail_rate: float = attrs.field(
            default=0.0, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
        )
        seed: int | None = None

    async def on_start(self) -> None:
        self.random = random.Random(self.options.seed)

    async def on_message(self, message: Message) -> dict[str, object]:
        body = message.body
        count = message.delivery_count
        if isinstance(body, dict) and body.get(self.options.poison_key) is True:
            raise InjectedFailure(f"poison message (delivery {count})")
        if count <= self.options.fail_deliveries:
            raise InjectedFailure(
                f"delivery {count} of {self.options.fail_deliveries} planned failures"
            )
        if self.options.fail_rate and self.random.random() < self.options.fail_rate:
            raise InjectedFailure(f"random failure at rate {self.options.fail_rate}")
        return {"ok": True, "deliveries": count}

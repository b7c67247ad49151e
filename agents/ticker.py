"""Ticker: sends or publishes a message on a schedule."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from ailf import Agent, Message

__all__ = ["Ticker"]


def _one_target(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if (instance.to is None) == (instance.topic is None):
        raise ValueError('expected exactly one of to = "agent" and topic = "topic"')


class Ticker(Agent):
    """Every ``interval`` seconds, sends ``body`` to ``to`` or publishes it on ``topic``.

    A table body gets a ``tick`` field (1, 2, ...). With ``count`` it stops after that
    many ticks; without, it ticks until the runtime stops. Each replica ticks on its
    own, so run one replica for one schedule. Note that a scenario with ``until =
    "idle"`` may end between two ticks: pair a ticker with ``until = "stop"`` (a
    :class:`~ailf.agents.counter.Counter` with ``stop_at``, for instance).

    Messages sent to the ticker are answered with the number of ticks so far.
    """

    @attrs.frozen
    class Options:
        interval: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
        count: int | None = attrs.field(
            default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
        )
        to: str | None = None
        topic: str | None = attrs.field(default=None, validator=_one_target)
        body: Any = attrs.Factory(dict)

    async def on_start(self) -> None:
        self.ticks = 0
        self.start_task(self._tick)

    async def _tick(self) -> None:
        options = self.options
        while options.count is None or self.ticks < options.count:
            await trio.sleep(options.interval)
            self.ticks += 1
            body = options.body
            if isinstance(body, dict):
                body = {**body, "tick": self.ticks}
            if options.to is not None:
                await self.send(options.to, body)
            else:
                await self.publish(options.topic, body)

    async def on_message(self, message: Message) -> int:
        return self.ticks

"""Player: one side of a game of ping-pong between two agents."""

from __future__ import annotations

import attrs

from ailf import Agent, Message

__all__ = ["Player"]


class Player(Agent):
    """Returns the ball ``{"n": k}`` to ``peer`` as ``{"n": k + 1}``.

    The player that receives ball number ``rounds`` prints the score and stops the
    runtime, which ends a scenario run with ``until = "stop"``. Serve by sending
    ``{"n": 0}`` to either player.
    """

    @attrs.frozen
    class Options:
        peer: str
        rounds: int = attrs.field(default=10, validator=attrs.validators.ge(1))

    async def on_message(self, message: Message) -> None:
        ball = message.body.get("n", 0) if isinstance(message.body, dict) else 0
        if ball >= self.options.rounds:
            print(f"{self.name}: ball {ball} reached, game over", flush=True)
            self.runtime.stop()
            return
        await self.send(self.options.peer, {"n": ball + 1})

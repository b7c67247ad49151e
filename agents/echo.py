"""Echo: answers every message with its own body.

The smallest useful agent: ``ailf send echo '{"hi": 1}' --ask`` prints ``{"hi": 1}``.
With ``forward_to`` it also passes each body on, which is enough to chain agents in
a scenario without writing code.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from ailf import Agent, Message

__all__ = ["Echo"]


class Echo(Agent):
    """Replies to an ``ask`` with the body it got; optionally forwards it."""

    @attrs.frozen
    class Options:
        #: Also send each body to this agent.
        forward_to: str | None = None
        #: Print each body on stdout (prefixed with the agent's name).
        print: bool = False

    async def on_message(self, message: Message) -> Any:
        if self.options.print:
            print(f"{self.name}: {json.dumps(message.body, default=str)}", flush=True)
        if self.options.forward_to:
            await self.send(self.options.forward_to, message.body)
        return message.body

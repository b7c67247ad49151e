"""Monitor: prints what it hears — mailbox messages and broadcasts alike.

Give it ``topics = [...]`` in the scenario (or subclass it with ``topics``) to watch
broadcast channels; every instance subscribed to a topic hears each broadcast once.
"""

from __future__ import annotations

import json

import attrs

from ailf import Agent, Message

__all__ = ["Monitor"]


class Monitor(Agent):
    """Prints one line per message: ``name [topic] sender: body``."""

    @attrs.frozen
    class Options:
        #: Printed before each line (default: the agent's name).
        prefix: str | None = None
        #: Body field to print instead of the whole body (e.g. ``text`` for chat lines).
        field: str | None = None

    async def on_message(self, message: Message) -> None:
        body = message.body
        if self.options.field and isinstance(body, dict) and self.options.field in body:
            shown = str(body[self.options.field])
        else:
            shown = json.dumps(body, default=str)
        where = f" [{message.topic}]" if message.topic else ""
        sender = f" {message.sender}:" if message.sender else ""
        print(f"{self.options.prefix or self.name}{where}{sender} {shown}", flush=True)

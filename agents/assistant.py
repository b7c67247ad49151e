"""A keyed agent: :class:`Assistant` keeps one conversation per key (a chat user).

Each user's instance is activated by the user's first message, with the conversation
loaded from Redis, and passivated after a minute without one; the conversation is saved
with each message's acknowledgement (docs/concepts.md#keyed-agents).
"""

from __future__ import annotations

from typing import Any

import attrs

from ailf import Agent, Message

__all__ = ["Assistant", "Conversation"]


@attrs.define
class Conversation:
    """What an assistant remembers of one user."""

    turns: int = 0
    history: list[str] = attrs.Factory(list)


class Assistant(Agent):
    """Answers each user with what it remembers of them; spawn it with ``keyed = true``.

    A message's body is ``{"text": ...}``; the reply is ``{"user": key, "turns": n,
    "said": [...]}`` with the last few things that user said.
    """

    state_type = Conversation

    @attrs.frozen
    class Options:
        #: How many of the user's last lines the reply repeats.
        recall: int = 3
        #: Print each exchange to stdout.
        print: bool = False

    async def on_message(self, message: Message[Any]) -> dict[str, Any]:
        text = str(message.body.get("text", "")) if isinstance(message.body, dict) else ""
        self.state.turns += 1
        self.state.history.append(text)
        said = self.state.history[-self.options.recall :]
        if self.options.print:
            print(f"assistant[{self.key}] turn {self.state.turns}: {text}", flush=True)
        return {"user": self.key, "turns": self.state.turns, "said": said}

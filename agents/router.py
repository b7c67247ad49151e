"""Router: sends each message on to an agent chosen by the content of its body."""

from __future__ import annotations

import attrs

from ailf import Agent, Message

__all__ = ["Router", "UnroutableMessage"]


class UnroutableMessage(LookupError):
    """No route matches and no ``default`` is set: the message ends as a dead letter."""


class Router(Agent):
    """Looks up ``body[field]`` in ``routes`` and forwards the body to that agent.

    ``routes = { error = "alerts", info = "archive" }`` with ``field = "level"`` sends
    ``{"level": "error", ...}`` to ``alerts``. A value without a route goes to
    ``default``; without a default the handler raises :class:`UnroutableMessage`, so
    the message is retried and then dead-lettered where an operator can see it
    (``ailf dlq list router``). Returns the name of the agent it chose.
    """

    @attrs.frozen
    class Options:
        #: The body field whose value picks the route.
        field: str
        #: Value of that field -> agent name.
        routes: dict[str, str] = attrs.Factory(dict)
        #: Where everything else goes (None: nowhere, see above).
        default: str | None = None

    async def on_message(self, message: Message) -> str:
        body = message.body
        value = body.get(self.options.field) if isinstance(body, dict) else None
        target = self.options.routes.get(str(value), self.options.default)
        if target is None:
            raise UnroutableMessage(
                f"no route for {self.options.field}={value!r};"
                f" routes: {sorted(self.options.routes)}, no default"
            )
        await self.send(target, body)
        return target

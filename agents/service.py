"""Calculator: a request/reply service — ask it, get an answer or an error back."""

from __future__ import annotations

import math
import operator
from typing import Any

import attrs

from ailf import Agent, Message

__all__ = ["Calculator"]

_OPERATIONS = {
    "add": sum,
    "mul": lambda args: math.prod(args),
    "sub": lambda args: args[0] - sum(args[1:]),
    "div": lambda args: _divide(args),
    "max": max,
    "min": min,
}


def _divide(args: list[float]) -> float:
    result = args[0]
    for divisor in args[1:]:
        result = operator.truediv(result, divisor)
    return result


class Calculator(Agent):
    """Answers ``{"op": "add", "args": [1, 2]}`` with ``{"result": 3}``.

    Operations: add, sub, mul, div, max, min. A bad request raises in the handler,
    so the caller's ``ask`` raises ``RemoteError`` with the original type and message
    (``ZeroDivisionError: float division by zero``); a request sent with ``send``
    instead ends in the dead-letter stream after its retries.
    """

    @attrs.frozen
    class Options:
        #: Round results to this many decimal places (None: no rounding).
        digits: int | None = None

    async def on_message(self, message: Message) -> dict[str, Any]:
        body = message.body
        if not isinstance(body, dict) or body.get("op") not in _OPERATIONS:
            raise ValueError(f"expected {{'op': one of {sorted(_OPERATIONS)}, 'args': [...]}}")
        args = body.get("args")
        if not isinstance(args, list) or not args:
            raise ValueError("expected 'args' to be a non-empty list of numbers")
        result = _OPERATIONS[body["op"]](args)
        if self.options.digits is not None:
            result = round(result, self.options.digits)
        return {"result": result}

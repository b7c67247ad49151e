"""Worker: one member of a worker pool sharing a mailbox.

Start it with ``replicas = N`` (and ``processes = M`` to spread the pool over OS
processes): every replica reads the same mailbox through one consumer group, so each
job goes to exactly one free worker, and a job a dead worker held is claimed by
another after ``claim_idle`` seconds.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import trio

from ailf import Agent, Message

__all__ = ["Worker"]


class Worker(Agent):
    """Does a job (here: waits ``work_seconds``) and reports who did it.

    The result ``{"job": <message id>, "worker": "<name>/<replica>", "pid": ..., "body":
    ...}`` is the reply to an ``ask`` and, with ``results_to``, is also sent to that
    agent (a :class:`~ailf.agents.counter.Collector`, say). The message id is the job's
    identity: a redelivered job carries the same id.
    """

    @attrs.frozen
    class Options:
        #: Simulated work per job, in seconds.
        work_seconds: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
        #: Send each result to this agent too.
        results_to: str | None = None

    async def on_message(self, message: Message) -> dict[str, Any]:
        if self.options.work_seconds:
            await trio.sleep(self.options.work_seconds)
        result = {
            "job": message.id,
            "worker": f"{self.name}/{self.replica}",
            "pid": os.getpid(),
            "body": message.body,
        }
        if self.options.results_to:
            await self.send(self.options.results_to, result)
        return result

"""Batched acknowledgements: one XACK per mailbox for every entry handled since the last.

The first of the three ways an entry is acknowledged, and the common one (a handled
``send()``); the other two, with the reply and after the dead letter, are in
:mod:`ailf.runtime._settle`, which decides which way each entry goes.
"""

from __future__ import annotations

import logging

import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.config import RetryPolicy
from ailf.errors import RedisConnectionError, RedisTimeoutError
from ailf.runtime._keys import GROUP

__all__ = ["Acker"]

log = logging.getLogger("ailf.runtime")

#: How a batch that could not be sent is tried again: three more times, 50 ms apart and
#: doubling, then dropped.
_RESEND = RetryPolicy(attempts=3, backoff_initial=0.05, jitter=False)


class Acker:
    """Collects handled entry ids and acknowledges them in batches, one XACK per stream.

    While one batch is on the wire the next one collects, so under load each XACK
    carries many ids and acking costs a fraction of a round trip per message. An ack
    that cannot be sent (Redis gone) is dropped after a few tries: the entry stays
    pending and is delivered again, which at-least-once delivery allows.
    """

    def __init__(self, client: AsyncRedisClient) -> None:
        self._client = client
        self._waiting: dict[str, list[str]] = {}
        self._sending: dict[str, list[str]] = {}
        self._wakeup = trio.Event()

    def ack(self, stream: str, entry_id: str) -> None:
        ids = self._waiting.get(stream)
        if ids is None:
            self._waiting[stream] = [entry_id]
            self._wakeup.set()
        else:
            ids.append(entry_id)

    def busy(self, stream: str) -> bool:
        """True while acks for ``stream`` are waiting or on the wire."""
        return stream in self._waiting or stream in self._sending

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Send everything collected so far (and what collects meanwhile)."""
        while self._waiting:
            self._sending, self._waiting = self._waiting, {}
            try:
                await self._send(self._sending)
            finally:
                self._sending = {}

    async def _send(self, batch: dict[str, list[str]]) -> None:
        for attempt in range(_RESEND.attempts + 1):
            pipe = self._client.pipeline(transaction=False)
            for stream, ids in batch.items():
                pipe.xack(stream, GROUP, *ids)
            try:
                await pipe.execute(raise_on_error=False)
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if attempt == _RESEND.attempts:
                    count = sum(len(ids) for ids in batch.values())
                    log.warning("dropped %d acks (they will be redelivered): %s", count, exc)
                    return
                await trio.sleep(_RESEND.delay(attempt))

"""Overload protection for senders: a mailbox at its ``mailbox_limit`` makes ``send``
and ``ask`` wait for room, and raise :class:`~ailf.errors.MailboxFull` after
``send_timeout`` seconds.

Waiting, rather than dropping or failing at once, is backpressure: a producer faster
than its consumers slows down to their pace, and a producer that is itself an agent
holds its own message meanwhile, so the pressure travels upstream to where messages
enter the system. The timeout keeps that from becoming a hang (two agents filling each
other's mailboxes): the sender gets an exception it can handle, and nothing was added.

The **backlog** is what the agent still has to do, counted as
:mod:`ailf.runtime._mailbox` counts it: entries not read yet plus entries read and not
acknowledged (acknowledged entries waiting to be trimmed do not count).

Measuring is one round trip (XINFO GROUPS and XLEN in one pipeline), so a sender does
not measure before each message: a measurement that finds room for R more lets this
process's next R sends to that mailbox through without asking again. Senders in several
processes can therefore overshoot the limit together by what each was last told was
free: the limit is approximate, like ``MAXLEN ~``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ailf.config import RetryPolicy
from ailf.errors import ConfigError, MailboxFull
from ailf.runtime._mailbox import mailbox_backlog
from ailf.runtime._settings import MAX_BACKOFF_STEP

if TYPE_CHECKING:
    from ailf.clients._async_client import AsyncRedisClient

__all__ = ["MailboxGate"]

#: How often a full mailbox is measured again: after 5 ms, doubling up to 250 ms.
_MEASURE_AGAIN = RetryPolicy(backoff_initial=0.005, backoff_max=0.25, jitter=False)


class MailboxGate:
    """Admits sends to mailboxes below ``limit`` (None: every send, unmeasured).

    Cancellation: :meth:`admit` may be cancelled while it waits; nothing was sent then.
    """

    def __init__(self, limit: int | None, timeout: float) -> None:
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ConfigError(
                f"Runtime mailbox_limit: expected an integer >= 1 or None, got {limit!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"Runtime send_timeout: expected a number > 0, got {timeout!r}")
        self.limit = limit
        self.timeout = float(timeout)
        #: Sends each mailbox may still take before it is measured again.
        self._room: dict[str, int] = {}
        self._measuring: dict[str, trio.Lock] = {}

    def _take(self, stream: str) -> bool:
        room = self._room.get(stream, 0)
        if room <= 0:
            return False
        self._room[stream] = room - 1
        return True

    async def admit(self, client: AsyncRedisClient, stream: str) -> None:
        """Return once ``stream`` has room for one more entry; :class:`MailboxFull` if it
        has none for ``timeout`` seconds."""
        if self.limit is None or self._take(stream):
            return
        lock = self._measuring.setdefault(stream, trio.Lock())
        backlog = -1  # not measured here (Redis did not answer, or others measured)
        attempt = 0
        with trio.move_on_after(self.timeout):
            async with lock:  # one measurement at a time; the others use its result
                while not self._take(stream):
                    backlog = await mailbox_backlog(client, stream)
                    self._room[stream] = self.limit - backlog
                    if self._take(stream):
                        return
                    await trio.sleep(_MEASURE_AGAIN.delay(min(attempt, MAX_BACKOFF_STEP)))
                    attempt += 1
                return
        measured = f"{backlog} unhandled entries" if backlog >= 0 else "no measurement yet"
        raise MailboxFull(
            f"mailbox {stream} had no room within {self.timeout} s (mailbox_limit="
            f"{self.limit}; {measured}); its agent is not keeping up — add replicas, slow"
            " the producer down or raise mailbox_limit — or Redis is not answering",
            mailbox=stream,
            backlog=backlog,
            limit=self.limit,
        )

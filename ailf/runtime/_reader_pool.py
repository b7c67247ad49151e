"""Which mailbox reader serves which replica: reader *k* reads for the *k*-th local replica
of every agent (see :mod:`ailf.runtime._reader`), so that most processes need one reader,
and a process running three replicas of some agent needs three.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import trio

from ailf.runtime._host import HostContext
from ailf.runtime._reader import MailboxReader

__all__ = ["ReaderPool"]


class ReaderPool:
    """A process's mailbox readers, started as replicas need them."""

    def __init__(self, host: HostContext, process_id: str) -> None:
        self._host = host
        self._process_id = process_id
        self._readers: list[MailboxReader] = []
        #: Agent name -> the slots (reader numbers) its local replicas use.
        self._slots: dict[str, set[int]] = {}
        self._nursery: trio.Nursery | None = None

    def __iter__(self) -> Iterator[MailboxReader]:
        return iter(self._readers)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Host the readers' loops until :meth:`stop`."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def stop(self) -> None:
        """Stop reading (the readers' loops are cancelled)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def take(self, agent: str) -> MailboxReader:
        """The reader of the lowest slot no replica of ``agent`` uses, started if new."""
        used = self._slots.setdefault(agent, set())
        slot = next(k for k in itertools.count() if k not in used)
        used.add(slot)
        while len(self._readers) <= slot:
            reader = MailboxReader(self._host, f"{self._process_id}/{len(self._readers)}")
            self._readers.append(reader)
            assert self._nursery is not None
            await self._nursery.start(reader.run)
        return self._readers[slot]

    def release(self, agent: str, reader: MailboxReader) -> None:
        """A replica of ``agent`` is gone for good: its slot is free."""
        self._slots.get(agent, set()).discard(self._readers.index(reader))

    def retries_pending(self, stream: str) -> bool:
        return any(reader.settler.retries_pending(stream) for reader in self._readers)

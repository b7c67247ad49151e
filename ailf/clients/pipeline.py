"""Pipelines: queue commands, send them in one write, get all replies back at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ailf.clients.commands import Commands, Convert

if TYPE_CHECKING:
    from ailf.clients.async_client import AsyncRedisClient

__all__ = ["Pipeline"]


class Pipeline(Commands):
    """Commands queued on a client, sent together by :meth:`execute`.

    Command methods return the pipeline (they are not awaited), so calls chain::

        async with client.pipeline() as pipe:
            pipe.set("a", 1).incr("a")
            results = await pipe.execute()      # [True, 2]

    ``transaction=True`` (redis-py's default) wraps the commands in MULTI/EXEC so they
    run atomically; ``False`` only pipelines them. If the ``async with`` block raises,
    nothing is sent. Blocking commands in a pipeline send it over a dedicated
    connection. Cancelling :meth:`execute` after the write leaves the commands running
    on the server with their replies discarded, as for single commands.
    """

    def __init__(self, client: AsyncRedisClient, transaction: bool = True) -> None:
        self._client = client
        self._transaction = transaction
        self._queue: list[tuple[tuple[Any, ...], Convert, bool]] = []

    def _command(
        self, args: tuple[Any, ...], convert: Convert = None, blocking: bool = False
    ) -> Pipeline:
        self._queue.append((args, convert, blocking))
        return self

    def __len__(self) -> int:
        return len(self._queue)

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the queued commands without sending them."""
        self._queue.clear()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command in one write; their converted replies, in order.

        With ``raise_on_error`` (the default) the first error reply is raised as
        :class:`~ailf.errors.ResponseError` after all commands ran; otherwise error
        replies take their command's place in the list. The queue is emptied either way.
        """
        queue, self._queue = self._queue, []
        if not queue:
            return []
        replies = await self._client._execute_many(
            [args for args, _, _ in queue],
            blocking=any(blocking for _, _, blocking in queue),
            transaction=self._transaction,
        )
        results: list[Any] = []
        first_error: Exception | None = None
        for reply, (_, convert, _) in zip(replies, queue, strict=True):
            if isinstance(reply, Exception):
                first_error = first_error or reply
                results.append(reply)
            else:
                results.append(reply if convert is None else convert(reply))
        if first_error is not None and raise_on_error:
            raise first_error
        return results

"""Pipelines: queue commands, send them in one write, get all replies back at once.

A pipeline is also how the async client does optimistic transactions (WATCH), with
redis-py's names: ``await pipe.watch(*keys)`` reserves a connection of the pipeline's
own and runs commands at once on it until ``pipe.multi()``; what comes after is queued
and sent by ``execute()`` as MULTI … EXEC on that same connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ailf.clients._commands import Commands, Convert
from ailf.clients._connection import raise_reply_error
from ailf.errors import RedisConnectionError, RedisError, RedisTimeoutError, WatchError

if TYPE_CHECKING:
    from ailf.clients._async_client import AsyncRedisClient

__all__ = ["Pipeline", "transaction_replies"]

_Queued = tuple[tuple[Any, ...], Convert, bool]


class _Reserved(Protocol):
    """What a backend's ``reserve()`` gives a watching pipeline: one connection of its own
    (:class:`~ailf.clients._pool.ReservedConnection` under trio, its asyncio twin)."""

    @property
    def closed(self) -> bool: ...

    async def request(
        self, commands: list[tuple[Any, ...]], blocking: bool = False
    ) -> list[Any]: ...

    async def release(self) -> None: ...


def transaction_replies(replies: list[Any]) -> list[Any]:
    """The queued commands' replies, out of the replies to MULTI, each command and EXEC.

    A command the server refused to queue aborts the whole transaction (EXECABORT); its
    own error, the telling one, is raised. EXEC answers nil when a watched key changed:
    :class:`~ailf.errors.WatchError`.
    """
    executed = replies[-1]
    if isinstance(executed, Exception):
        refused = [reply for reply in replies[1:-1] if isinstance(reply, Exception)]
        raise refused[0] if refused else executed
    if executed is None:
        raise WatchError(
            "a watched key changed before EXEC, so the transaction did not run;"
            " read the keys again and retry (client.transaction() does)"
        )
    return executed


class Pipeline(Commands):
    """Commands queued on a client, sent together by :meth:`execute`.

    Command methods return the pipeline (they are not awaited), so calls chain::

        async with client.pipeline() as pipe:
            pipe.set("a", 1).incr("a")
            results = await pipe.execute()      # [True, 2]

    ``transaction=True`` (redis-py's default) wraps the commands in MULTI/EXEC so they
    run atomically; ``False`` only pipelines them. Commands still queued when the
    ``async with`` block ends normally are executed then, as by the sync client's
    pipeline (their replies land in :attr:`results`, like every ``execute()``'s): a
    queued command is never dropped without a word. If the block raises, cancellation
    included, nothing queued is sent; :meth:`reset` discards the queue on purpose.
    Blocking commands in a pipeline send it over a dedicated connection. Cancelling
    :meth:`execute` after the write leaves the commands running on the server with
    their replies discarded, as for single commands.

    Check-and-set, as in redis-py::

        async with client.pipeline() as pipe:
            await pipe.watch("balance")
            balance = int(await pipe.get("balance"))   # runs at once, awaited
            pipe.multi()
            pipe.set("balance", balance + 10)          # queued again
            await pipe.execute()                       # WatchError if it changed

    From :meth:`watch` until :meth:`multi`, command methods run at once on the
    pipeline's reserved connection and return awaitables of their replies. The
    connection goes back to the pool (after an UNWATCH if still needed) at the end of
    :meth:`execute`, at :meth:`reset`, or when the ``async with`` block ends; if
    anything fails on it, cancellation included, it is closed instead.
    """

    def __init__(self, client: AsyncRedisClient, transaction: bool = True) -> None:
        self._client = client
        self._transaction = transaction
        self._queue: list[_Queued] = []
        self._reserved: _Reserved | None = None
        self._watching = False
        self._explicit_transaction = False
        #: The replies of every :meth:`execute` of this pipeline, in order.
        self.results: list[Any] = []

    def _command(
        self, args: tuple[Any, ...], convert: Convert = None, blocking: bool = False
    ) -> Any:
        """Queue the command and return the pipeline, or, while watching, run it now."""
        if self._watching and not self._explicit_transaction:
            return self._immediate(args, convert, blocking)
        self._queue.append((args, convert, blocking))
        return self

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued(self) -> int:
        """How many commands wait for :meth:`execute`."""
        return len(self._queue)

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Execute what is still queued if the block ended normally; reset either way."""
        try:
            if exc_type is None and self._queue:
                await self.execute()
        finally:
            await self.reset()

    # -- optimistic transactions ----------------------------------------------------

    async def watch(self, *names: Any) -> bool:
        """WATCH keys on a connection reserved for this pipeline; commands then run at once.

        EXEC fails with :class:`~ailf.errors.WatchError` if any of them changes before
        it. Raises :class:`~ailf.errors.RedisError` after :meth:`multi`.
        """
        if self._explicit_transaction:
            raise RedisError("pipe.watch() after pipe.multi(): WATCH must come before MULTI")
        if not names:
            raise ValueError("watch needs at least one key")
        if self._reserved is None:
            self._reserved = await self._client._reserve()
        await self._immediate(("WATCH", *names), None, False)
        self._watching = True
        return True

    async def unwatch(self) -> bool:
        """UNWATCH every key; the pipeline keeps its connection until execute() or reset()."""
        if self._watching:
            await self._immediate(("UNWATCH",), None, False)
            self._watching = False
        return True

    def multi(self) -> None:
        """End immediate execution after :meth:`watch`: commands queue for MULTI/EXEC again."""
        if self._explicit_transaction:
            raise RedisError("pipe.multi() was called already: MULTI cannot be nested")
        if self._queue:
            raise RedisError("pipe.multi() after commands were queued: call it right after watch()")
        self._explicit_transaction = True

    async def _immediate(self, args: tuple[Any, ...], convert: Convert, blocking: bool) -> Any:
        (reply,) = await self._reserved.request([args], blocking)
        if isinstance(reply, Exception):
            raise_reply_error(reply, self._client.config.address)
        return reply if convert is None else convert(reply)

    # -- sending --------------------------------------------------------------------

    async def reset(self) -> None:
        """Forget queued commands; UNWATCH and give back a connection :meth:`watch` took.

        If the UNWATCH cannot be done (the connection broke, or this task is being
        cancelled), the connection is closed, which ends its WATCH just as well.
        """
        self._queue.clear()
        self._explicit_transaction = False
        watching, self._watching = self._watching, False
        reserved, self._reserved = self._reserved, None
        if reserved is None:
            return
        try:
            if watching and not reserved.closed:
                await reserved.request([("UNWATCH",)])
        except (RedisConnectionError, RedisTimeoutError):
            pass  # closed by the failed request: the server dropped the WATCH with it
        finally:
            await reserved.release()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command in one write; their converted replies, in order.

        With ``raise_on_error`` (the default) the first error reply is raised as
        :class:`~ailf.errors.ResponseError` after all commands ran; otherwise error
        replies take their command's place in the list. After :meth:`watch`, the
        transaction runs on the watching connection and raises
        :class:`~ailf.errors.WatchError` if a watched key changed. The pipeline is
        empty (and its connection given back) afterwards either way.
        """
        queue, self._queue = self._queue, []
        transaction = self._transaction or self._explicit_transaction
        reserved = self._reserved
        if reserved is not None:
            replies = await self._execute_reserved(reserved, queue, transaction)
        else:
            self._explicit_transaction = False
            if not queue:
                return []
            replies = await self._client._execute_many(
                [args for args, _, _ in queue],
                blocking=any(blocking for _, _, blocking in queue),
                transaction=transaction,
            )
        results = _results(replies, queue)
        self.results.extend(results)
        first_error = next((r for r in results if isinstance(r, Exception)), None)
        if first_error is not None and raise_on_error:
            raise first_error
        return results

    async def _execute_reserved(
        self, reserved: _Reserved, queue: list[_Queued], transaction: bool
    ) -> list[Any]:
        """MULTI, the queue and EXEC on the watching connection; then reset() either way."""
        commands = [args for args, _, _ in queue]
        try:
            if not transaction:
                return await reserved.request(commands) if commands else []
            replies = await reserved.request([("MULTI",), *commands, ("EXEC",)])
            self._watching = False  # EXEC ends every WATCH, whatever it answered
            return transaction_replies(replies)
        finally:
            await self.reset()


def _results(replies: list[Any], queue: list[_Queued]) -> list[Any]:
    """Each reply converted as its command asks; error replies stay as they are."""
    return [
        reply if convert is None or isinstance(reply, Exception) else convert(reply)
        for reply, (_, convert, _) in zip(replies, queue, strict=True)
    ]

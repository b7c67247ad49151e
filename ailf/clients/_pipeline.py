"""Pipelines, for both faces: queue commands, send them in one write, get every reply back.

A pipeline is also how both clients do optimistic transactions (WATCH), with redis-py's
names: ``pipe.watch(*keys)`` reserves a connection of the pipeline's own and runs
commands at once on it until ``pipe.multi()``; what comes after is queued and sent by
``execute()`` as MULTI … EXEC on that same connection.

What a pipeline decides — what to queue, when a command runs at once, how MULTI/EXEC
wrap the queue and what their replies mean, which reply belongs to which command, when
to raise — is written once, in :class:`PipelineQueue`, which does no I/O.
:class:`Pipeline` (the sync client's) and :class:`AsyncPipeline` (the async client's) only
send and receive, each with its own face's calls, in a few lines apiece: the shape of
httpx's two clients over one set of models, with the logic that must match in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Self

from ailf.clients._backend import AsyncReserved, SyncReserved
from ailf.clients._commands import Commands, Convert
from ailf.clients._errors import in_pipeline, raise_reply_error, watched_key_changed
from ailf.errors import RedisConnectionError, RedisError, RedisTimeoutError

if TYPE_CHECKING:
    from ailf.clients._async_client import AsyncRedisClient
    from ailf.clients._sync import RedisClient

__all__ = ["AsyncPipeline", "Pipeline", "PipelineQueue", "transaction_replies"]

#: A queued command: its arguments (None: no round trip, see Commands), how to convert
#: its reply, and whether it may block on the server.
_Queued = tuple[tuple[Any, ...] | None, Convert, bool]
_Command = tuple[Any, ...]


class _Sending(NamedTuple):
    """A queue on its way: the commands queued, those sent (MULTI/EXEC included), whether
    any may block, and whether MULTI/EXEC wrap them."""

    queue: list[_Queued]
    sent: list[_Command]
    blocking: bool
    transaction: bool


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
        raise watched_key_changed()
    return executed


class PipelineQueue(Commands):
    """The queue and state of a pipeline, and every decision about them; no I/O.

    Command methods queue and return the pipeline, so calls chain
    (``pipe.set("a", 1).incr("a")``). From :meth:`watch` until :meth:`multi` they run at
    once instead, on the pipeline's reserved connection, and return their replies (an
    awaitable of them, on the async face). ``transaction=True`` (redis-py's default)
    wraps what is queued in MULTI/EXEC, so that it runs atomically.
    """

    def __init__(self, address: str, transaction: bool = True) -> None:
        self._address = address
        self._transaction = transaction
        self._queue: list[_Queued] = []
        self._watching = False
        self._explicit_transaction = False
        #: The replies of every :meth:`execute` of this pipeline, in order.
        self.results: list[Any] = []

    def _command(
        self, args: tuple[Any, ...] | None, convert: Convert = None, blocking: bool = False
    ) -> Any:
        """Queue the command and return the pipeline, or, while watching, run it now."""
        if self._watching and not self._explicit_transaction:
            return self._immediate(args, convert, blocking)
        self._queue.append((args, convert, blocking))
        return self

    def _immediate(self, args: tuple[Any, ...] | None, convert: Convert, blocking: bool) -> Any:
        raise NotImplementedError

    def command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Queue the command method ``name``: ``pipe.command("incr", "counter")`` is
        ``pipe.incr("counter")``. For a command without a method, use
        ``pipe.execute_command("ZADD", "scores", 1, "ada")``."""
        method = getattr(Commands, name, None)
        if name.startswith("_") or not callable(method):
            raise AttributeError(
                f"no command method {name!r}; use pipe.execute_command({name.upper()!r}, ...)"
            )
        return method(self, *args, **kwargs)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued(self) -> int:
        """How many commands wait for ``execute()``."""
        return len(self._queue)

    def multi(self) -> None:
        """End immediate execution after ``watch()``: commands queue for MULTI/EXEC again."""
        if self._explicit_transaction:
            raise RedisError("pipe.multi() was called already: MULTI cannot be nested")
        if self._queue:
            raise RedisError("pipe.multi() after commands were queued: call it right after watch()")
        self._explicit_transaction = True

    # -- the pure steps both faces take ---------------------------------------------

    def _watch_command(self, names: tuple[Any, ...]) -> _Command:
        if self._explicit_transaction:
            raise RedisError("pipe.watch() after pipe.multi(): WATCH must come before MULTI")
        if not names:
            raise ValueError("watch needs at least one key")
        return ("WATCH", *names)

    def _converted(self, reply: Any, convert: Convert) -> Any:
        """A reply run at once: an error reply raised, the rest converted."""
        if isinstance(reply, Exception):
            raise_reply_error(reply, self._address)
        return reply if convert is None else convert(reply)

    def _forget(self) -> bool:
        """Empty the queue and end MULTI; whether it was watching (and still is, on the
        server, until UNWATCH or EXEC)."""
        self._queue.clear()
        self._explicit_transaction = False
        watching, self._watching = self._watching, False
        return watching

    def _take(self) -> _Sending:
        """The queue, handed over for sending (the pipeline is empty afterwards)."""
        queue, self._queue = self._queue, []
        transaction = self._transaction or self._explicit_transaction
        sent = [args for args, _, _ in queue if args is not None]
        if transaction and (sent or self._watching):  # an empty EXEC still checks a WATCH
            sent = [("MULTI",), *sent, ("EXEC",)]
        else:
            transaction = False
        return _Sending(queue, sent, any(blocking for _, _, blocking in queue), transaction)

    def _finish(self, sending: _Sending, replies: list[Any]) -> list[Any]:
        """Each queued command's converted reply (error replies as they are), appended to
        :attr:`results`; EXEC's verdict applied first (WatchError, EXECABORT)."""
        if sending.transaction:
            self._watching = False  # EXEC ends every WATCH, whatever it answered
            replies = transaction_replies(replies)
        answers = iter(replies)
        results = []
        for args, convert, _ in sending.queue:
            reply = None if args is None else next(answers)
            if convert is not None and not isinstance(reply, Exception):
                reply = convert(reply)
            results.append(reply)
        self.results.extend(results)
        return results

    @staticmethod
    def _raise_first_error(sending: _Sending, results: list[Any]) -> None:
        queue = sending.queue
        for index, (result, (args, _, _)) in enumerate(zip(results, queue, strict=True)):
            if isinstance(result, Exception):
                raise in_pipeline(result, index, args or ())


class Pipeline(PipelineQueue):
    """Commands queued on a :class:`~ailf.clients._sync.RedisClient`, sent together.

    ::

        with client.pipeline() as pipe:
            pipe.set("a", "1").incr("counter")
            pipe.get_json("config")
        pipe.results  # [True, 1, {...}]

    Commands still queued when the ``with`` block ends normally are executed then (their
    replies land in :attr:`results`, like every :meth:`execute`'s); if the block raises,
    nothing queued is sent. :meth:`reset` discards the queue on purpose. Check-and-set::

        with client.pipeline() as pipe:
            pipe.watch("balance")
            balance = int(pipe.get("balance"))   # runs at once: the pipe is watching
            pipe.multi()
            pipe.set("balance", balance + 10)    # queued again
            pipe.execute()                       # WatchError if it changed

    A pipeline belongs to one thread at a time (the client is shared; pipelines are not).
    """

    def __init__(self, client: RedisClient, transaction: bool = True) -> None:
        super().__init__(client.address, transaction)
        self._client = client
        self._reserved: SyncReserved | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Execute what is still queued if the block ended normally; reset either way."""
        try:
            if exc_type is None and self._queue:
                self.execute()
        finally:
            self.reset()

    def _immediate(self, args: tuple[Any, ...] | None, convert: Convert, blocking: bool) -> Any:
        assert self._reserved is not None  # watching means reserved
        if args is None:
            return self._converted(None, convert)
        (reply,) = self._reserved.request([args], blocking)
        return self._converted(reply, convert)

    def watch(self, *names: Any) -> bool:
        """WATCH keys on a connection reserved for this pipeline; commands then run at once.

        EXEC fails with :class:`~ailf.errors.WatchError` if any of them changes before it.
        """
        command = self._watch_command(names)
        if self._reserved is None:
            self._reserved = self._client._reserve()
        self._converted(self._reserved.request([command])[0], None)
        self._watching = True
        return True

    def unwatch(self) -> bool:
        """UNWATCH every key; the pipeline keeps its connection until execute() or reset()."""
        if self._watching and self._reserved is not None:
            self._converted(self._reserved.request([("UNWATCH",)])[0], None)
            self._watching = False
        return True

    def reset(self) -> None:
        """Forget queued commands; UNWATCH and give back a connection :meth:`watch` took."""
        watching = self._forget()
        reserved, self._reserved = self._reserved, None
        if reserved is None:
            return
        try:
            if watching and not reserved.closed:
                reserved.request([("UNWATCH",)])
        except (RedisConnectionError, RedisTimeoutError):
            pass  # closed by the failed request: the server dropped the WATCH with it
        finally:
            reserved.release()

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command in one write; their converted replies, in order.

        With ``raise_on_error`` (the default) the first error reply is raised as
        :class:`~ailf.errors.ResponseError` (naming the command) after all commands ran;
        otherwise error replies take their command's place in the list. After
        :meth:`watch`, the transaction runs on the watching connection and raises
        :class:`~ailf.errors.WatchError` if a watched key changed; the connection is
        given back either way.
        """
        sending = self._take()
        sent, reserved = sending.sent, self._reserved
        try:
            if reserved is not None:
                replies = reserved.request(sent, sending.blocking) if sent else []
            else:
                self._explicit_transaction = False
                replies = self._client._execute_many(sent, sending.blocking) if sent else []
            results = self._finish(sending, replies)
        finally:
            if reserved is not None:
                self.reset()
        if raise_on_error:
            self._raise_first_error(sending, results)
        return results


class AsyncPipeline(PipelineQueue):
    """Commands queued on an :class:`~ailf.clients._async_client.AsyncRedisClient`.

    :class:`Pipeline`, awaited: command methods queue (they are not awaited), and
    ``await pipe.execute()`` sends them::

        async with client.pipeline() as pipe:
            pipe.set("a", 1).incr("a")
            results = await pipe.execute()      # [True, 2]

    Commands still queued when the ``async with`` block ends normally are executed
    then, as by the sync client's pipeline; if the block raises, cancellation included,
    nothing queued is sent. Blocking commands in a pipeline send it over a dedicated
    connection. Cancelling :meth:`execute` after the write leaves the commands running
    on the server with their replies discarded, as for single commands.

    From :meth:`watch` until :meth:`multi`, command methods run at once on the
    pipeline's reserved connection and return awaitables of their replies. The
    connection goes back to the pool (after an UNWATCH if still needed) at the end of
    :meth:`execute`, at :meth:`reset`, or when the ``async with`` block ends; if
    anything fails on it, cancellation included, it is closed instead.
    """

    def __init__(self, client: AsyncRedisClient, transaction: bool = True) -> None:
        super().__init__(client.address, transaction)
        self._client = client
        self._reserved: AsyncReserved | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Execute what is still queued if the block ended normally; reset either way."""
        try:
            if exc_type is None and self._queue:
                await self.execute()
        finally:
            await self.reset()

    async def _immediate(
        self, args: tuple[Any, ...] | None, convert: Convert, blocking: bool
    ) -> Any:
        assert self._reserved is not None  # watching means reserved
        if args is None:
            return self._converted(None, convert)
        (reply,) = await self._reserved.request([args], blocking)
        return self._converted(reply, convert)

    async def watch(self, *names: Any) -> bool:
        """WATCH keys on a connection reserved for this pipeline; commands then run at once.

        EXEC fails with :class:`~ailf.errors.WatchError` if any of them changes before it.
        """
        command = self._watch_command(names)
        if self._reserved is None:
            self._reserved = await self._client._reserve()
        self._converted((await self._reserved.request([command]))[0], None)
        self._watching = True
        return True

    async def unwatch(self) -> bool:
        """UNWATCH every key; the pipeline keeps its connection until execute() or reset()."""
        if self._watching and self._reserved is not None:
            self._converted((await self._reserved.request([("UNWATCH",)]))[0], None)
            self._watching = False
        return True

    async def reset(self) -> None:
        """Forget queued commands; UNWATCH and give back a connection :meth:`watch` took.

        If the UNWATCH cannot be done (the connection broke, or this task is being
        cancelled), the connection is closed, which ends its WATCH just as well.
        """
        watching = self._forget()
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

        As :meth:`Pipeline.execute`, awaited.
        """
        sending = self._take()
        sent, reserved = sending.sent, self._reserved
        try:
            if reserved is not None:
                replies = await reserved.request(sent, sending.blocking) if sent else []
            else:
                self._explicit_transaction = False
                replies = await self._client._execute_many(sent, sending.blocking) if sent else []
            results = self._finish(sending, replies)
        finally:
            if reserved is not None:
                await self.reset()
        if raise_on_error:
            self._raise_first_error(sending, results)
        return results

"""Pipelines, for both faces: queue commands, send them in one write, get every reply back.

A pipeline is also how both clients do optimistic transactions (WATCH), with redis-py's
names: ``pipe.watch(*keys)`` reserves a connection of the pipeline's own and runs
commands at once on it until ``pipe.multi()``; what comes after is queued and sent by
``execute()`` as MULTI … EXEC on that same connection.

Everything a pipeline does is written once, in :class:`PipelineQueue`: what to queue,
when a command runs at once, how MULTI/EXEC wrap the queue and what their replies mean,
which reply belongs to which command, when to raise, and the order of the calls to the
engine — as generators that yield each call's outcome to wait for. :class:`Pipeline`
(the sync client's) and :class:`AsyncPipeline` (the async client's) only drive those
steps, one blocking and one awaiting, the way one ``auth_flow`` generator serves both of
httpx's clients: hand-written mirrors drift, one body cannot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator, Sequence
from typing import Any, Protocol, Self, TypeVar

from ailf.clients._backend import AsyncReserved, SyncReserved
from ailf.clients._commands import Commands, Convert
from ailf.clients._errors import in_pipeline, raise_reply_error, watched_key_changed
from ailf.errors import RedisConnectionError, RedisError, RedisTimeoutError

__all__ = [
    "AsyncHost",
    "AsyncPipeline",
    "Pipeline",
    "PipelineQueue",
    "SyncHost",
    "transaction_replies",
]

#: A queued command: its arguments (None: no round trip, see Commands), how to convert
#: its reply, and whether it may block on the server.
_Queued = tuple[tuple[Any, ...] | None, Convert, bool]
_Command = tuple[Any, ...]
#: A pipeline operation as steps (see PipelineQueue): yields what to wait for.
_R = TypeVar("_R")
_Steps = Generator[Any, Any, _R]


class SyncHost(Protocol):
    """What a :class:`Pipeline` needs of its client (:class:`~ailf.clients._sync.RedisClient`)."""

    @property
    def address(self) -> str: ...

    def _execute_many(self, commands: Sequence[_Command], blocking: bool) -> list[Any]: ...

    def _reserve(self) -> SyncReserved: ...


class AsyncHost(Protocol):
    """What an :class:`AsyncPipeline` needs of its client
    (:class:`~ailf.clients._async_client.AsyncRedisClient`)."""

    @property
    def address(self) -> str: ...

    def _execute_many(
        self, commands: Sequence[_Command], blocking: bool
    ) -> Awaitable[list[Any]]: ...

    def _reserve(self) -> Awaitable[AsyncReserved]: ...


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
    queued: list[Any] = executed
    return queued


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

    _client: SyncHost | AsyncHost
    _reserved: SyncReserved | AsyncReserved | None

    def _command(
        self, args: tuple[Any, ...] | None, convert: Convert = None, blocking: bool = False
    ) -> Any:
        """Queue the command and return the pipeline, or, while watching, run it now."""
        if self._watching and not self._explicit_transaction:
            return self._immediate(args, convert, blocking)
        self._queue.append((args, convert, blocking))
        return self

    def _immediate(self, args: _Command | None, convert: Convert, blocking: bool) -> Any:
        """Run a command on the reserved connection now (the face drives the steps)."""
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

    # -- what both faces do, as steps ---------------------------------------------------
    #
    # Each operation that talks to Redis is a generator that yields what the face must
    # wait for — the result of a call on the reserved connection or on the client — and
    # is sent it back: a value on the sync face (the call already ran), an awaitable on
    # the async face (its driver awaits it, or throws its exception in). So the logic of
    # watch, reset and execute is written once; :func:`_drive` and :func:`_drive_async`
    # are the two faces' loops.

    def _immediate_steps(
        self, args: _Command | None, convert: Convert, blocking: bool
    ) -> _Steps[Any]:
        reserved = self._reserved
        assert reserved is not None  # watching means reserved
        if args is None:
            return self._converted(None, convert)
        (reply,) = yield reserved.request([args], blocking)
        return self._converted(reply, convert)

    def _watch_steps(self, names: tuple[Any, ...]) -> _Steps[bool]:
        if self._explicit_transaction:
            raise RedisError("pipe.watch() after pipe.multi(): WATCH must come before MULTI")
        if not names:
            raise ValueError("watch needs at least one key")
        if self._reserved is None:
            self._reserved = yield self._client._reserve()
        yield from self._immediate_steps(("WATCH", *names), None, False)
        self._watching = True
        return True

    def _unwatch_steps(self) -> _Steps[bool]:
        if self._watching:
            yield from self._immediate_steps(("UNWATCH",), None, False)
            self._watching = False
        return True

    def _reset_steps(self) -> _Steps[None]:
        """Empty the queue, end MULTI, and give back a connection ``watch()`` took, after
        an UNWATCH if it is still watching. If the UNWATCH cannot be done (the connection
        broke, or the caller is being cancelled), the connection is closed instead,
        which ends its WATCH just as well."""
        self._queue.clear()
        self._explicit_transaction = False
        watching, self._watching = self._watching, False
        reserved, self._reserved = self._reserved, None
        if reserved is None:
            return None
        try:
            if watching and not reserved.closed:
                yield reserved.request([("UNWATCH",)])
        except (RedisConnectionError, RedisTimeoutError):
            pass  # closed by the failed request: the server dropped the WATCH with it
        finally:
            yield reserved.release()
        return None

    def _execute_steps(self, raise_on_error: bool) -> _Steps[list[Any]]:
        queue, self._queue = self._queue, []
        transaction = self._transaction or self._explicit_transaction
        sent = [args for args, _, _ in queue if args is not None]
        if transaction and (sent or self._watching):  # an empty EXEC still checks a WATCH
            sent = [("MULTI",), *sent, ("EXEC",)]
        else:
            transaction = False
        blocking = any(blocking for _, _, blocking in queue)
        reserved = self._reserved
        try:
            if reserved is not None:
                replies = (yield reserved.request(sent, blocking)) if sent else []
            else:
                self._explicit_transaction = False
                replies = (yield self._client._execute_many(sent, blocking)) if sent else []
            if transaction:
                self._watching = False  # EXEC ends every WATCH, whatever it answered
                replies = transaction_replies(replies)
        finally:
            if reserved is not None:
                yield from self._reset_steps()
        results = self._results(queue, replies)
        if raise_on_error:
            for index, (result, (args, _, _)) in enumerate(zip(results, queue, strict=True)):
                if isinstance(result, Exception):
                    raise in_pipeline(result, index, args or ())
        return results

    def _converted(self, reply: Any, convert: Convert) -> Any:
        """A reply run at once: an error reply raised, the rest converted."""
        if isinstance(reply, Exception):
            raise_reply_error(reply, self._address)
        return reply if convert is None else convert(reply)

    def _results(self, queue: list[_Queued], replies: list[Any]) -> list[Any]:
        """Each queued command's converted reply (error replies as they are), appended to
        :attr:`results`."""
        answers = iter(replies)
        results = []
        for args, convert, _ in queue:
            reply = None if args is None else next(answers)
            if convert is not None and not isinstance(reply, Exception):
                reply = convert(reply)
            results.append(reply)
        self.results.extend(results)
        return results


def _drive(steps: _Steps[_R]) -> _R:
    """Run steps on the sync face: each yielded value is the result of a call that ran."""
    reply = None
    try:
        while True:
            reply = steps.send(reply)
    except StopIteration as done:
        result: _R = done.value
        return result


async def _drive_async(steps: _Steps[_R]) -> _R:
    """Run steps on the async face: await each yielded awaitable, and send its result in
    (or throw its exception in, cancellation included, so the steps' ``finally`` runs)."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as done:
            result: _R = done.value
            return result
        try:
            reply, error = await step, None
        except BaseException as exc:
            reply, error = None, exc


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

    def __init__(self, client: SyncHost, transaction: bool = True) -> None:
        super().__init__(client.address, transaction)
        self._client: SyncHost = client
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

    def _immediate(self, args: _Command | None, convert: Convert, blocking: bool) -> Any:
        return _drive(self._immediate_steps(args, convert, blocking))

    def watch(self, *names: Any) -> bool:
        """WATCH keys on a connection reserved for this pipeline; commands then run at once.

        EXEC fails with :class:`~ailf.errors.WatchError` if any of them changes before it.
        Raises :class:`~ailf.errors.RedisError` after :meth:`multi`.
        """
        return _drive(self._watch_steps(names))

    def unwatch(self) -> bool:
        """UNWATCH every key; the pipeline keeps its connection until execute() or reset()."""
        return _drive(self._unwatch_steps())

    def reset(self) -> None:
        """Forget queued commands; UNWATCH and give back a connection :meth:`watch` took."""
        _drive(self._reset_steps())

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command in one write; their converted replies, in order.

        With ``raise_on_error`` (the default) the first error reply is raised as
        :class:`~ailf.errors.ResponseError` (naming the command) after all commands ran;
        otherwise error replies take their command's place in the list. After
        :meth:`watch`, the transaction runs on the watching connection and raises
        :class:`~ailf.errors.WatchError` if a watched key changed; the connection is
        given back either way.
        """
        return _drive(self._execute_steps(raise_on_error))


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

    def __init__(self, client: AsyncHost, transaction: bool = True) -> None:
        super().__init__(client.address, transaction)
        self._client: AsyncHost = client
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

    async def _immediate(self, args: _Command | None, convert: Convert, blocking: bool) -> Any:
        return await _drive_async(self._immediate_steps(args, convert, blocking))

    async def watch(self, *names: Any) -> bool:
        """:meth:`Pipeline.watch`, awaited."""
        return await _drive_async(self._watch_steps(names))

    async def unwatch(self) -> bool:
        """:meth:`Pipeline.unwatch`, awaited."""
        return await _drive_async(self._unwatch_steps())

    async def reset(self) -> None:
        """:meth:`Pipeline.reset`, awaited. If the UNWATCH cannot be done (the connection
        broke, or this task is being cancelled), the connection is closed instead."""
        await _drive_async(self._reset_steps())

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """:meth:`Pipeline.execute`, awaited."""
        return await _drive_async(self._execute_steps(raise_on_error))

"""The :class:`Agent` base class users subclass, and how agent options are structured.

An agent is a class; the runtime makes one instance per replica (and a fresh one on
every restart, so that a restarted agent starts from clean state, as in Erlang and Akka).
Everything an instance needs from the runtime — its name, replica number, options,
logger — is set before ``on_start`` runs.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import inspect
import logging
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

import attrs
import cattrs
import trio

from ailf.clients._async_client import AsyncRedisClient
from ailf.codec import converter
from ailf.errors import ConfigError
from ailf.runtime._keys import Keys
from ailf.runtime._message import DeadLetter, Message
from ailf.runtime._registry import RegistrySnapshot
from ailf.runtime._statistics import AgentStatistics
from ailf.runtime._timers import Reminder

__all__ = [
    "RESTART_POLICIES",
    "STRATEGIES",
    "Agent",
    "AgentContext",
    "AgentLog",
    "AgentRuntime",
    "NoOptions",
    "body_types",
    "structure_options",
]

RESTART_POLICIES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "one_for_all")

T = TypeVar("T")

#: The id of the message the current task is handling, put on every log record.
current_message_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ailf_message_id", default=None
)


@attrs.frozen
class NoOptions:
    """The options of an agent that declares none."""


class AgentLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that prefixes records with ``agent[replica] message-id`` and puts
    ``agent``, ``replica`` and ``message_id`` on each record (for structured handlers)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        message_id = current_message_id.get()
        extra = {**(self.extra or {}), "message_id": message_id, **kwargs.get("extra", {})}
        kwargs["extra"] = extra
        where = f"{extra['agent']}[{extra['replica']}]"
        if message_id is not None:
            where = f"{where} {message_id}"
        return f"{where}: {msg}", kwargs


class AgentRuntime(Protocol):
    """The :class:`~ailf.runtime.Runtime` as the agents it runs see it (``self.runtime``).

    Declared here rather than imported because the runtime imports this module (it
    spawns ``Agent`` classes): two modules that import each other are one module in two
    files. ``Runtime`` has every member, with the same signature (a test compares them),
    and documents each.
    """

    @property
    def namespace(self) -> str: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def client(self) -> AsyncRedisClient: ...

    @property
    def process_id(self) -> str: ...

    async def send(
        self,
        to: str,
        body: Any,
        *,
        sender: str | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | float | None = None,
    ) -> str: ...

    async def cancel_scheduled(self, timer_id: str) -> bool: ...

    async def set_reminder(
        self,
        agent: str,
        name: str,
        body: Any = None,
        *,
        key: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | float | None = None,
        every: float | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        sender: str | None = None,
    ) -> Reminder: ...

    async def cancel_reminder(self, agent: str, name: str, *, key: str | None = None) -> bool: ...

    async def reminders(self, agent: str, *, key: str | None = None) -> list[Reminder]: ...

    async def ask(
        self,
        to: str,
        body: Any,
        timeout: float = 10,  # noqa: ASYNC109 - part of the documented API
        *,
        sender: str | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> Any: ...

    async def publish(self, topic: str, body: Any, *, sender: str | None = None) -> int: ...

    async def spawn(
        self,
        agent_cls: type[Agent],
        name: str | None = None,
        *,
        replicas: int = 1,
        options: Any = None,
        topics: Iterable[str] = (),
        claim_idle: float | None = None,
        concurrency: int | None = None,
        first_replica: int | None = None,
        keyed: bool = False,
        partitions: int | None = None,
    ) -> None: ...

    def stop(self) -> None: ...

    async def dead_letters(
        self, name: str, count: int = 100, *, key: str | None = None
    ) -> list[DeadLetter]: ...

    async def state(
        self, name: str, key: str | None = None, state_type: type[T] | None = None
    ) -> Any: ...

    def statistics(self) -> dict[str, AgentStatistics]: ...

    async def registry(self) -> RegistrySnapshot: ...

    async def cluster_statistics(self) -> dict[str, AgentStatistics]: ...

    async def wait_idle(
        self,
        names: Iterable[str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - part of the documented API
    ) -> None: ...


class AgentContext(Protocol):
    """What an agent's own methods ask of the runtime side of the instance (its cell)."""

    async def subscribe(self, topic: str) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...

    def start_task(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    def request_stop(self, *, normal: bool) -> None: ...


class Agent:
    """Subclass this and write ``async def on_message(self, message)``.

    Class attributes configure every instance (``spawn()`` can override some):

    - ``topics``: broadcast topics every instance hears from the start.
    - ``max_deliveries``: deliveries before a failing message goes to the dead letters.
    - ``claim_idle``: seconds a message may sit unacknowledged with another (presumably
      dead) replica before this one claims it. Must exceed your slowest handler.
    - ``concurrency``: messages one instance handles at once (1 keeps the actor promise:
      one at a time, in order).
    - ``restart``, ``max_restarts``, ``restart_period``: the restart policy for failures
      of ``on_start``, ``on_stop`` and background tasks (see docs/concepts.md).
    - ``strategy``: ``"one_for_one"`` restarts only the instance that failed;
      ``"one_for_all"`` restarts every instance of the agent in this process with it.
    - ``Options``: an attrs class of the agent's options; ``self.options`` is an instance.
    - ``state_type``: an attrs class of the agent's state — per key for a keyed agent;
      a named agent with one runs one instance at a time across processes (the others
      stand by): ``self.state`` is loaded on activation and saved with each message's
      acknowledgement (see docs/concepts.md#keyed-agents).
    - ``passivate_after``: seconds a keyed agent's instance for one key stays active
      without a message (then ``on_stop`` runs and it is dropped from memory).
    - ``max_active_keys``: the most instances of a keyed agent a process keeps active;
      past it the longest idle are passivated first.

    A plain ``def on_message(self, message)`` (not async) runs in a worker thread, so it
    may block; from there, call the async API with ``trio.from_thread.run(self.send, ...)``.
    """

    topics: ClassVar[tuple[str, ...]] = ()
    max_deliveries: ClassVar[int] = 5
    claim_idle: ClassVar[float] = 30.0
    concurrency: ClassVar[int] = 1
    restart: ClassVar[str] = "permanent"
    max_restarts: ClassVar[int] = 3
    restart_period: ClassVar[float] = 5.0
    strategy: ClassVar[str] = "one_for_one"
    Options: ClassVar[type] = NoOptions
    state_type: ClassVar[type | None] = None
    passivate_after: ClassVar[float] = 60.0
    max_active_keys: ClassVar[int] = 10_000

    # Set by the runtime before on_start.
    name: str
    #: Which entity this instance is, for a keyed agent (``"user-42"``); None otherwise.
    key: str | None = None
    #: A keyed agent's state for :attr:`key` (an instance of ``state_type``).
    state: Any = None
    replica: int
    options: Any
    runtime: AgentRuntime
    log: AgentLog
    _context: AgentContext

    async def on_start(self) -> None:
        """Called once per instance before its first message; open resources here."""

    async def on_message(self, message: Message[Any]) -> Any:
        """Handle one message. The return value answers an ``ask()``; an exception is a
        failed delivery (retried, then dead-lettered; an ``ask()`` gets a RemoteError)."""
        return None

    async def on_stop(self) -> None:
        """Called when the instance stops (shutdown, restart); close resources here."""

    # -- talking to others -------------------------------------------------------------

    async def send(
        self,
        to: str,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | float | None = None,
    ) -> str:
        """Add a message to agent ``to``'s mailbox (for keyed agent ``to``: to ``key``'s);
        returns its stream entry id — or with ``delay``/``at``, a timed message's id
        (see ``Runtime.send``)."""
        return await self.runtime.send(
            to, body, sender=self.name, headers=headers, key=key, delay=delay, at=at
        )

    async def ask(
        self,
        to: str,
        body: Any,
        timeout: float = 10,  # noqa: ASYNC109 - part of the documented API
        *,
        key: str | None = None,
    ) -> Any:
        """Send a request and wait for the handler's return value (see ``Runtime.ask``).

        Asking your own agent name from a handler of a ``concurrency = 1`` agent with one
        replica waits for itself: it times out.
        """
        return await self.runtime.ask(to, body, timeout=timeout, sender=self.name, key=key)

    async def set_reminder(
        self,
        name: str,
        body: Any = None,
        *,
        delay: float | None = None,
        at: datetime.datetime | float | None = None,
        every: float | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
    ) -> Reminder:
        """Set reminder ``name`` on this agent (for a keyed agent: on this key),
        replacing one of that name. When it fires, a message carrying ``body`` with
        ``message.reminder == name`` arrives like any other. One-shot with ``delay`` or
        ``at``; recurring with ``every`` seconds or ``cron`` (see
        ``Runtime.set_reminder`` and docs/time.md)."""
        return await self.runtime.set_reminder(
            self.name,
            name,
            body,
            key=self.key,
            delay=delay,
            at=at,
            every=every,
            cron=cron,
            timezone=timezone,
            sender=self.name,
        )

    async def cancel_reminder(self, name: str) -> bool:
        """Cancel this agent's (this key's) reminder ``name``; True if it was set."""
        return await self.runtime.cancel_reminder(self.name, name, key=self.key)

    async def reminders(self) -> list[Reminder]:
        """This agent's (this key's) reminders, by when they fire next."""
        return await self.runtime.reminders(self.name, key=self.key)

    async def publish(self, topic: str, body: Any) -> int:
        """Broadcast to every instance subscribed to ``topic``; returns the number of
        processes that received it."""
        return await self.runtime.publish(topic, body, sender=self.name)

    async def subscribe(self, topic: str) -> None:
        """Start hearing broadcasts on ``topic`` (returns once the subscription is live).

        Raises :class:`~ailf.errors.ResponseError` (code ``NOPERM``) when Redis refuses
        the channel to the runtime's ACL user; the call may be retried once it may.
        """
        await self._context.subscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        """Stop hearing broadcasts on ``topic``."""
        await self._context.unsubscribe(topic)

    def start_task(self, async_fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``async_fn(*args)`` beside the handler for as long as this instance lives.

        The task is cancelled when the instance stops; an exception escaping it crashes
        the instance, which its restart policy then handles.
        """
        self._context.start_task(async_fn, *args)

    def stop(self) -> None:
        """Stop this instance normally: a ``"permanent"`` agent is started again, a
        ``"transient"`` or ``"temporary"`` one is not."""
        self._context.request_stop(normal=True)


def handler_of(agent: Agent, sync: bool) -> Callable[[Message[Any]], Awaitable[Any]]:
    """What to await to run ``agent.on_message``: the bound method itself — no wrapper
    coroutine per message, on the path every message takes — or, for a plain ``def``
    one (``sync``), a worker thread, abandoned on cancellation (shutdown past the grace
    period, a crash): the thread runs to its end on its own, and its message stays
    pending."""
    if sync:
        return functools.partial(_in_thread, agent.on_message)
    return agent.on_message


async def _in_thread(on_message: Callable[[Message[Any]], Any], message: Message[Any]) -> Any:
    return await trio.to_thread.run_sync(on_message, message, abandon_on_cancel=True)


def is_sync_handler(agent_cls: type[Agent]) -> bool:
    """True when the class's ``on_message`` is a plain function (run in a worker thread)."""
    return not inspect.iscoroutinefunction(agent_cls.on_message)


@functools.cache
def body_types(agent_cls: type[Agent]) -> tuple[type, ...]:
    """The attrs classes the handler's annotation names: ``message: Message[Order]`` or
    ``Message[Order | Refund]`` gives ``(Order,)`` or ``(Order, Refund)``.

    Spawning registers them (:func:`ailf.codec.message_type`), so that bodies tagged as
    one of them arrive as instances. Only an annotation with ``Message[...]`` is
    evaluated; one that cannot be (a class imported only under ``TYPE_CHECKING``) is a
    :class:`ConfigError`, since its bodies would silently arrive as plain dicts.
    Cached per class: evaluating an annotation compiles it, and spawning 100,000 agents
    of one class would do it 100,000 times.
    """
    handler = agent_cls.on_message
    parameters = list(inspect.signature(handler).parameters)
    if len(parameters) < 2:
        return ()
    name = parameters[1]
    annotation: Any = inspect.get_annotations(handler).get(name)
    if annotation is None or (isinstance(annotation, str) and "[" not in annotation):
        return ()
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(handler)[name]
        except Exception as exc:
            raise ConfigError(
                f"{agent_cls.__qualname__}.on_message: cannot evaluate the annotation"
                f" {annotation!r} ({type(exc).__name__}: {exc}); import the classes it"
                " names at module level, or register them with ailf.message_type()"
            ) from None
    if typing.get_origin(annotation) is not Message:
        return ()
    found: list[type] = []
    pending = list(typing.get_args(annotation))
    while pending:
        candidate = pending.pop(0)
        if typing.get_origin(candidate) in (typing.Union, types.UnionType):
            pending.extend(typing.get_args(candidate))
        elif isinstance(candidate, type) and attrs.has(candidate):
            found.append(candidate)
    return tuple(found)


def check_agent_class(agent_cls: Any) -> type[Agent]:
    """Reject what cannot be spawned with a message that says what to change."""
    if not (isinstance(agent_cls, type) and issubclass(agent_cls, Agent)):
        raise ConfigError(f"spawn(): expected an Agent subclass, got {agent_cls!r}")
    name = agent_cls.__qualname__
    for attr, allowed in (("restart", RESTART_POLICIES), ("strategy", STRATEGIES)):
        if getattr(agent_cls, attr) not in allowed:
            raise ConfigError(
                f"{name}.{attr}: expected one of {', '.join(allowed)}, "
                f"got {getattr(agent_cls, attr)!r}"
            )
    for attr in ("max_deliveries", "concurrency"):
        value = getattr(agent_cls, attr)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}.{attr}: expected an integer >= 1, got {value!r}")
    if not isinstance(agent_cls.max_restarts, int) or agent_cls.max_restarts < 0:
        raise ConfigError(
            f"{name}.max_restarts: expected an integer >= 0, got {agent_cls.max_restarts!r}"
        )
    for attr in ("claim_idle", "restart_period"):
        value = getattr(agent_cls, attr)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{name}.{attr}: expected a number of seconds > 0, got {value!r}")
    if not attrs.has(agent_cls.Options):
        raise ConfigError(f"{name}.Options: expected an attrs class, got {agent_cls.Options!r}")
    return agent_cls


def structure_options(agent_cls: type[Agent], data: Any) -> Any:
    """Turn ``None``, a mapping or an ``Options`` instance into ``agent_cls.Options``.

    Raises :class:`ConfigError` naming the agent class and every bad or unknown field,
    e.g. ``Greeter options: expected int @ $.retries``.
    """
    options_cls = agent_cls.Options
    owner = f"{agent_cls.__qualname__} options"
    if isinstance(data, options_cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{owner}: expected a mapping or a {options_cls.__qualname__}, got {data!r}"
        )
    known = attrs.fields_dict(options_cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{owner}: unknown option(s) {', '.join(unknown)} (known: {allowed})")
    try:
        return converter.structure(dict(data), options_cls)
    except Exception as exc:
        problems = _validator_errors(options_cls, dict(data))
        if not problems and isinstance(exc, cattrs.BaseValidationError):
            problems = cattrs.transform_error(exc, path="$", format_exception=_describe)
        details = "; ".join(problems) or f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"{owner}: {details}") from exc


def _describe(exc: BaseException, type_: type | None) -> str:
    """cattrs's wording, plus the exception's own message where cattrs has none to add
    (an ``__attrs_post_init__`` that raised, say)."""
    text = cattrs.v.format_exception(exc, type_)
    return f"{text}: {exc}" if text == "invalid value" and str(exc) else text


def _validator_errors(options_cls: type, data: dict[str, Any]) -> list[str]:
    """Each failing attrs validator's message with its field's path, e.g.
    ``'interval' must be > 0: -1.0 @ $.interval``.

    cattrs reports a validator's exception against the whole class (``$``), because
    validators run in ``__init__`` after every field was structured; so structure with
    validators off and run each field's validator here, where its field is known. Empty
    when the data does not even structure (cattrs's own report then says why).
    """
    with attrs.validators.disabled():
        try:
            instance: Any = converter.structure(data, options_cls)
        except Exception:
            return []
    problems = []
    for field in attrs.fields(options_cls):
        if field.validator is None:
            continue
        try:
            field.validator(instance, field, getattr(instance, field.name))
        except Exception as exc:
            # attrs's stock validators raise with (message, attribute, ...) as args.
            text = exc.args[0] if len(exc.args) > 1 and isinstance(exc.args[0], str) else exc
            problems.append(f"{text} @ $.{field.name}")
    return problems

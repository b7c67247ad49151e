"""What ``spawn()`` was asked to run, checked: :class:`SpawnSpec` and :func:`spawn_spec`.

Everything ``spawn()`` takes is checked here, before anything starts, so that a bad
argument fails the call with a :class:`~ailf.errors.ConfigError` naming it, and the
agent's instances see only values that were accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ailf.codec import message_type
from ailf.errors import ConfigError
from ailf.runtime._agent import (
    Agent,
    AgentContext,
    AgentLog,
    AgentRuntime,
    body_types,
    check_agent_class,
    structure_options,
)
from ailf.runtime._keys import check_name
from ailf.runtime._state import check_state_type

__all__ = ["SpawnSpec", "spawn_spec"]


@attrs.frozen
class SpawnSpec:
    """What ``spawn()`` was asked to run: one agent name, all its local replicas."""

    agent_cls: type[Agent]
    name: str
    options: Any
    topics: tuple[str, ...]
    claim_idle: float
    concurrency: int
    #: One instance per key, activated on demand (see ailf/runtime/_keyed.py).
    keyed: bool = False

    def instance(
        self,
        runtime: AgentRuntime,
        replica: int,
        log: AgentLog,
        context: AgentContext,
        key: str | None = None,
    ) -> Agent:
        """A new instance of the agent class, with everything set that ``on_start``
        may use (a fresh one for every restart, and for every activation of a key)."""
        agent = self.agent_cls()
        agent.name = self.name
        agent.key = key
        agent.replica = replica
        agent.options = self.options
        agent.runtime = runtime
        agent.log = log
        agent._context = context
        return agent


def spawn_spec(
    agent_cls: Any,
    name: str | None,
    *,
    replicas: Any,
    options: Any,
    topics: Iterable[str],
    claim_idle: Any,
    concurrency: Any,
    first_replica: Any,
    keyed: Any = False,
) -> SpawnSpec:
    """Check ``spawn()``'s arguments (see ``Runtime.spawn``) and register the classes
    the handler's annotation names as message types; the spec to run."""
    check_agent_class(agent_cls)
    for cls in body_types(agent_cls):
        message_type(cls)
    name = check_name("agent", agent_cls.__name__ if name is None else name)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"spawn({name!r}): replicas must be an integer >= 1, not {replicas!r}")
    claim = agent_cls.claim_idle if claim_idle is None else claim_idle
    if isinstance(claim, bool) or not isinstance(claim, (int, float)) or claim <= 0:
        raise ConfigError(f"spawn({name!r}): claim_idle must be seconds > 0, not {claim!r}")
    if first_replica is not None and not (type(first_replica) is int and first_replica >= 0):
        raise ConfigError(
            f"spawn({name!r}): first_replica must be an integer >= 0, not {first_replica!r}"
        )
    parallel = agent_cls.concurrency if concurrency is None else concurrency
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"spawn({name!r}): concurrency must be >= 1, not {parallel!r}")
    all_topics = tuple(dict.fromkeys((*agent_cls.topics, *topics)))
    for topic in all_topics:
        check_name("topic", topic)
    if not isinstance(keyed, bool):
        raise ConfigError(f"spawn({name!r}): keyed must be True or False, not {keyed!r}")
    owner = agent_cls.__qualname__
    state_type = check_state_type(owner, agent_cls.state_type)
    if keyed or state_type is not None:
        kind = "a keyed agent" if keyed else "an agent with state"
        if all_topics:
            raise ConfigError(
                f"spawn({name!r}): {kind} hears no broadcast topics (its instances"
                f" come and go with their messages); got {', '.join(all_topics)}"
            )
        if parallel != 1:
            raise ConfigError(
                f"spawn({name!r}): {kind} handles one message at a time (per key);"
                " use replicas= for how many keys run at once, not concurrency"
            )
        for attr in ("passivate_after",):
            value = getattr(agent_cls, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{owner}.{attr}: expected seconds > 0, got {value!r}")
        active = agent_cls.max_active_keys
        if isinstance(active, bool) or not isinstance(active, int) or active < 1:
            raise ConfigError(f"{owner}.max_active_keys: expected an integer >= 1, got {active!r}")
    return SpawnSpec(
        agent_cls=agent_cls,
        name=name,
        options=structure_options(agent_cls, options),
        topics=all_topics,
        claim_idle=float(claim),
        concurrency=parallel,
        keyed=keyed,
    )

"""What a scenario file says, as frozen attrs records.

A scenario file is TOML; :mod:`ailf.scenario._load` turns it into a :class:`Scenario`
and checks it, so every record here is known to be consistent by the time the runner
sees it. The TOML keys are the field names, except ``class`` (``class_`` here, since
``class`` is a Python keyword; ``metadata["toml"]`` names the key, and ``False`` there
keeps a field out of the file). ``docs/scenarios.md`` is the reference for users.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = [
    "AgentSpec",
    "Expectation",
    "FaultSpec",
    "MessageSpec",
    "RedisSection",
    "Scenario",
    "ScenarioSettings",
    "ScheduleSpec",
]

Until = Literal["idle", "stop"]


@attrs.frozen
class ScenarioSettings:
    """The ``[scenario]`` table: what the run is called and when it is over.

    ``until = "idle"`` ends the run once every mailbox of the scenario's agents is
    drained and nothing is in flight; ``"stop"`` ends it when an agent calls
    ``self.runtime.stop()``. Running past ``timeout`` seconds is a failure.
    ``metrics_port`` serves Prometheus metrics: worker process *i* on port
    ``metrics_port + i`` (docs/observability.md).
    """

    name: str
    namespace: str | None = None
    description: str = ""
    until: Until = "idle"
    timeout: float = 60.0
    metrics_port: int | None = None

    @property
    def effective_namespace(self) -> str:
        return self.namespace or self.name


@attrs.frozen
class RedisSection:
    """The ``[redis]`` table. Without ``url`` an embedded server is started for the run."""

    url: str | None = None


@attrs.frozen
class AgentSpec:
    """One ``[[agents]]`` entry: an agent class, how many replicas, over how many processes.

    ``options`` stays a plain table here; the loader has checked it against the class's
    ``Options`` and the runtime structures it again when it spawns the agent.
    """

    name: str
    class_: str = attrs.field(metadata={"toml": "class"})
    replicas: int = 1
    processes: int = 1
    topics: tuple[str, ...] = ()
    options: dict[str, Any] = attrs.Factory(dict)
    claim_idle: float | None = None
    concurrency: int | None = None
    #: One instance per key (docs/concepts.md#keyed-agents); ``replicas`` is then how
    #: many keys run at once, over all the agent's processes.
    keyed: bool = False
    partitions: int | None = None

    def replicas_in(self, process: int) -> int:
        """How many of the replicas process number ``process`` hosts (0 if none)."""
        if process >= self.processes:
            return 0
        share, extra = divmod(self.replicas, self.processes)
        return share + (1 if process < extra else 0)

    def first_replica_in(self, process: int) -> int:
        """The replica number of process ``process``'s first replica: replicas are
        numbered 0, 1, … across the scenario's processes, process 0's first."""
        return sum(self.replicas_in(earlier) for earlier in range(process))


@attrs.frozen
class MessageSpec:
    """One ``[[messages]]`` entry, sent once the agents are up.

    Exactly one of ``to`` (an agent's mailbox) and ``topic`` (a broadcast) is set.
    ``delay`` waits that many seconds before sending (counted from the previous
    message); ``count`` sends the same body that many times. ``ask = true`` sends it as
    a request and prints the reply. ``key`` addresses one key of a keyed agent.
    """

    body: Any = attrs.Factory(dict)
    to: str | None = None
    key: str | None = None
    topic: str | None = None
    delay: float = 0.0
    count: int = 1
    ask: bool = False


@attrs.frozen
class ScheduleSpec:
    """One ``[[schedules]]`` entry: reminder ``name`` set on agent ``to`` (on ``key`` of
    a keyed agent) when the run starts, carrying ``body``. Recurring with ``every``
    seconds (first after ``delay``, else after one period) or ``cron`` (in
    ``timezone``); one-shot with ``delay`` alone. Set again by every run of the file, it
    replaces itself: running a scenario twice never doubles a schedule.
    """

    name: str
    to: str
    body: Any = attrs.Factory(dict)
    key: str | None = None
    delay: float | None = None
    every: float | None = None
    cron: str | None = None
    timezone: str = "UTC"


@attrs.frozen
class Expectation:
    """``[expect.AGENT]``: counters the run must end with, or it fails (exit 1).

    Each is compared with the total over every process the agent ran in; ``None`` is
    not checked. ``processed`` counts broadcasts the agent handled as well as mailbox
    messages; ``mailbox_processed`` counts mailbox messages alone.
    ``processed_at_least`` allows for redeliveries after a crash.
    """

    processed: int | None = None
    processed_at_least: int | None = None
    mailbox_processed: int | None = None
    failed: int | None = None
    dead_lettered: int | None = None


@attrs.frozen
class FaultSpec:
    """One ``[[faults]]`` entry: SIGKILL a process of the run on purpose.

    ``kill`` names an agent; ``process`` picks which of its processes (the last one
    by default, which hosts no other agent's first share). It fires ``after`` seconds
    after the messages were sent, or once the agent has processed
    ``after_processed`` messages in total — exactly one of the two. The runner
    restarts the killed process like any crashed one.
    """

    kill: str
    process: int | None = None
    after: float | None = None
    after_processed: int | None = None


@attrs.frozen
class Scenario:
    """A whole scenario file, loaded and checked. ``path`` is where it came from."""

    scenario: ScenarioSettings
    agents: tuple[AgentSpec, ...]
    redis: RedisSection = attrs.Factory(RedisSection)
    messages: tuple[MessageSpec, ...] = ()
    schedules: tuple[ScheduleSpec, ...] = ()
    expect: dict[str, Expectation] = attrs.Factory(dict)
    faults: tuple[FaultSpec, ...] = ()
    path: str = attrs.field(default="", metadata={"toml": False})

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def namespace(self) -> str:
        return self.scenario.effective_namespace

    @property
    def process_count(self) -> int:
        """OS processes the whole scenario runs in: process *i* hosts a share of every
        agent with more than *i* processes."""
        return max(agent.processes for agent in self.agents)

    def agent(self, name: str) -> AgentSpec:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)

    def only(self, names: tuple[str, ...]) -> Scenario:
        """The same scenario restricted to some agents (``ailf run --only``).

        Messages addressed to other agents are dropped (the run hosting them sends
        them); broadcasts are sent only by a run of the whole scenario.
        """
        if not names:
            return self
        wanted = set(names)
        return attrs.evolve(
            self,
            agents=tuple(a for a in self.agents if a.name in wanted),
            messages=tuple(m for m in self.messages if m.to in wanted),
            schedules=tuple(s for s in self.schedules if s.to in wanted),
            expect={k: v for k, v in self.expect.items() if k in wanted},
            faults=tuple(f for f in self.faults if f.kill in wanted),
        )

"""What a running :class:`~ailf.runtime.Runtime` lends the parts that host its agents.

Mailbox readers, settlement and cells (one instance's life each) need a few of the
runtime's parts — its connection, its namespace's keys, its settings, the acker, the
broadcast hub, the timekeeper, the grace period, and the runtime itself to hand to each agent as
``self.runtime`` — not the runtime's own state. Passing this instead of the whole
``Runtime`` keeps them below the runtime: each depends on what it uses.
"""

from __future__ import annotations

import attrs

from ailf.clients._async_client import AsyncRedisClient
from ailf.observability import Observer
from ailf.runtime._acker import Acker
from ailf.runtime._agent import AgentRuntime
from ailf.runtime._broadcast import BroadcastHub
from ailf.runtime._keys import Keys
from ailf.runtime._settings import MailboxSettings
from ailf.runtime._timekeeper import Timekeeper

__all__ = ["HostContext"]


@attrs.frozen
class HostContext:
    """The runtime's parts that its readers and agent instances use (made once the
    runtime is connected)."""

    client: AsyncRedisClient
    keys: Keys
    settings: MailboxSettings
    acker: Acker
    hub: BroadcastHub
    #: Seconds in-flight handlers, and each ``on_stop``, get when an instance stops.
    grace_period: float
    #: The runtime, as its agents see it (``self.runtime``).
    runtime: AgentRuntime
    #: Tracing and metrics hooks (a do-nothing observer unless asked for).
    observer: Observer
    #: Moves due timed messages into the mailboxes read here.
    timekeeper: Timekeeper

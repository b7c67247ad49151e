"""What a running :class:`~ailf.runtime.Runtime` lends the agent instances it hosts.

A cell (one instance's life) needs a few of the runtime's parts — its namespace's keys,
its settings, the broadcast hub, the grace period, and the runtime itself to hand to
the agent as ``self.runtime`` — not the runtime's own state. Passing this instead of
the whole ``Runtime`` keeps the cell below the runtime: it depends on what it uses.
"""

from __future__ import annotations

import attrs

from ailf.runtime._agent import AgentRuntime
from ailf.runtime._broadcast import BroadcastHub
from ailf.runtime._keys import Keys
from ailf.runtime._settings import MailboxSettings

__all__ = ["HostContext"]


@attrs.frozen
class HostContext:
    """The runtime's parts an agent instance uses (made once the runtime is connected)."""

    keys: Keys
    settings: MailboxSettings
    hub: BroadcastHub
    #: Seconds in-flight handlers, and each ``on_stop``, get when an instance stops.
    grace_period: float
    #: The runtime, as the agent sees it (``self.runtime``).
    runtime: AgentRuntime

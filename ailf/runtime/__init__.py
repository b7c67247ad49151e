"""The actor runtime: agents, mailboxes, broadcast, supervision.

See docs/concepts.md for the model and docs/wire-format.md for what travels in Redis.

A mailbox message's path, each module entered once:

1. ``_runtime`` — ``Runtime.send``/``ask`` encode the envelope (``_message``), wait for
   room (``_admission``) and XADD it to the agent's mailbox;
2. ``_reader`` — a reader's XREADGROUP (or a claim, or a redelivery) hands the entry to
   its instance's queue;
3. ``_cell`` — a worker decodes and vets it, runs the handler, and reports the outcome;
4. ``_settle`` — the settler acknowledges (batched, by ``_acker``), answers an ask and
   acknowledges in one write, schedules a retry (redelivered by step 2), or writes a dead
   letter and then acknowledges.
"""

from ailf.runtime._agent import Agent as Agent
from ailf.runtime._agent import structure_options as structure_options
from ailf.runtime._message import DeadLetter as DeadLetter
from ailf.runtime._message import Message as Message
from ailf.runtime._registry import AgentInfo as AgentInfo
from ailf.runtime._registry import ProcessInfo as ProcessInfo
from ailf.runtime._registry import RegistrySnapshot as RegistrySnapshot
from ailf.runtime._runtime import Runtime as Runtime
from ailf.runtime._statistics import AgentStatistics as AgentStatistics
from ailf.runtime._timers import Reminder as Reminder

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentStatistics",
    "DeadLetter",
    "Message",
    "ProcessInfo",
    "RegistrySnapshot",
    "Reminder",
    "Runtime",
    "structure_options",
]

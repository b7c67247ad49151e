"""The actor runtime: agents, mailboxes, broadcast, supervision.

See docs/concepts.md for the model and docs/wire-format.md for what travels in Redis.
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

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentStatistics",
    "DeadLetter",
    "Message",
    "ProcessInfo",
    "RegistrySnapshot",
    "Runtime",
    "structure_options",
]

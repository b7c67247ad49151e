"""The actor runtime: agents, mailboxes, broadcast, supervision.

See docs/concepts.md for the model and docs/wire-format.md for what travels in Redis.
"""

from ailf.runtime.agent import Agent as Agent
from ailf.runtime.agent import structure_options as structure_options
from ailf.runtime.message import DeadLetter as DeadLetter
from ailf.runtime.message import Message as Message
from ailf.runtime.registry import AgentInfo as AgentInfo
from ailf.runtime.registry import ProcessInfo as ProcessInfo
from ailf.runtime.registry import RegistrySnapshot as RegistrySnapshot
from ailf.runtime.runtime import Runtime as Runtime
from ailf.runtime.statistics import AgentStatistics as AgentStatistics

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

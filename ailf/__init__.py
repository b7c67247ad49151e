"""ailf: an actor-style agent runtime for Python on Redis and trio.

The public API is re-exported here; ``tests/test_public_api.py`` checks ``__all__``.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ailf._cluster_server import RedisClusterServer as RedisClusterServer
from ailf.clients import AsyncRedisClient as AsyncRedisClient
from ailf.clients import RedisClient as RedisClient
from ailf.codec import message_type as message_type
from ailf.config import EMBEDDED_URL as EMBEDDED_URL
from ailf.config import RedisConfig as RedisConfig
from ailf.config import RetryPolicy as RetryPolicy
from ailf.errors import AilfError as AilfError
from ailf.errors import AskTimeout as AskTimeout
from ailf.errors import AuthenticationError as AuthenticationError
from ailf.errors import ClusterUnavailableError as ClusterUnavailableError
from ailf.errors import ConfigError as ConfigError
from ailf.errors import CrossSlotError as CrossSlotError
from ailf.errors import DataError as DataError
from ailf.errors import DecodeError as DecodeError
from ailf.errors import EmbeddedServerError as EmbeddedServerError
from ailf.errors import EscalationError as EscalationError
from ailf.errors import MailboxFull as MailboxFull
from ailf.errors import MessageTooLarge as MessageTooLarge
from ailf.errors import NotReplicated as NotReplicated
from ailf.errors import RedisConnectionError as RedisConnectionError
from ailf.errors import RedisError as RedisError
from ailf.errors import RedisTimeoutError as RedisTimeoutError
from ailf.errors import RemoteError as RemoteError
from ailf.errors import ResponseError as ResponseError
from ailf.errors import ScenarioError as ScenarioError
from ailf.errors import SupervisionError as SupervisionError
from ailf.errors import TLSHandshakeTimeout as TLSHandshakeTimeout
from ailf.errors import WatchError as WatchError
from ailf.messaging import AsyncRedisPubSub as AsyncRedisPubSub
from ailf.messaging import AsyncRedisStream as AsyncRedisStream
from ailf.messaging import RedisPubSub as RedisPubSub
from ailf.messaging import RedisStream as RedisStream
from ailf.runtime import Agent as Agent
from ailf.runtime import AgentStatistics as AgentStatistics
from ailf.runtime import DeadLetter as DeadLetter
from ailf.runtime import Message as Message
from ailf.runtime import Reminder as Reminder
from ailf.runtime import Runtime as Runtime
from ailf.server import RedisServer as RedisServer

try:
    __version__ = _version("ailf")
except _PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "EMBEDDED_URL",
    "Agent",
    "AgentStatistics",
    "AilfError",
    "AskTimeout",
    "AsyncRedisClient",
    "AsyncRedisPubSub",
    "AsyncRedisStream",
    "AuthenticationError",
    "ClusterUnavailableError",
    "ConfigError",
    "CrossSlotError",
    "DataError",
    "DeadLetter",
    "DecodeError",
    "EmbeddedServerError",
    "EscalationError",
    "MailboxFull",
    "Message",
    "MessageTooLarge",
    "NotReplicated",
    "RedisClient",
    "RedisClusterServer",
    "RedisConfig",
    "RedisConnectionError",
    "RedisError",
    "RedisPubSub",
    "RedisServer",
    "RedisStream",
    "RedisTimeoutError",
    "Reminder",
    "RemoteError",
    "ResponseError",
    "RetryPolicy",
    "Runtime",
    "ScenarioError",
    "SupervisionError",
    "TLSHandshakeTimeout",
    "WatchError",
    "__version__",
    "message_type",
]

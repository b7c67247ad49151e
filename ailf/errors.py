"""Every exception ailf raises, in one tree.

::

    AilfError
     ├── ConfigError                 a bad RedisConfig value or URL (also a ValueError)
     ├── RedisError                  something went wrong talking to Redis (also redis.RedisError)
     │    ├── RedisConnectionError   unreachable, refused, or lost mid-command
     │    │    │                     (also redis.ConnectionError)
     │    │    ├── AuthenticationError   wrong username/password
     │    │    │                         (also redis.AuthenticationError)
     │    │    ├── TLSHandshakeTimeout   the server took the connection but did not
     │    │    │                         answer the TLS handshake (a plain port?)
     │    │    └── ClusterUnavailableError   no node of a cluster served a slot within
     │    │                              cluster_retry_timeout (a failover too slow?)
     │    ├── RedisTimeoutError      no reply within socket_timeout (also redis.TimeoutError)
     │    ├── ResponseError          the server answered with an error reply; ``.code`` holds
     │    │                          its first word, e.g. ``"NOGROUP"`` (also redis.ResponseError)
     │    ├── DataError              a command's arguments cannot go to Redis (a None value, a
     │    │                          NaN expiry, no fields): nothing was sent (also
     │    │                          redis.DataError, TypeError and ValueError)
     │    └── WatchError             a key watched by a pipeline changed before EXEC, so the
     │                               transaction did not run (also redis.WatchError)
     ├── EmbeddedServerError         the embedded redis-server could not be found or started
     ├── ScenarioError               a scenario file that cannot run: every problem, with the
     │                               file and the path to the field (also a ValueError)
     ├── CrossSlotError              keys of several cluster slots in one command or
     │                               transaction; nothing was sent (also a ValueError)
     ├── DecodeError                 an undecodable payload or envelope (also a ValueError)
     ├── MessageTooLarge             an envelope over the runtime's max_message_size
     │                               (also a ValueError)
     ├── MailboxFull                 a mailbox stayed at its mailbox_limit for send_timeout
     ├── AskTimeout                  no reply to ``ask()`` in time (also a TimeoutError)
     ├── RemoteError                 the asked agent's handler raised; ``.type_name`` and
     │                               ``.message`` keep the original exception's
     └── SupervisionError            an agent could not be kept running
          └── EscalationError        an agent failed past its restart intensity limit;
                                     the runtime stopped because of it

Why the Redis errors also derive from redis-py's: code written against redis-py
(``except redis.ConnectionError``) keeps working when it moves to ailf's clients, and
code written against ailf can catch everything with ``except AilfError``. Both clients
raise them, whichever engine runs the command: redis-py's exceptions and socket errors
are translated in one place (``ailf.clients._errors``), so the same ``except`` clause
works for both faces.

A missing key is never an error: it is ``None``. A broken connection is never ``None``:
it is a :class:`RedisConnectionError`.
"""

from __future__ import annotations

import redis.exceptions as _redis_exc

__all__ = [
    "AilfError",
    "AskTimeout",
    "AuthenticationError",
    "ClusterUnavailableError",
    "ConfigError",
    "CrossSlotError",
    "DataError",
    "DecodeError",
    "EmbeddedServerError",
    "EscalationError",
    "MailboxFull",
    "MessageTooLarge",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "RemoteError",
    "ResponseError",
    "ScenarioError",
    "SupervisionError",
    "TLSHandshakeTimeout",
    "WatchError",
]


class AilfError(Exception):
    """The root of every exception ailf raises on purpose."""


class ConfigError(AilfError, ValueError):
    """A configuration value or URL is invalid; the message names the field and the value."""


class RedisError(AilfError, _redis_exc.RedisError):
    """Talking to Redis failed."""


class RedisConnectionError(RedisError, _redis_exc.ConnectionError):
    """The server could not be reached, or the connection broke while a command was in flight.

    A command that fails this way may or may not have run on the server; it is not
    retried unless the caller asked for retries (see ``RetryPolicy``).
    """


class RedisTimeoutError(RedisError, _redis_exc.TimeoutError):
    """The server did not answer within ``socket_timeout``."""


class AuthenticationError(RedisConnectionError, _redis_exc.AuthenticationError):
    """The server refused the username or password."""


class TLSHandshakeTimeout(RedisConnectionError):
    """The server took the TCP connection but did not answer the TLS handshake in time.

    Almost always a ``rediss://`` URL (or ``ssl=True``) pointed at a plain Redis port,
    which waits for a command instead of answering: connecting again cannot help, so
    it is never retried.
    """


class ClusterUnavailableError(RedisConnectionError):
    """No node of a Redis Cluster served a slot within ``cluster_retry_timeout``.

    The cluster answered CLUSTERDOWN or TRYAGAIN, or the slot's node was gone and no
    replica had taken its place, for longer than the client waits. The message names the
    slot, the last node tried and its answer. Raise ``cluster_retry_timeout`` above the
    cluster's ``cluster-node-timeout`` plus an election if failovers take longer.
    """


class ResponseError(RedisError, _redis_exc.ResponseError):
    """The server answered a command with an error reply.

    ``code`` is the reply's first word (``"NOGROUP"``, ``"BUSYGROUP"``, ``"WRONGTYPE"``,
    ``"ERR"``...), so callers can branch on it without parsing the message.
    """

    @property
    def code(self) -> str:
        text = str(self)
        return text.split(" ", 1)[0] if text else ""


class DataError(RedisError, _redis_exc.DataError, TypeError, ValueError):
    """A command's arguments cannot be sent to Redis as they are; nothing was sent.

    A value of a type Redis cannot hold (``None``, a dict: encode it with
    ``ailf.codec.dumps``, or use ``set_json``), an expiry that is not a positive finite
    number of seconds, an ``xadd`` without fields. Also :class:`redis.DataError`, what
    redis-py raises for the same mistakes, and :class:`TypeError` and :class:`ValueError`,
    what Python code checks a bad argument with: each of those ``except`` clauses
    catches it.
    """


class WatchError(RedisError, _redis_exc.WatchError):
    """A key watched with ``pipe.watch()`` changed before EXEC: the transaction did not run.

    Nothing queued after ``pipe.multi()`` was applied. Read the keys again and retry;
    ``client.transaction(func, *keys)`` does so until the transaction goes through.
    """


class EmbeddedServerError(AilfError):
    """No server binary was found, or the embedded server did not come up."""


class ScenarioError(AilfError, ValueError):
    """A scenario file is unreadable or inconsistent; nothing was started.

    ``problems`` lists every problem found, each as ``"agents[1].replicas: expected an
    integer >= 1, found 0"``; the message prefixes each with the file's path, one per
    line, so that an editor can jump to it.
    """

    def __init__(self, path: str, problems: list[str] | tuple[str, ...]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{path}: {problem}" for problem in self.problems))


class CrossSlotError(AilfError, ValueError):
    """A command, or a transaction, names keys of several hash slots of a cluster.

    A cluster runs a multi-key command (MGET, DEL of several keys, XREADGROUP over
    several streams), a transaction or a WATCH only when all its keys are in one slot.
    Nothing was sent. The message lists each key with its slot; give keys that must go
    together a common hash tag — ``{user-42}:cart`` and ``{user-42}:orders`` share one.
    """


class DecodeError(AilfError, ValueError):
    """A payload, stream entry or envelope could not be decoded; the message says why."""


class MessageTooLarge(AilfError, ValueError):
    """An envelope is larger than the runtime's ``max_message_size``; send a reference
    (a key, a URL) instead of the data, or raise the limit on every runtime involved."""


class MailboxFull(AilfError):
    """A mailbox's backlog stayed at the runtime's ``mailbox_limit`` for ``send_timeout``
    seconds, so the message was not sent.

    ``mailbox`` is the stream, ``backlog`` the entries still to handle there (unread plus
    pending) as last measured by this sender (-1 if it got no measurement in time),
    ``limit`` the limit. Nothing was added: send it again later, add replicas to the
    agent, or raise the limit.
    """

    def __init__(self, message: str, *, mailbox: str = "", backlog: int = 0, limit: int = 0):
        super().__init__(message)
        self.mailbox = mailbox
        self.backlog = backlog
        self.limit = limit


class NotReplicated(AilfError):
    """A message was added to its mailbox on the primary, but fewer replicas than the
    runtime's ``wait_replicas`` confirmed it within ``wait_timeout`` seconds.

    The message was sent (it is in the mailbox, and will be handled unless the primary
    fails before it reaches a replica). ``mailbox`` is the stream, ``entry_id`` the
    entry, ``confirmed`` how many replicas had it, ``wanted`` how many were asked for.
    Sending it again may deliver it twice; check the replicas' health first.
    """

    def __init__(
        self,
        message: str,
        *,
        mailbox: str = "",
        entry_id: str = "",
        confirmed: int = 0,
        wanted: int = 0,
    ):
        super().__init__(message)
        self.mailbox = mailbox
        self.entry_id = entry_id
        self.confirmed = confirmed
        self.wanted = wanted


class AskTimeout(AilfError, TimeoutError):
    """``ask()`` got no reply in time. The message names the agent and the timeout.

    The request may still be handled later (it stays in the agent's mailbox); its late
    reply is dropped. Also a builtin :class:`TimeoutError`, so ``except TimeoutError``
    catches it.
    """

    def __init__(self, message: str, *, agent: str = "", timeout: float = 0.0) -> None:
        super().__init__(message)
        self.agent = agent
        self.timeout = timeout


class RemoteError(AilfError):
    """The agent that was asked raised an exception while handling the request.

    ``type_name`` is the original exception's class name (``"ValueError"``), ``message``
    its text and ``agent`` the agent that raised it: the exception object itself stays
    on the remote side, since nothing but JSON travels.
    """

    def __init__(self, type_name: str, message: str, *, agent: str = "") -> None:
        super().__init__(f"agent {agent!r} raised {type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.agent = agent


class SupervisionError(AilfError):
    """An agent instance could not be kept running under its restart policy."""


class EscalationError(SupervisionError):
    """An agent failed more often than its restart intensity allows.

    The runtime stops (gracefully, for every other agent) and raises this from its
    ``async with`` block; ``__cause__`` is the agent's last exception, ``agent`` and
    ``replica`` say which instance failed.
    """

    def __init__(self, message: str, *, agent: str = "", replica: int = 0) -> None:
        super().__init__(message)
        self.agent = agent
        self.replica = replica

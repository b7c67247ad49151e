"""Every exception ailf raises, in one tree.

::

    AilfError
     ├── ConfigError                 a bad RedisConfig value or URL (also a ValueError)
     ├── RedisError                  something went wrong talking to Redis (also redis.RedisError)
     │    ├── RedisConnectionError   unreachable, refused, or lost mid-command
     │    │                          (also redis.ConnectionError)
     │    ├── RedisTimeoutError      no reply within socket_timeout (also redis.TimeoutError)
     │    ├── AuthenticationError    wrong username/password (also redis.AuthenticationError)
     │    └── ResponseError          the server answered with an error reply; ``.code`` holds
     │                               its first word, e.g. ``"NOGROUP"`` (also redis.ResponseError)
     ├── EmbeddedServerError         the embedded redis-server could not be found or started
     ├── ScenarioError               a scenario file that cannot run: every problem, with the
     │                               file and the path to the field (also a ValueError)
     └── DecodeError                 an undecodable payload or envelope (also a ValueError)

Why the Redis errors also derive from redis-py's: code written against redis-py
(``except redis.ConnectionError``) keeps working when it moves to ailf's clients, and
code written against ailf can catch everything with ``except AilfError``. The sync
client translates redis-py's exceptions into these at its boundary, the trio client
raises them directly, so the same ``except`` clause works for both faces.

A missing key is never an error: it is ``None``. A broken connection is never ``None``:
it is a :class:`RedisConnectionError`.
"""

from __future__ import annotations

import redis.exceptions as _redis_exc

__all__ = [
    "AilfError",
    "AuthenticationError",
    "ConfigError",
    "DecodeError",
    "EmbeddedServerError",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "ResponseError",
    "ScenarioError",
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


class ResponseError(RedisError, _redis_exc.ResponseError):
    """The server answered a command with an error reply.

    ``code`` is the reply's first word (``"NOGROUP"``, ``"BUSYGROUP"``, ``"WRONGTYPE"``,
    ``"ERR"``...), so callers can branch on it without parsing the message.
    """

    @property
    def code(self) -> str:
        text = str(self)
        return text.split(" ", 1)[0] if text else ""


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


class DecodeError(AilfError, ValueError):
    """A payload, stream entry or envelope could not be decoded; the message says why."""

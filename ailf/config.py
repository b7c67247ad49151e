"""Where Redis is and how to talk to it: :class:`RedisConfig` and :class:`RetryPolicy`.

Both are frozen attrs classes validated on construction, so a bad value fails where it
was written, with the field's name and the value in the message, rather than as a
confusing socket error later. Every client, the runtime and the CLI take one.
"""

from __future__ import annotations

import math
import os
import random
import re
import ssl as _ssl
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from ailf.errors import ConfigError

__all__ = ["EMBEDDED_URL", "RedisConfig", "RetryPolicy", "given_or_from_env", "redact_url"]

#: The URL that means "start a throwaway server for me" (see :mod:`ailf.server`).
EMBEDDED_URL = "embedded://"

CertReqs = Literal["required", "optional", "none"]


#: Fields whose values never appear in a message, whatever their type.
_SECRET_FIELDS = frozenset({"password"})


def _fail(field: str, value: object, expected: str, owner: str = "RedisConfig") -> ConfigError:
    return ConfigError(f"{owner}.{field}: expected {expected}, got {_shown(field, value)}")


def _shown(field: str, value: object) -> str:
    """``value`` as an error message may show it: a password never, a URL masked."""
    if field in _SECRET_FIELDS:
        return f"a value of type {type(value).__name__} (not shown: it is a password)"
    if isinstance(value, str) and ("://" in value or "@" in value):
        return repr(redact_url(value))
    return repr(value)


def _owner(instance: object) -> str:
    return type(instance).__name__


def _node_list(value: Any) -> tuple[str, ...]:
    """``cluster_nodes``: ``"host:port"`` strings (a list, a tuple, or one comma-separated
    string), checked here so that a typo fails where it was written."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        nodes = tuple(items)
    except TypeError:
        raise _fail("cluster_nodes", value, '"host:port" strings') from None
    for node in nodes:
        host, colon, port = node.rpartition(":") if isinstance(node, str) else ("", "", "")
        if not (host and colon and port.isdigit() and 1 <= int(port) <= 65535):
            raise _fail("cluster_nodes", value, '"host:port" strings, e.g. "10.0.0.5:7000"')
    return nodes


def _seconds(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A number of seconds > 0 (finite): None is no answer here."""
    if value is None or value == math.inf:
        raise _fail(attribute.name, value, "a finite number of seconds > 0", _owner(instance))
    _positive(instance, attribute, value)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    # ``not value > 0`` rather than ``value <= 0``: NaN fails every comparison.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _fail(attribute.name, value, "a number of seconds > 0 (or None)", _owner(instance))


_Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]


def _int_in(low: int, high: int | None = None) -> _Validator:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        bad = isinstance(value, bool) or not isinstance(value, int)
        if bad or value < low or (high is not None and value > high):
            span = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
            raise _fail(attribute.name, value, span, _owner(instance))

    return check


def _optional_str(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise _fail(attribute.name, value, "a string or None", _owner(instance))


def _bool(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail(attribute.name, value, "True or False", _owner(instance))


def _masked(value: str | None) -> str:
    return "None" if value is None else "'***'"


@attrs.frozen
class RetryPolicy:
    """How often, and how patiently, to retry an idempotent command or a reconnect.

    ``attempts`` counts retries after the first try (0 disables retrying). The delay
    before retry *n* (0-based) is ``min(backoff_max, backoff_initial * 2**n)``, with up
    to 50 % random jitter when ``jitter`` is true, so that many clients restarting
    together do not reconnect in lockstep.
    """

    attempts: int = attrs.field(default=3, validator=_int_in(0))
    backoff_initial: float = attrs.field(default=0.05, validator=_seconds)
    backoff_max: float = attrs.field(default=2.0, validator=_seconds)
    jitter: bool = attrs.field(default=True, validator=_bool)

    def delay(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (0-based), jitter included.

        The doubling stops at ``backoff_max`` however many attempts were made (a reader
        failing for half an hour counts past a thousand: ``2 ** 1024`` overflows a float).
        """
        base: float = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt, 64))
        return base * (0.5 + random.random() / 2) if self.jitter else base


@attrs.frozen
class RedisConfig:
    """Connection settings for one Redis server (or the embedded one).

    >>> RedisConfig(port=6380).port
    6380
    >>> RedisConfig(port=0)
    Traceback (most recent call last):
    ...
    ailf.errors.ConfigError: RedisConfig.port: expected an integer in 1..65535, got 0

    ``unix_socket_path`` replaces host and port when set. ``embedded=True`` means "no
    server of mine: start a throwaway one": a value like any other here, which the
    clients resolve when they first connect (:func:`ailf.server.resolve_embedded`). A
    config never does I/O. The password never appears in ``repr()``.

    ``cluster=True`` talks to a Redis Cluster: ``host:port`` is any node (a seed), and
    ``cluster_nodes`` more seeds (``"host:port"`` strings), tried in turn when the
    first does not answer. ``cluster_retry_timeout`` bounds how long a command waits
    out a cluster that cannot serve its slot (a failover in progress, a node gone and
    not yet replaced) before it fails; it must exceed the cluster's node timeout plus
    an election (Redis's default node timeout is 15 s).
    """

    host: str = attrs.field(default="localhost")
    port: int = attrs.field(default=6379, validator=_int_in(1, 65535))
    db: int = attrs.field(default=0, validator=_int_in(0))
    username: str | None = attrs.field(default=None, validator=_optional_str)
    password: str | None = attrs.field(default=None, validator=_optional_str, repr=_masked)
    ssl: bool = attrs.field(default=False, validator=_bool)
    ssl_ca_certs: str | None = attrs.field(default=None, validator=_optional_str)
    ssl_certfile: str | None = attrs.field(default=None, validator=_optional_str)
    ssl_keyfile: str | None = attrs.field(default=None, validator=_optional_str)
    ssl_cert_reqs: CertReqs = attrs.field(default="required")
    ssl_check_hostname: bool = attrs.field(default=True, validator=_bool)
    socket_timeout: float | None = attrs.field(default=None, validator=_positive)
    socket_connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    socket_keepalive: bool = attrs.field(default=True, validator=_bool)
    max_connections: int = attrs.field(default=50, validator=_int_in(1))
    decode_responses: bool = attrs.field(default=True, validator=_bool)
    client_name: str | None = attrs.field(default=None)
    unix_socket_path: str | None = attrs.field(default=None, validator=_optional_str)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    embedded: bool = attrs.field(default=False, validator=_bool)
    cluster: bool = attrs.field(default=False, validator=_bool)
    cluster_nodes: tuple[str, ...] = attrs.field(default=(), converter=_node_list)
    cluster_retry_timeout: float = attrs.field(default=30.0, validator=_positive)

    @ssl_cert_reqs.validator
    def _check_cert_reqs(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in ("required", "optional", "none"):
            raise _fail(attribute.name, value, "'required', 'optional' or 'none'")

    @host.validator
    def _check_host(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str) or not value.strip():
            raise _fail(attribute.name, value, "a non-empty host name")
        if "://" in value or "@" in value:
            # A URL here would end up, password and all, in every connection error.
            raise ConfigError(
                f"RedisConfig.host: expected a host name, got the URL {redact_url(value)!r};"
                " use RedisConfig.from_url(url)"
            )

    @client_name.validator
    def _check_client_name(self, attribute: attrs.Attribute[Any], value: object) -> None:
        # CLIENT SETNAME refuses spaces; better here than at the first connection.
        if value is not None and (not isinstance(value, str) or any(c.isspace() for c in value)):
            raise _fail(attribute.name, value, "a string without spaces, or None")

    @retry.validator
    def _check_retry(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, RetryPolicy):
            raise _fail(attribute.name, value, "a RetryPolicy")

    @cluster.validator
    def _check_cluster(self, attribute: attrs.Attribute[Any], value: bool) -> None:
        if not value:
            return
        if self.db != 0:
            raise ConfigError(
                f"RedisConfig.db: a cluster has only database 0, got {self.db} with cluster=True"
            )
        if self.unix_socket_path is not None or self.embedded:
            raise ConfigError(
                "RedisConfig.cluster: a cluster is reached over TCP; unix_socket_path and"
                " embedded do not go with cluster=True"
            )

    # -- constructors ---------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> RedisConfig:
        """Parse ``redis://``, ``rediss://`` (TLS), ``unix://`` or ``embedded://`` URLs.

        ``redis://[[username]:password@]host[:port][/db][?option=value...]``; options
        are any field of this class (``socket_timeout=0.5``, ``ssl_cert_reqs=none``,
        ``client_name=worker``, ``db=2``...). ``unix:///path/to/redis.sock?db=1`` uses a
        socket file. The bare word ``embedded`` is accepted too. Keyword ``overrides``
        win over what the URL says.
        """
        if not isinstance(url, str) or not url.strip():
            got = repr(url) if isinstance(url, str) else f"a {type(url).__name__}"
            raise ConfigError(f"RedisConfig.from_url: expected a Redis URL string, got {got}")
        url = url.strip()
        if url in ("embedded", EMBEDDED_URL.rstrip("/"), EMBEDDED_URL):
            return cls(embedded=True, **overrides)
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # the URL itself stays out: it may hold a password
            raise ConfigError(f"RedisConfig.from_url: not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        kwargs: dict[str, Any] = {}
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"RedisConfig.from_url: unsupported scheme {parts.scheme!r} in {redact_url(url)!r};"
                " use redis://, rediss://, unix:// or embedded://"
            )
        if parts.username:
            kwargs["username"] = unquote(parts.username)
        if parts.password:
            kwargs["password"] = unquote(parts.password)
        if scheme == "unix":
            if not parts.path:
                raise ConfigError(f"RedisConfig.from_url: no socket path in {redact_url(url)!r}")
            kwargs["unix_socket_path"] = unquote(parts.path)
        else:
            try:
                port = parts.port
            except ValueError:
                raise ConfigError(
                    f"RedisConfig.from_url: bad port in {redact_url(url)!r}; expected 1..65535"
                ) from None
            if parts.hostname:
                kwargs["host"] = unquote(parts.hostname)
            if port is not None:
                kwargs["port"] = port
            kwargs["ssl"] = scheme == "rediss"
            path = parts.path.strip("/")
            if path:
                if not path.isdigit():
                    raise ConfigError(
                        f"RedisConfig.from_url: database {path!r} in {redact_url(url)!r}"
                        " is not a number"
                    )
                kwargs["db"] = int(path)
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            kwargs[key] = _coerce_option(key, values[-1])
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_env(cls, default: str | None = None, **overrides: Any) -> RedisConfig:
        """Read ``AILF_REDIS_URL``, then ``REDIS_URL``; else ``default``; else localhost:6379."""
        url = os.environ.get("AILF_REDIS_URL") or os.environ.get("REDIS_URL") or default
        return cls.from_url(url, **overrides) if url else cls(**overrides)

    # -- derived views --------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` or the socket path: what error messages name."""
        if self.embedded:
            return "embedded server"
        return self.unix_socket_path or f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """This config as a URL (password masked): for logs and messages."""
        if self.embedded:
            return EMBEDDED_URL
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:***@"
        elif self.username:
            auth = f"{self.username}@"
        if self.unix_socket_path:
            return f"unix://{auth}{self.unix_socket_path}?db={self.db}"
        scheme = "rediss" if self.ssl else "redis"
        url = f"{scheme}://{auth}{self.host}:{self.port}/{self.db}"
        if self.cluster:
            url += "?cluster=true"
            if self.cluster_nodes:
                url += f"&cluster_nodes={','.join(self.cluster_nodes)}"
        return url

    @property
    def seeds(self) -> list[RedisConfig]:
        """For a cluster: one config per seed node (this one's address first), each for a
        plain connection to that node, with every other setting kept."""
        addresses = [(self.host, self.port)]
        for node in self.cluster_nodes:
            host, _, port = node.rpartition(":")
            addresses.append((host, int(port)))
        return [self.node(host, port) for host, port in dict.fromkeys(addresses)]

    def node(self, host: str, port: int) -> RedisConfig:
        """This config pointed at one node of its cluster (a plain connection there)."""
        return attrs.evolve(self, host=host, port=port, cluster=False, cluster_nodes=())

    def replace(self, **changes: Any) -> RedisConfig:
        """A copy with some fields changed (validated again)."""
        return attrs.evolve(self, **changes)

    def ssl_context(self) -> _ssl.SSLContext | None:
        """An :class:`ssl.SSLContext` built from the TLS fields, or None without TLS."""
        if not self.ssl:
            return None
        try:
            context = _ssl.create_default_context(cafile=self.ssl_ca_certs)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except (OSError, _ssl.SSLError) as exc:
            raise ConfigError(
                f"RedisConfig: cannot load the TLS files (ssl_ca_certs={self.ssl_ca_certs!r},"
                f" ssl_certfile={self.ssl_certfile!r}, ssl_keyfile={self.ssl_keyfile!r}): {exc}"
            ) from None
        if self.ssl_cert_reqs == "none":
            context.check_hostname = False
            context.verify_mode = _ssl.CERT_NONE
        else:
            context.check_hostname = self.ssl_check_hostname
            context.verify_mode = (
                _ssl.CERT_REQUIRED if self.ssl_cert_reqs == "required" else _ssl.CERT_OPTIONAL
            )
        return context

    def redis_py_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a redis-py ``ConnectionPool`` (sync or asyncio)."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_connect_timeout,
            "socket_keepalive": self.socket_keepalive,
            "max_connections": self.max_connections,
            "decode_responses": self.decode_responses,
            "client_name": self.client_name,
        }
        if self.unix_socket_path:
            kwargs["path"] = self.unix_socket_path
            return kwargs
        kwargs["host"] = self.host
        kwargs["port"] = self.port
        if self.ssl:
            kwargs.update(
                ssl_ca_certs=self.ssl_ca_certs,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_cert_reqs=self.ssl_cert_reqs,
                ssl_check_hostname=self.ssl_check_hostname and self.ssl_cert_reqs != "none",
            )
        return kwargs


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_FIELD_TYPES = {field.name: field.type for field in attrs.fields(RedisConfig)}
# Credentials go in the URL's user-info part, not in its query string.
_NOT_URL_OPTIONS = frozenset({"retry", "embedded", "password", "username"})


def _coerce_option(key: str, raw: str) -> Any:
    """Turn one ``?key=value`` URL option into the field's type, or say what is wrong."""
    kind = _FIELD_TYPES.get(key)
    if kind is None or key in _NOT_URL_OPTIONS:
        known = ", ".join(sorted(k for k in _FIELD_TYPES if k not in _NOT_URL_OPTIONS))
        raise ConfigError(f"RedisConfig.from_url: unknown option {key!r}; known options: {known}")
    text = str(kind)
    if text.startswith("tuple"):
        return tuple(part for part in raw.split(",") if part)
    try:
        if text == "bool":
            return _BOOL_WORDS[raw.lower()]
        if text == "int":
            return int(raw)
        if "float" in text:
            return None if raw.lower() in ("", "none") else float(raw)
    except (KeyError, ValueError):
        raise _fail(key, raw, f"a value of type {text}") from None
    return raw or None


def given_or_from_env(config: object, owner: str) -> RedisConfig:
    """``config``, or :meth:`RedisConfig.from_env` when it is None: what clients take.

    A URL string in place of a config is the common slip; it would otherwise surface as
    an AttributeError at the first command, far from the line that made it. The message
    shows such a URL with its password masked, and anything else by its type alone: it
    is going to end up in logs.
    """
    if config is None:
        return RedisConfig.from_env()
    if not isinstance(config, RedisConfig):
        if isinstance(config, str):
            got, hint = repr(redact_url(config)), "; use RedisConfig.from_url(url)"
        else:
            got, hint = f"a {type(config).__name__}", ""
        raise ConfigError(f"{owner}: expected a RedisConfig or None, got {got}{hint}")
    return config


_SECRET_OPTION = re.compile(r"(?i)([?&][^=&#]*(?:pass|secret|token|auth)[^=&#]*=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` fit for an error message or a log: credentials masked, even in a URL that
    does not parse.

    Everything between the scheme and the last ``@`` is user information: the user name
    stays when a ``:`` separates it from a password, the rest becomes ``***`` (a lone
    token before the ``@`` may be a password, so it goes too). Query options whose names
    suggest a secret (``password=``, ``token=``…) lose their values.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, host_and_more = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host_and_more}" if colon else f"***@{host_and_more}"
    return _SECRET_OPTION.sub(r"\1***", f"{scheme}{separator}{rest}")

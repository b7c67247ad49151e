"""The Redis key and channel layout of one namespace.

Every key and channel of a namespace starts with ``ailf:{namespace}:`` so that a
namespace can be listed (``SCAN MATCH ailf:demo:*``), deleted as a whole, and
ACL-restricted to one user (``~ailf:demo:* &ailf:demo:*``). Agent and topic names are
used as they are; they must not contain whitespace (they travel in URLs, logs and CLI
arguments) but may contain ``:`` and ``.``.
"""

from __future__ import annotations

import re

import attrs

from ailf.errors import ConfigError

__all__ = ["GROUP", "Keys", "check_name", "check_namespace"]

#: The consumer group every mailbox is read through. One name for all mailboxes lets a
#: single XREADGROUP (one GROUP, one consumer) read many mailboxes at once.
GROUP = "ailf"


_SPACE = re.compile(r"\s")


def check_name(kind: str, name: object) -> str:
    """Validate an agent, topic or namespace name; a :class:`ConfigError` says what is wrong."""
    if not isinstance(name, str) or not name or _SPACE.search(name):
        raise ConfigError(f"{kind} name: expected a non-empty string without spaces, got {name!r}")
    return name


def check_namespace(name: object) -> str:
    """A namespace name: as :func:`check_name`, and without ``:``.

    Every key of a namespace starts with ``ailf:{namespace}:``; a namespace ``shop:x``
    would put its keys under ``ailf:shop:*`` too, inside namespace ``shop``'s ACL rule,
    listing and deletion.
    """
    check_name("namespace", name)
    assert isinstance(name, str)
    if ":" in name:
        raise ConfigError(
            f"namespace name: ':' separates key parts, so it may not contain one; got {name!r}"
        )
    return name


@attrs.frozen
class Keys:
    """Key and channel names of one namespace (see docs/wire-format.md for the table)."""

    namespace: str = attrs.field(converter=lambda ns: check_namespace(ns))

    @property
    def prefix(self) -> str:
        return f"ailf:{self.namespace}:"

    def mailbox(self, agent: str) -> str:
        """The stream an agent's messages are added to."""
        return f"{self.prefix}mailbox:{agent}"

    def dead(self, agent: str) -> str:
        """The stream of an agent's dead letters."""
        return f"{self.prefix}dead:{agent}"

    def topic(self, topic: str) -> str:
        """The pub/sub channel of a broadcast topic."""
        return f"{self.prefix}topic:{topic}"

    def reply(self, process: str) -> str:
        """The pub/sub channel a process receives its ``ask()`` replies on."""
        return f"{self.prefix}reply:{process}"

    def is_reply(self, channel: str) -> bool:
        """True if ``channel`` is a reply inbox of this namespace: the only channels an
        agent publishes replies to. A ``reply_to`` is written by whoever sent the
        request, so without this check a sender allowed only to XADD could make an
        agent publish on any channel (a topic's, another namespace's) on its behalf.
        """
        head = f"{self.prefix}reply:"
        if not (len(head) < len(channel) <= len(head) + 256 and channel.startswith(head)):
            return False
        try:
            channel.encode()  # a lone surrogate cannot be sent
        except UnicodeEncodeError:
            return False
        return not _SPACE.search(channel)

    def wake(self, process: str) -> str:
        """A process's private stream, read with its mailboxes, used to interrupt a
        blocked read when the set of mailboxes to read changes."""
        return f"{self.prefix}wake:{process}"

    def process(self, process: str) -> str:
        """The hash a live process publishes its heartbeat, agents and counters in."""
        return f"{self.prefix}process:{process}"

    @property
    def processes(self) -> str:
        """The sorted set of process ids scored by their last heartbeat."""
        return f"{self.prefix}processes"

"""The Redis key and channel layout of one namespace, and the rule for names in it.

Every key and channel of a namespace starts with ``ailf:{namespace}:`` so that a
namespace can be listed (``SCAN MATCH ailf:demo:*``), deleted as a whole, and
ACL-restricted to one user (``~ailf:demo:* &ailf:demo:*``). Agent and topic names are
used as they are, after the kind of key (``ailf:demo:mailbox:{agent}``).

One rule for every name — namespace, agent, topic — checked by :func:`check_name`
wherever a name comes in (``Runtime``, ``spawn``, ``send``, the scenario loader, the
``ailf`` command), so that a name accepted in one place is never refused in another:
1 to 128 ASCII letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit.
What it keeps out, and why:

- ``:`` separates key parts: a namespace ``shop:x`` would put its keys inside namespace
  ``shop``'s prefix (its ACL rule, its listing, its reset), and an agent ``a:b`` would
  make key and channel names ambiguous to anyone parsing them back.
- Glob characters ``* ? [ ] \\``: ACL key and channel rules and ``SCAN MATCH`` are glob
  patterns built from names, where ``a*`` would cover every agent starting with ``a``.
- Whitespace, quotes and other punctuation: names are command-line arguments and appear
  in log lines, unquoted; a leading ``-`` would read as an option.
- Non-ASCII letters: look-alikes (Latin and Cyrillic a) that would be different keys.
- Length: a name is part of every key, channel and log line about it.
"""

from __future__ import annotations

import re

import attrs

from ailf.errors import ConfigError

__all__ = [
    "EVERY_KEY",
    "GROUP",
    "MAX_NAME_LENGTH",
    "Address",
    "KeyName",
    "Keys",
    "PartitionKeys",
    "check_name",
    "parse_key",
]

#: What every key and channel of every namespace starts with.
ROOT = "ailf:"
#: A SCAN pattern matching every key of every namespace.
EVERY_KEY = f"{ROOT}*"

#: The consumer group every mailbox is read through. One name for all mailboxes lets a
#: single XREADGROUP (one GROUP, one consumer) read many mailboxes at once.
GROUP = "ailf"


#: The longest name :func:`check_name` accepts.
MAX_NAME_LENGTH = 128

_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_NAME_LENGTH - 1}}}")
#: What follows ``reply:`` in a reply inbox's channel: a process id (``host:pid:hex``)
#: or another asker's name; ``:`` allowed, glob characters and whitespace not.
_INBOX = re.compile(r"[A-Za-z0-9_.:\-]{1,256}")


def check_name(kind: str, name: object) -> str:
    """Validate a namespace, agent or topic name (the rule is in the module docstring).

    Returns the name; raises :class:`ConfigError` saying what a name may be made of.
    """
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    raise ConfigError(
        f"{kind} name: expected 1 to {MAX_NAME_LENGTH} letters, digits, '_', '.' or '-',"
        f" starting with a letter or digit (no spaces, ':' or '*'); got {name!r}"
    )


def _namespace(name: object) -> str:
    return check_name("namespace", name)


@attrs.frozen
class Keys:
    """Key and channel names of one namespace (see docs/wire-format.md for the table)."""

    namespace: str = attrs.field(converter=_namespace)

    @property
    def prefix(self) -> str:
        return f"{ROOT}{self.namespace}:"

    @property
    def every_key(self) -> str:
        """A SCAN pattern matching every key of the namespace, and nothing else (no name
        holds a glob character)."""
        return f"{self.prefix}*"

    def mailbox(self, agent: str) -> str:
        """The stream an agent's messages are added to."""
        return f"{self.prefix}mailbox:{agent}"

    def address(self, agent: str) -> Address:
        """A named agent's mailbox, dead letters, doorbell and timers."""
        mailbox = self.mailbox(agent)
        return Address(
            mailbox,
            self.dead(agent),
            self.bell(agent),
            timers=f"{self.prefix}timers:{{{mailbox}}}",
            timed=f"{self.prefix}timed:{{{mailbox}}}",
        )

    def bell(self, agent: str) -> str:
        """The pub/sub channel senders ring after adding to an agent's mailbox (the
        *doorbell*: see ailf/runtime/_reader.py)."""
        return f"{self.prefix}bell:{agent}"

    def dead(self, agent: str) -> str:
        """The stream of an agent's dead letters."""
        return f"{self.prefix}dead:{agent}"

    def agent(self, agent: str) -> str:
        """The hash describing a keyed agent (its number of partitions), written by the
        first sender or spawner and read by every other."""
        return f"{self.prefix}agent:{agent}"

    def members(self, agent: str) -> str:
        """The sorted set of processes hosting keyed agent ``agent``, scored by their
        last balancing step (seconds since the epoch)."""
        return f"{self.prefix}members:{agent}"

    def partition(self, agent: str, partition: int) -> PartitionKeys:
        """The keys of one partition of a keyed agent, all in one hash slot."""
        base = f"{self.prefix}keyed:{{{agent}:{partition}}}:"
        return PartitionKeys(
            mailbox=f"{base}mailbox",
            state=f"{base}state",
            lease=f"{base}lease",
            dead=f"{base}dead",
            bell=f"{base}bell",
            timers=f"{base}timers",
            timed=f"{base}timed",
        )

    def stateful(self, agent: str) -> PartitionKeys:
        """A named agent with state: its mailbox, dead letters and doorbell as any named
        agent's, and its state and lease in its mailbox's hash slot."""
        address = self.address(agent)
        mailbox = address.mailbox
        return PartitionKeys(
            mailbox=mailbox,
            state=f"{self.prefix}state:{{{mailbox}}}",
            lease=f"{self.prefix}lease:{{{mailbox}}}",
            dead=address.dead,
            bell=address.bell,
            timers=address.timers,
            timed=address.timed,
        )

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
        return channel.startswith(head) and _INBOX.fullmatch(channel, len(head)) is not None

    def process(self, process: str) -> str:
        """The hash a live process publishes its heartbeat, agents and counters in."""
        return f"{self.prefix}process:{process}"

    @property
    def processes(self) -> str:
        """The sorted set of process ids scored by their last heartbeat."""
        return f"{self.prefix}processes"


@attrs.frozen
class Address:
    """Where messages to one mailbox go: the stream, its dead letters, its doorbell,
    and its timers (messages waiting to be due, see ailf/runtime/_timers.py).

    The timer keys are in the mailbox's hash slot (a named agent's take the mailbox's
    name as hash tag, a partition's share its tag), so that the script moving a due
    message into the mailbox runs on one node, atomically.
    """

    mailbox: str
    dead: str
    bell: str
    #: The sorted set of timer ids scored by when they are due (Redis time, in ms).
    timers: str
    #: The hash of timer id -> what to add to the mailbox when it is due.
    timed: str


@attrs.frozen
class PartitionKeys:
    """The keys of one partition of a keyed agent: ``ailf:demo:keyed:{assistant:7}:…``;
    or of a named agent with state, whose one partition is its mailbox.

    The part in braces is a Redis Cluster hash tag: the partition's mailbox, its state and
    its lease hash to one slot, so that the script committing a handled message (lease
    check, state write, ack, reply) runs on one node, atomically. A named agent's
    mailbox ``ailf:demo:mailbox:counter`` has no tag, so its slot is its whole name's:
    its state and lease take that name as their tag
    (``ailf:demo:state:{ailf:demo:mailbox:counter}``) to land in the same slot.
    """

    #: The stream of the partition's messages, for every key in it, in send order.
    mailbox: str
    #: The hash of the per-key state (field: the key; value: JSON).
    state: str
    #: The string naming the partition's holder (its fencing token), with a TTL.
    lease: str
    #: The stream of the partition's dead letters.
    dead: str
    #: The partition's doorbell channel (sharded pub/sub on a cluster: its slot).
    bell: str
    #: The partition's timers (see :class:`Address`).
    timers: str
    timed: str

    @property
    def address(self) -> Address:
        return Address(self.mailbox, self.dead, self.bell, self.timers, self.timed)


@attrs.frozen
class KeyName:
    """A key or channel name read back: ``ailf:demo:mailbox:greeter`` is namespace
    ``demo``, kind ``mailbox``, name ``greeter`` (the name is empty for ``processes``)."""

    namespace: str
    kind: str
    name: str


def parse_key(key: str) -> KeyName | None:
    """What ``key`` names, or None if it is not laid out as the runtime lays out keys."""
    if not key.startswith(ROOT):
        return None
    namespace, colon, rest = key[len(ROOT) :].partition(":")
    kind, _, name = rest.partition(":")
    if not (colon and _NAME.fullmatch(namespace) and kind):
        return None
    return KeyName(namespace, kind, name)

"""Partitions of keyed agents: which partition a key is in, which process owns which
partition, and the scripts that take, keep, give back and commit under a lease.

A keyed agent's keys are spread over a fixed number of partitions (``partitions``,
stored in the agent's descriptor so that every sender and host agrees). A partition is
one stream, read by one process at a time: the holder of its *lease*, a Redis string
with a TTL whose value — the *fencing token* — is new at every acquisition. Every
write a holder makes on behalf of a handled message (the state, the ack, the reply)
runs in a script that first checks the lease still holds its token, so a process that
paused past its lease (a long GC, a network partition) cannot commit over the work of
the process that took the partition over.

Which process should hold which partition is computed by every host alike from the
list of live hosts (:func:`fair_share`): rendezvous hashing ranks the hosts for each
partition, and each partition goes to the best-ranked host that has not reached its
fair share, so partitions spread evenly and few move when a host comes or goes.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence
from typing import Any

from ailf.clients._async_client import AsyncRedisClient
from ailf.errors import ConfigError, ResponseError

__all__ = [
    "COMMIT",
    "DEFAULT_PARTITIONS",
    "DESCRIBE",
    "MARK_STATEFUL",
    "MAX_KEY_LENGTH",
    "MAX_PARTITIONS",
    "RELEASE",
    "RENEW",
    "Script",
    "check_key",
    "check_partitions",
    "fair_share",
    "partition_of",
]

#: Partitions of a keyed agent unless its first spawn or send says otherwise: enough
#: to spread over dozens of processes, few enough that an idle host's upkeep is small.
DEFAULT_PARTITIONS = 64
MAX_PARTITIONS = 4096
#: The longest key accepted: a key is a hash field and part of every log line about it.
MAX_KEY_LENGTH = 1024


def check_key(agent: str, key: object) -> str:
    """Validate a keyed agent's key: any non-empty string up to :data:`MAX_KEY_LENGTH`
    characters (it is a hash field, never part of a key name, so any text is safe)."""
    if isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH:
        return key
    raise ConfigError(
        f"key for agent {agent!r}: expected a non-empty string of at most"
        f" {MAX_KEY_LENGTH} characters, got {str(key)[:80]!r}"
    )


def check_partitions(agent: str, partitions: object) -> int:
    if type(partitions) is int and 1 <= partitions <= MAX_PARTITIONS:
        return partitions
    raise ConfigError(
        f"spawn({agent!r}): partitions must be an integer from 1 to {MAX_PARTITIONS},"
        f" not {partitions!r}"
    )


def partition_of(key: str, partitions: int) -> int:
    """The partition ``key`` belongs to: CRC-32 of its UTF-8 bytes modulo
    ``partitions`` — stable across processes, hosts and Python versions (unlike
    ``hash()``), and cheap."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions


def _rank(member: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()


def fair_share(partitions: int, members: Sequence[str]) -> dict[str, set[int]]:
    """Partition numbers per member: each partition to the highest-ranked member (by a
    hash of member and partition) that holds fewer than ``ceil(partitions / members)``.

    Deterministic in its inputs, so every host computes the same assignment from the
    same member list without talking to the others.
    """
    owned: dict[str, set[int]] = {member: set() for member in members}
    if not members:
        return owned
    cap = math.ceil(partitions / len(members))
    for partition in range(partitions):
        for member in sorted(members, key=lambda m: _rank(m, partition), reverse=True):
            if len(owned[member]) < cap:
                owned[member].add(partition)
                break
    return owned


class Script:
    """A Lua script run by its SHA (EVALSHA), loaded on first use or when a server
    forgot it (NOSCRIPT: a restart, a failover, SCRIPT FLUSH)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: AsyncRedisClient, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if exc.code != "NOSCRIPT":
                raise
        return await client.execute_command("EVAL", self.source, len(keys), *keys, *args)


#: KEYS: an agent's descriptor. ARGV: the partitions to record if none are ('' to only
#: read). Returns its partitions, or nil for an agent that is not keyed (none recorded,
#: or marked a named agent with state).
DESCRIBE = Script(
    """
if redis.call('HEXISTS', KEYS[1], 'stateful') == 1 then
  return false
end
if ARGV[1] ~= '' then
  redis.call('HSETNX', KEYS[1], 'partitions', ARGV[1])
end
return redis.call('HGET', KEYS[1], 'partitions')
"""
)

#: KEYS: an agent's descriptor. Marks it a named agent with state, unless it is keyed;
#: returns 1 if it is (now) marked, 0 if it is keyed.
MARK_STATEFUL = Script(
    """
if redis.call('HEXISTS', KEYS[1], 'partitions') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'stateful', '1')
return 1
"""
)

#: KEYS: lease. ARGV: token, ttl in ms. Extends the lease if this token holds it.
RENEW = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
)

#: KEYS: lease. ARGV: token. Gives the lease back if this token holds it.
RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
)

#: Commits a handled message of a keyed agent, all or nothing, under the lease.
#: KEYS: lease, state hash, mailbox stream. ARGV: token, group, entry id, key, what to
#: do with the state ('' leave, 's' set, 'd' delete), state JSON, reply channel ('' for
#: none), reply text. Returns 0 (and does nothing) if the token lost the lease.
COMMIT = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[5] == 's' then
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[6])
elseif ARGV[5] == 'd' then
  redis.call('HDEL', KEYS[2], ARGV[4])
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], ARGV[8])
end
return 1
"""
)

"""Messaging primitives over the clients: pub/sub and streams, sync and async.

The public names are exported here; ``_pubsub``, ``_stream`` and ``_asynclib`` (the
trio/asyncio helpers both build on) are private.
"""

from ailf.messaging._pubsub import AsyncRedisPubSub as AsyncRedisPubSub
from ailf.messaging._pubsub import RedisPubSub as RedisPubSub
from ailf.messaging._stream import AsyncRedisStream as AsyncRedisStream
from ailf.messaging._stream import RedisStream as RedisStream

__all__ = ["AsyncRedisPubSub", "AsyncRedisStream", "RedisPubSub", "RedisStream"]

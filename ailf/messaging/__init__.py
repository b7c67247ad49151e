"""Messaging primitives over the clients: pub/sub and streams, sync and async.

The public names are exported here; the modules behind them are private:

``_stream``        RedisStream and AsyncRedisStream: each performs the steps below
``_stream_steps``  every stream operation once, as steps on the command surface (no I/O)
``_pubsub``        RedisPubSub and AsyncRedisPubSub: each listens its own way
``_handlers``      what both share: payloads, HandlerTable (name → handler), backoff
``_router``        ChannelRouter: channel → listeners, shared with the runtime's hub
``_asynclib``      what the async twins need from trio or asyncio
"""

from ailf.messaging._pubsub import AsyncRedisPubSub as AsyncRedisPubSub
from ailf.messaging._pubsub import RedisPubSub as RedisPubSub
from ailf.messaging._stream import AsyncRedisStream as AsyncRedisStream
from ailf.messaging._stream import RedisStream as RedisStream

__all__ = ["AsyncRedisPubSub", "AsyncRedisStream", "RedisPubSub", "RedisStream"]

"""Redis clients: the sync one on redis-py, and the trio-native async one.

The public names are exported here; the modules behind them are private:

``_sync``            RedisClient, on redis-py
``_async_client``    AsyncRedisClient: picks the engine for the running async library
``_commands``        every command method, written once for client and pipeline
``_pipeline``        Pipeline: queued commands sent in one write
``_trio_backend``    the trio engine: shared connection, pool, reconnection
``_multiplex``       SharedConnection: one writer task, one reader task, reply slots
``_pool``            dedicated connections for blocking commands; connecting with backoff
``_connection``      one socket: TCP/unix/TLS, handshake, direct I/O, error translation
``_pubsub``          PubSub on trio: a dedicated connection and its reader task
``_resp``            RESP2 packing, hiredis or pure-Python incremental parsing
``_asyncio_backend`` the asyncio engine, on redis.asyncio
"""

from ailf.clients._async_client import AsyncRedisClient as AsyncRedisClient
from ailf.clients._sync import RedisClient as RedisClient

__all__ = ["AsyncRedisClient", "RedisClient"]

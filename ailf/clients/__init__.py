"""Redis clients: the sync one and the async one (trio-native, or on asyncio), one surface.

The public names are exported here; the modules behind them are private. From the top:

``_sync``            RedisClient: the command surface, blocking
``_async_client``    AsyncRedisClient: the command surface, awaited; picks the engine
``_pipeline``        Pipeline and AsyncPipeline, over one sans-IO PipelineQueue
``_commands``        Commands: every command method, written once for all four faces
``_command_kinds``   which commands block, are idempotent, or may not go on a shared connection
``_backend``         the engine contracts (Protocols) the faces rely on
``_sync_backend``    the sync engine, on redis-py's blocking pool
``_trio_backend``    the trio engine: shared connection, pool, reconnection
``_asyncio_backend`` the asyncio engine, on redis.asyncio
``_multiplex``       SharedConnection: one writer task, one reader task, reply slots
``_pool``            dedicated connections for blocking commands; connecting with backoff
``_pubsub``          PubSub on trio: a dedicated connection and its reader task
``_connection``      one socket: TCP/unix/TLS, handshake, direct I/O
``_resp``            RESP2 packing, hiredis or pure-Python incremental parsing
``_errors``          the error boundary: every failure below becomes one of ailf's errors
"""

from ailf.clients._async_client import AsyncRedisClient as AsyncRedisClient
from ailf.clients._sync import RedisClient as RedisClient

__all__ = ["AsyncRedisClient", "RedisClient"]

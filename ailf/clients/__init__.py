"""Redis clients: the sync one on redis-py, and the trio-native async one.

``sync``            RedisClient, on redis-py
``async_client``    AsyncRedisClient: picks the engine for the running async library
``commands``        every command method, written once for client and pipeline
``pipeline``        Pipeline: queued commands sent in one write
``trio_backend``    the trio engine: shared connection, pool, reconnection
``multiplex``       SharedConnection: one writer task, one reader task, reply slots
``pool``            dedicated connections for blocking commands; connecting with backoff
``connection``      one socket: TCP/unix/TLS, handshake, direct I/O, error translation
``pubsub``          PubSub on trio: a dedicated connection and its reader task
``resp``            RESP2 packing, hiredis or pure-Python incremental parsing
``asyncio_backend`` the asyncio engine, on redis.asyncio
"""

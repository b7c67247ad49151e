"""Messaging primitives over the clients: pub/sub and streams, sync and async."""

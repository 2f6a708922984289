"""The Redis store and delivery queue (one node or a cluster)."""

from gateway.store.redis.connection import redacted
from gateway.store.redis.queue import RedisQueue
from gateway.store.redis.store import RedisStore

__all__ = ["RedisQueue", "RedisStore", "redacted"]

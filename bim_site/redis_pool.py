"""One Redis connection pool per process for Django's cache (CACHES' `pool_class`).

Django keeps a cache object per async context (asgiref's Local), and each RedisCache
object a connection pool of its own: under daphne every websocket and every request
opened Redis connections of their own (5,000 node sockets held 5,000 more idle Redis
connections, and each socket's first cache call waited for a connect). Every cache object
of a process shares this pool; past its size a caller waits for a connection instead of
failing, as redis-py's plain pool would (MaxConnectionsError)."""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

_pools: dict[tuple[Any, ...], redis.BlockingConnectionPool] = {}
_lock = threading.Lock()


class SharedConnectionPool(redis.BlockingConnectionPool):
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.BlockingConnectionPool:  # type: ignore[override]
        # Keyed by process too: a forked child (Celery's beat) builds its own.
        key = (os.getpid(), url, tuple(sorted(kwargs.items())))
        with _lock:
            pool = _pools.get(key)
            if pool is None:
                pool = _pools[key] = super().from_url(url, **kwargs)
            return pool

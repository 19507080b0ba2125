"""One Redis connection pool per process for Django's cache (CACHES' `pool_class`), and
one client on it (the `RedisCache` backend).

Django keeps a cache object per async context (asgiref's Local), and each RedisCache
object a connection pool of its own: under daphne every websocket and every request
opened Redis connections of their own (5,000 node sockets held 5,000 more idle Redis
connections, and each socket's first cache call waited for a connect). Every cache object
of a process shares this pool; past its size a caller waits for a connection instead of
failing, as redis-py's plain pool would (MaxConnectionsError).

Django also builds a new redis.Redis for every cache call (`RedisCacheClient.get_client`),
about 50 microseconds each, twice a submission (its throttle and its policy's rate). A
client is thread-safe (it takes a connection from the pool per command), so the backend
keeps one per pool."""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from django.core.cache.backends import redis as django_redis

_pools: dict[tuple[Any, ...], redis.BlockingConnectionPool] = {}
_clients: dict[int, tuple[redis.ConnectionPool, redis.Redis]] = {}
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


class RedisCache(django_redis.RedisCache):
    """Django's Redis cache, one client per connection pool."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _SharedClientCacheClient


class _SharedClientCacheClient(django_redis.RedisCacheClient):
    def get_client(self, key: Any = None, *, write: bool = False) -> redis.Redis:
        pool = self._get_connection_pool(write)
        found = _clients.get(id(pool))
        if found is None:
            with _lock:
                # The pool is kept with its client, so its id names no other pool later.
                found = _clients.setdefault(id(pool), (pool, self._client(connection_pool=pool)))
        return found[1]

"""The registry's own Redis commands (routing-index versions, coalesced-run marks) go
through one client per process, beside the cache and the channel layer, which keep theirs."""

from __future__ import annotations

import os
import threading

import redis
from django.conf import settings

_clients: dict[tuple[int, str], redis.Redis] = {}
_lock = threading.Lock()


def redis_client() -> redis.Redis | None:
    """This process's client, or None where there is no Redis (the embedded default: one
    process, which keeps such state in memory)."""
    if not settings.REDIS_URL:
        return None
    key = (os.getpid(), settings.REDIS_URL)  # a forked child (Celery's beat) gets its own
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.setdefault(key, redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2))
    return client

"""The cache (bim_site.redis_pool.RedisCache) sends every call through one Redis client per
connection pool, whichever cache object of the process makes it: Django builds a new
redis.Redis for each call (about 50 microseconds)."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.conf import settings
from django.core.cache import cache, caches

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the embedded default caches in memory")


def test_every_cache_call_of_a_process_goes_through_one_client():
    backend = caches["default"]
    first = backend._cache.get_client(write=True)
    assert backend._cache.get_client(write=True) is first
    assert backend._cache.get_client() is first  # one server: reads use the same pool

    found = {}

    def from_another_thread():  # Django keeps a cache object per thread and async context
        found["cache"] = caches["default"]
        found["client"] = found["cache"]._cache.get_client(write=True)

    thread = threading.Thread(target=from_another_thread)
    thread.start()
    thread.join(10)
    assert found["cache"] is not backend and found["client"] is first


def test_the_cache_still_works_through_it():
    key = f"test-cache-{uuid.uuid4().hex}"
    assert cache.add(key, {"n": 1}, 30)
    assert not cache.add(key, {"n": 2}, 30)
    assert cache.get(key) == {"n": 1}
    assert cache.incr(f"{key}-count", 1) if cache.add(f"{key}-count", 0, 30) else False
    cache.delete_many([key, f"{key}-count"])
    assert cache.get(key) is None

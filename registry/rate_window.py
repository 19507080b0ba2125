"""Fixed-window counters in the cache: how many of something a client did in this minute,
counted atomically in one round trip, for the API's throttles (bim_site.throttles) and a
subnet policy's jobs per minute (registry.policy_enforcement).

Why not DRF's own throttle state, a list of the client's request times read and written
back whole on every request: its size grows with the rate (12,000 timestamps pickled both
ways per request for a client at 200 requests a second under a 20,000/min limit), and two
requests that overlap each write back a list without the other's time, so a parallel burst
gets past the limit (tests/site/test_throttling.py). A counter per window is one INCRBY;
the price is that a client may spend two windows' allowance across a window boundary,
the usual trade of fixed windows (django-ratelimit makes the same one).

On Redis the increment and the key's expiry go in one MULTI/EXEC; elsewhere (the embedded
default's in-process cache) add-then-incr under the cache's own lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache


@dataclass(frozen=True)
class Window:
    key: str  # the cache key of this window's count
    count: int  # the count after this call's increment
    retry_after_s: int  # seconds until the next window opens


def window_count(name: str, increment: int, *, window_s: int) -> Window:
    """Add `increment` to `name`'s count in the current window of `window_s` seconds."""
    now = time.time()
    key = f"rate:{name}:{int(now // window_s)}"
    ttl = 2 * window_s  # outlives its window, whatever the clocks of the processes say
    backend = caches["default"]  # what `cache` proxies to: its class says which path
    if isinstance(backend, RedisCache):
        full_key = backend.make_and_validate_key(key)
        client = backend._cache.get_client(full_key, write=True)  # the backend's pooled client
        pipeline = client.pipeline(transaction=True)
        pipeline.incrby(full_key, increment)
        pipeline.expire(full_key, ttl, nx=True)
        count = int(pipeline.execute()[0])
    else:
        backend.add(key, 0, ttl)
        try:
            count = backend.incr(key, increment)
        except ValueError:  # expired between add and incr
            backend.add(key, 0, ttl)
            count = backend.incr(key, increment)
    return Window(key=key, count=count, retry_after_s=max(1, int(window_s - now % window_s) + 1))


def window_give_back(key: str, decrement: int) -> None:
    """Take back what a refused or failed action had counted (`Window.key`)."""
    try:
        cache.decr(key, decrement)
    except ValueError:
        pass  # the window ended meanwhile: nothing left to give back

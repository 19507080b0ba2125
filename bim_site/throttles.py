"""API throttles (REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES): one rate per user or token
owner, one per anonymous address, counted in the default cache, which is Redis, shared by
every daphne, when REDIS_URL is set (per process otherwise).

DRF's own classes read their rates once, at import; these read `BIM_API_THROTTLE_RATES`
on each request, so a deployment's environment and a test's settings override both apply.
Counted in fixed windows, one atomic increment per request (`registry.rate_window`), not
DRF's list of request times, which grows with the rate and loses the counts of requests that
overlap. An anonymous client is its peer address (`bim_core.net.client_ip`, the address every other
check uses), not a client-supplied X-Forwarded-For, which would let it pick its own bucket.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

from bim_core.net import client_ip
from registry.rate_window import window_count


class _WindowThrottle(SimpleRateThrottle):
    """A refused request counts too: the window's end, not the client's restraint, resets it."""

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.window = window_count(self.key, 1, window_s=self.duration)
        return self.window.count <= self.num_requests

    def wait(self) -> float:
        return float(self.window.retry_after_s)


class UserThrottle(_WindowThrottle, UserRateThrottle):
    def get_rate(self) -> str | None:
        return settings.BIM_API_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request: Any) -> str:
        return client_ip(request.META) or "unknown"


class AnonThrottle(_WindowThrottle, AnonRateThrottle):
    def get_rate(self) -> str | None:
        return settings.BIM_API_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request: Any) -> str:
        return client_ip(request.META) or "unknown"

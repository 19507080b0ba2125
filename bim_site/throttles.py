"""API throttles (REST_FRAMEWORK's DEFAULT_THROTTLE_CLASSES): one rate per user or token
owner, one per anonymous address, counted in the default cache, which is Redis, shared by
every daphne, when REDIS_URL is set (per process otherwise).

DRF's own classes read their rates once, at import; these read `BIM_API_THROTTLE_RATES`
on each request, so a deployment's environment and a test's settings override both apply.
An anonymous client is its peer address (`bim_core.net.client_ip`, the address every other
check uses), not a client-supplied X-Forwarded-For, which would let it pick its own bucket.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from bim_core.net import client_ip


class UserThrottle(UserRateThrottle):
    def get_rate(self) -> str | None:
        return settings.BIM_API_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request: Any) -> str:
        return client_ip(request.META) or "unknown"


class AnonThrottle(AnonRateThrottle):
    def get_rate(self) -> str | None:
        return settings.BIM_API_THROTTLE_RATES.get(self.scope)

    def get_ident(self, request: Any) -> str:
        return client_ip(request.META) or "unknown"

"""The client's address and scheme behind reverse proxies, decided once per connection.

`TrustedProxyMiddleware` wraps the whole ASGI application (`bim_site.asgi`), HTTP and the
node websocket alike, so every reader of the address sees the same answer: views and
consumers through `bim_core.net.client_ip`, Django's `REMOTE_ADDR` (login lockouts,
throttles) and `request.is_secure()`. Only peers in settings.BIM_TRUSTED_PROXIES (parsed
once, at start-up) may name another address in X-Forwarded-For or the scheme in
X-Forwarded-Proto; from anyone else those headers are removed. The rule itself is
`bim_core.net.scope_behind_proxies`.

Why not Django's SECURE_PROXY_SSL_HEADER: Django believes that header from whoever sends it,
so a client reaching daphne directly could claim HTTPS. Setting the scope's scheme here ties
the claim to the same trusted peers as the address.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from bim_core.net import scope_behind_proxies


class TrustedProxyMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] in ("http", "websocket"):
            # Read per connection (an attribute lookup; the tests override it), parsed once.
            scope = scope_behind_proxies(scope, settings.BIM_TRUSTED_PROXIES)
        return await self.inner(scope, receive, send)

"""Websocket authentication: an API token in the query string (what a headless node or a
browser script can send; browsers cannot set headers on a WebSocket), else the session."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.authtoken.models import Token


@database_sync_to_async
def _user_for_token(key: str) -> Any:
    token = Token.objects.select_related("user").filter(key=key).first()
    return token.user if token and token.user.is_active else AnonymousUser()


class TokenAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
        if token:
            scope = dict(scope, user=await _user_for_token(token))
        return await self.inner(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:  # noqa: N802 (mirrors AuthMiddlewareStack)
    # Session auth runs first; a token, when given, decides.
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


class BrowserOriginValidator(OriginValidator):
    """Browsers always send Origin, and it must name one of ALLOWED_HOSTS (a foreign page
    must not ride a contributor's session cookie). Headless nodes send none and
    authenticate with their token, so a missing Origin is let through."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        return parsed_origin is None or self.validate_origin(parsed_origin)


def NodeSocketStack(inner: Any) -> Any:  # noqa: N802
    return BrowserOriginValidator(TokenAuthMiddlewareStack(inner), settings.ALLOWED_HOSTS)

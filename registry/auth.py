"""API and websocket authentication.

The API's `Token` scheme is DRF's, its lookup compiled once (registry.prepared: the ORM's
compilation was most of the lookup's cost, on every request).

A websocket is authenticated by an API token in the query string (what a headless node or a
browser script can send; browsers cannot set headers on a WebSocket), else the session.

A socket with a token is authenticated by the token alone: the session middleware would
decide nothing (a token, when given, decides) and costs a trip to channels' one
database thread per socket, which a restart's thousands of reconnecting nodes queued
behind each other past daphne's connect timeout. Tokens are looked up together, on the node
sockets' database threads (registry/node_io.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from .node_io import Coalesced
from .prepared import PreparedQuery

_token_with_user = PreparedQuery(lambda key: Token.objects.select_related("user").filter(key=key), (str,))


class ApiTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`, answered as DRF's own class answers."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        try:
            token = _token_with_user.first(key)
        except ValidationError:  # not a string PostgreSQL can hold: no token has it
            token = None
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return token.user, token


def _token(scope: dict[str, Any]) -> str:
    return parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]


def _users_for_tokens(keys: Sequence[str]) -> list[Any]:
    users = {token.key: token.user for token in Token.objects.select_related("user").filter(key__any=set(keys))}
    for key in set(keys) - users.keys():
        # Not a DRF token: one of the other kinds of key the API takes (settings.SOCKET_KEY_RESOLVERS,
        # the developer app's API keys), looked up by the app that owns them.
        for resolve in _resolvers():
            if (user := resolve(key)) is not None:
                users[key] = user
                break
    return [user if (user := users.get(key)) is not None and user.is_active else AnonymousUser() for key in keys]


def _resolvers() -> list[Any]:
    return [import_string(path) for path in settings.SOCKET_KEY_RESOLVERS]


# Sockets opening at once (a registry restart) have their tokens looked up together.
_user_for_token = Coalesced(_users_for_tokens, lambda key: _users_for_tokens([key])[0])


class TokenAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if token := _token(scope):
            scope = dict(scope, user=await _user_for_token(token))
        return await self.inner(scope, receive, send)


class TokenOrSessionAuth:
    """A socket with a token goes straight to the token's check; one without, through the
    session stack."""

    def __init__(self, inner: Any) -> None:
        self.token_app = TokenAuthMiddleware(inner)
        self.session_app = AuthMiddlewareStack(inner)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        app = self.token_app if _token(scope) else self.session_app
        return await app(scope, receive, send)


def TokenAuthMiddlewareStack(inner: Any) -> Any:  # noqa: N802 (mirrors AuthMiddlewareStack)
    return TokenOrSessionAuth(inner)


class BrowserOriginValidator(OriginValidator):
    """Browsers always send Origin, and it must name one of ALLOWED_HOSTS (a foreign page
    must not ride a contributor's session cookie). Headless nodes send none and
    authenticate with their token, so a missing Origin is let through."""

    def valid_origin(self, parsed_origin: Any) -> bool:
        return parsed_origin is None or self.validate_origin(parsed_origin)


def NodeSocketStack(inner: Any) -> Any:  # noqa: N802
    return BrowserOriginValidator(TokenAuthMiddlewareStack(inner), settings.ALLOWED_HOSTS)

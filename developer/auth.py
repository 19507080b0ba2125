"""`Authorization: Bearer <key>` for the API (DRF), beside the existing `Token` scheme and
the session: what OpenAI's clients and most HTTP tools send."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions

from .keys import api_key_user


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, None] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization: Bearer takes one API key")
        try:
            key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("an API key is ASCII") from None
        user = api_key_user(key)
        if user is None:
            raise exceptions.AuthenticationFailed("unknown or revoked API key")
        return user, None

    def authenticate_header(self, request: Any) -> str:
        return self.keyword

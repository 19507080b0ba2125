"""Artifact delivery: the manifest (short cache) and content-addressed chunks (immutable:
public for freely redistributable models, private to users who accepted the license of a
model that forbids redistribution, see subnets.licensing)."""

from __future__ import annotations

import re
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings

from bim_core.errors import ServiceError

from . import licensing, selectors, services

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@require_GET
def manifest(request: HttpRequest, slug: str) -> JsonResponse:
    try:
        subnet = selectors.subnet_get_active(slug=slug)
    except ServiceError as exc:
        raise Http404(exc.detail) from None
    response = JsonResponse(services.subnet_manifest(subnet))
    # The manifest names the current build; chunks below it never change.
    response["Cache-Control"] = "public, max-age=60"
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


@require_GET
def chunk(request: HttpRequest, sha256: str) -> HttpResponse:
    if not SHA256_HEX.match(sha256):
        raise Http404("not a chunk address")
    # Who may have it first: a refused request costs no disk read or hash.
    try:
        access = licensing.chunk_access(sha256=sha256, user=_api_user(request))
    except ServiceError as exc:
        return _refusal(exc)
    data = services.chunk_read_verified(sha256)
    if data is None:
        # Missing or corrupted on disk: never serve bytes that don't match their address.
        raise Http404("chunk not available")
    if request.headers.get("If-None-Match") == f'"{sha256}"':
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(data, content_type="application/octet-stream")
    if access == licensing.PUBLIC:
        response["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        # The bytes never change, so the browser keeps them (its HTTP cache, the contributor's
        # verified IndexedDB store); a shared cache (nginx, a CDN) must not hand them to others.
        response["Cache-Control"] = "private, max-age=31536000, immutable"
        response["Vary"] = "Authorization, Cookie"
    response["ETag"] = f'"{sha256}"'
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


def _api_user(request: HttpRequest) -> Any:
    """The user the API's authentication classes find (a node's `Token`, an API key, the
    session), or None. A bad credential is no user: the refusal then says what is needed."""
    try:
        user = Request(request, authenticators=[cls() for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES]).user
    except exceptions.APIException:
        return None
    return user if user.is_authenticated else None


def _refusal(exc: ServiceError) -> JsonResponse:
    response = JsonResponse({"code": exc.code, "detail": exc.detail}, status=exc.status)
    response["Cache-Control"] = "no-store"
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Token realm="bim"'
    return response

"""Artifact delivery: the manifest (short cache) and content-addressed chunks (immutable)."""

from __future__ import annotations

import re

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from bim_core.errors import ServiceError

from . import selectors, services

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
    data = services.chunk_read_verified(sha256)
    if data is None:
        # Missing or corrupted on disk: never serve bytes that don't match their address.
        raise Http404("chunk not available")
    if request.headers.get("If-None-Match") == f'"{sha256}"':
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(data, content_type="application/octet-stream")
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    response["ETag"] = f'"{sha256}"'
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response

"""/metrics for operators only: a staff session, or `Authorization: Bearer <BIM_METRICS_TOKEN>`
for a Prometheus scraper. Job counts, subnet names and request rates are business data,
not for the public internet. Open to anyone only where BIM_METRICS_PUBLIC (the default
outside production, for the demo and the tests)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_prometheus.exports import ExportToDjangoView


def _bearer_ok(request: HttpRequest) -> bool:
    token = settings.BIM_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def metrics(request: HttpRequest) -> HttpResponse:
    user = request.user
    if settings.BIM_METRICS_PUBLIC or _bearer_ok(request) or (user.is_authenticated and user.is_staff):
        return ExportToDjangoView(request)
    status = 403 if user.is_authenticated else 401
    response = HttpResponse("metrics are for operators: a staff session or a bearer token\n", status=status, content_type="text/plain")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response

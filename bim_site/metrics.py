"""/metrics for operators only: a staff session, or `Authorization: Bearer <BIM_METRICS_TOKEN>`
for a Prometheus scraper. Job counts, subnet names and request rates are business data,
not for the public internet. Open to anyone only where BIM_METRICS_PUBLIC (the default
outside production, for the demo and the tests).

What it reports covers every process of the deployment: with PROMETHEUS_MULTIPROC_DIR set
(docs/monitoring.md; the launchers in bim_site/processes.py set it), each daphne and Celery
worker writes its counters and histograms to files there and this view adds them all up,
so a settlement counted in a worker shows here. Without it (embedded mode: one process
does everything) it reports this process's own. The facts of the database come from
bim_site/gauges.py either way. `_created` series are dropped (bim_site/apps.py): a
timestamp per label set that doubles the output and that nothing here graphs."""

from __future__ import annotations

import hmac
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .gauges import DatabaseCollector


def _bearer_ok(request: HttpRequest) -> bool:
    token = settings.BIM_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def metrics_registry() -> CollectorRegistry:
    """This scrape's collectors: every process's metrics (or this one's), then the database's."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # a registry collects like a collector
    registry.register(DatabaseCollector())
    return registry


def metrics(request: HttpRequest) -> HttpResponse:
    user = request.user
    if settings.BIM_METRICS_PUBLIC or _bearer_ok(request) or (user.is_authenticated and user.is_staff):
        return HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
    status = 403 if user.is_authenticated else 401
    response = HttpResponse("metrics are for operators: a staff session or a bearer token\n", status=status, content_type="text/plain")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response

"""Cross-origin isolation for the browser contributor.

WASM threads need SharedArrayBuffer, which a browser only grants to a cross-origin
isolated page: the document and every worker script it starts must be served with
`Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy: require-corp`,
and each subresource it loads must be same-origin or say it may be embedded
(`Cross-Origin-Resource-Policy`). Everything the registry serves is same-origin, so the
headers go on every response (pages, static files, manifests, chunks) except the few
paths that load third-party resources by design (the Swagger UI).

Static files bypass Django's middleware (the staticfiles handlers answer before it runs),
so `isolation_headers` is shared with `bim_site.asgi`'s static handler.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

# The Swagger UI needs no isolation (it loaded its scripts from a CDN once; now they are the
# registry's own, from drf-spectacular-sidecar) and stays as it was.
NOT_ISOLATED_PREFIXES = ("/api/docs/",)
# Subresources the isolated pages fetch: same-origin only.
RESOURCE_PREFIXES = ("/artifacts/chunks/", "/subnets/")


def isolation_headers(path: str, response: HttpResponseBase) -> HttpResponseBase:
    if path.startswith(NOT_ISOLATED_PREFIXES):
        return response
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    response.headers.setdefault("Cross-Origin-Embedder-Policy", "require-corp")
    static_url = settings.STATIC_URL or "/static/"
    if path.startswith(static_url) or path.startswith(RESOURCE_PREFIXES):
        response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if path.startswith(static_url) and path.endswith("/sw.js"):
        # The Service Worker lives under /static/ but serves chunk URLs at /artifacts/.
        response.headers["Service-Worker-Allowed"] = "/"
    return response


# Plain MiddlewareMixin middleware, as Django's own: under ASGI a request for a synchronous
# view runs them, view included, in one hop to a thread (bim_site.http_handler).


class CrossOriginIsolationMiddleware(MiddlewareMixin):
    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return isolation_headers(request.path, response)


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """settings.CONTENT_SECURITY_POLICY on every response Django renders (Django 5.2 has no
    CSP of its own), enforced or report-only as settings.CSP_REPORT_ONLY says. Static files
    bypass middleware and need none: a policy applies to documents and to workers, and the
    engine's worker script is trusted, same-origin code."""

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if settings.CONTENT_SECURITY_POLICY:
            header = "Content-Security-Policy-Report-Only" if settings.CSP_REPORT_ONLY else "Content-Security-Policy"
            response.headers.setdefault(header, settings.CONTENT_SECURITY_POLICY)
        return response

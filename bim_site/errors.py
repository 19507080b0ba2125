"""Django's error views, answering JSON `{"code", "detail"}` under /api/.

DRF's exception handler (`registry.api.exception_handler`) covers errors raised inside an
API view; these cover what happens before or outside one: a URL no view matches, a body over
DATA_UPLOAD_MAX_MEMORY_SIZE read by middleware, a server error. Clients of the API (the SDK,
the node, `bim_core.http`) read the code; an HTML page would reach them as an unreadable body.
Pages keep Django's own error views.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse({"code": "request_too_large", "detail": "the request body is too large"}, status=413)
    return JsonResponse({"code": "bad_request", "detail": "the request was refused"}, status=400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _is_api(request):
        return defaults.permission_denied(request, exception)
    return JsonResponse({"code": "permission_denied", "detail": "not allowed"}, status=403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return JsonResponse({"code": "not_found", "detail": "no such API endpoint or object"}, status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if not _is_api(request):
        return defaults.server_error(request)
    return JsonResponse({"code": "server_error", "detail": "the registry failed; try again later"}, status=500)

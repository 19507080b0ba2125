"""Django's ASGI handler, with one hop to a thread for a synchronous view.

Under ASGI Django runs its middleware in async mode, and every hook of a `MiddlewareMixin`
middleware (all of Django's own, django-prometheus', ours) is then a `sync_to_async` hop
of its own: 22 switches between the event loop and a thread for one GET of the API (ticket
#37177, still open for Django 5.2). Under load each switch waits for the loop, so a
submission's latency grew with the number of middleware, not with its work.

Django's own answer for a synchronous stack is to switch once, before the middleware
(docs/topics/async, "Performance"), and a chain loaded in sync mode does exactly that. So a
request for a synchronous view (every DRF view, the admin, the pages) runs the sync chain,
view included, in one `sync_to_async` call on its request's thread; a request for an
async view (the OpenAI-compatible API, which waits for settlement on the event loop) keeps
Django's async chain, so its wait holds no thread and a client that leaves cancels it.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver


class RegistryASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()  # the async chain, for async views
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        if view_is_async(request):
            return await super().get_response_async(request)
        response: HttpResponseBase = await sync_to_async(self.sync_handler.get_response, thread_sensitive=True)(request)
        return response


def view_is_async(request: HttpRequest) -> bool:
    """Whether the URL names an async view; a URL that names none (a 404, a redirect to
    the slashed URL) is answered by the sync chain."""
    try:
        match: Any = get_resolver().resolve(request.path_info)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)

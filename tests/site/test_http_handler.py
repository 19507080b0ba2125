"""bim_site.http_handler through the ASGI application daphne serves: a synchronous view
and its middleware run in one hop to a thread; an async view stays on the event loop."""

from __future__ import annotations

import json

import pytest
from asgiref import sync
from channels.testing import HttpCommunicator
from rest_framework.authtoken.models import Token

from bim_site.asgi import application
from tests.factories import SubnetFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hops(monkeypatch):
    """Every switch from the event loop to a thread, by what it ran."""
    ran: list[str] = []
    original = sync.SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        ran.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counted)
    return ran


def get(path: str, authorization: str | None = None) -> dict:
    headers = [(b"host", b"testserver")] + ([(b"authorization", authorization.encode())] if authorization else [])
    return sync.async_to_sync(HttpCommunicator(application, "GET", path, headers=headers).get_response)()


def request_hops(ran: list[str]) -> list[str]:
    # Around the request Django's ASGI handler hops as it always has (the request_started
    # signal's receivers, closing the response once sent); counted here is the request.
    return [name for name in ran if not name.startswith(("Signal.", "HttpResponseBase.close"))]


def test_a_synchronous_view_and_all_its_middleware_cross_to_a_thread_once(hops):
    # Before: 22 switches for this GET, one per hook of every MiddlewareMixin middleware.
    SubnetFactory()
    token = Token.objects.create(user=UserFactory()).key

    response = get("/api/v1/subnets/", f"Token {token}")

    assert response["status"] == 200
    assert json.loads(response["body"])
    assert request_hops(hops) == ["BaseHandler.get_response"]
    headers = {name.lower(): value for name, value in response["headers"]}
    # Every middleware ran, the innermost and the outermost included.
    assert headers[b"x-content-type-options"] == b"nosniff"  # SecurityMiddleware
    assert headers[b"cross-origin-opener-policy"] == b"same-origin"
    assert headers[b"x-frame-options"] == b"DENY"
    assert b"content-security-policy" in headers


def test_a_url_that_names_no_view_is_answered_by_the_synchronous_chain(hops):
    response = get("/api/v1/no-such-thing/")

    assert response["status"] == 404
    assert request_hops(hops)[0] == "BaseHandler.get_response"


def test_an_async_view_keeps_djangos_async_chain(hops):
    # The OpenAI-compatible API waits for settlement on the event loop: no thread is held
    # for the wait, and a client that leaves cancels it.
    token = Token.objects.create(user=UserFactory()).key

    response = get("/v1/models", f"Bearer {token}")

    assert response["status"] == 200, response["body"]
    assert "BaseHandler.get_response" not in hops
    assert "SecurityMiddleware.process_request" in hops  # Django's async chain, hook by hook

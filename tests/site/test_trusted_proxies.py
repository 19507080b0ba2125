"""`bim_site.proxies.TrustedProxyMiddleware` and BIM_TRUSTED_PROXIES as Django sees them:
the request's REMOTE_ADDR (what login lockouts and throttles key on) and `is_secure()`
follow X-Forwarded-For and X-Forwarded-Proto from a trusted proxy only; from anyone else
those headers never reach Django. The settings refuse a malformed trust list and the
old, unconditional BIM_SECURE_PROXY_SSL_HEADER."""

from __future__ import annotations

import io
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from axes.helpers import get_client_ip_address
from django.core.handlers.asgi import ASGIRequest

from bim_core.net import parse_networks
from bim_site.proxies import TrustedProxyMiddleware
from tests.site.test_production import PRODUCTION_ENV, SETUP, run_django

PROXY = "10.0.0.5"


def request_via(peer: str, *headers: tuple[bytes, bytes]) -> ASGIRequest:
    """The Django request the middleware's inner application would build."""
    seen: dict[str, Any] = {}

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/registry/",
        "scheme": "http",
        "query_string": b"",
        "client": [peer, 41000],
        "server": ["127.0.0.1", 8000],
        "headers": [(b"host", b"registry.example.org"), *headers],
    }
    async_to_sync(TrustedProxyMiddleware(inner))(scope, None, None)
    return ASGIRequest(seen, io.BytesIO())


FORWARDED = ((b"x-forwarded-for", b"192.0.2.1, 203.0.113.7"), (b"x-forwarded-proto", b"https"))


def test_a_trusted_proxy_sets_remote_addr_and_https(settings):
    settings.BIM_TRUSTED_PROXIES = parse_networks(f"{PROXY}, 2001:db8::/32")
    request = request_via(PROXY, *FORWARDED)
    assert request.META["REMOTE_ADDR"] == "203.0.113.7"
    assert request.is_secure()
    # Login lockouts (django-axes) key on the same address: it reads REMOTE_ADDR.
    assert get_client_ip_address(request) == "203.0.113.7"


def test_an_untrusted_peer_is_the_client_and_its_claims_never_reach_django(settings):
    settings.BIM_TRUSTED_PROXIES = parse_networks(PROXY)
    request = request_via("198.51.100.7", *FORWARDED)
    assert request.META["REMOTE_ADDR"] == "198.51.100.7"
    assert not request.is_secure()
    assert "HTTP_X_FORWARDED_FOR" not in request.META and "HTTP_X_FORWARDED_PROTO" not in request.META
    assert get_client_ip_address(request) == "198.51.100.7"


def test_nothing_is_trusted_by_default(settings):
    assert settings.BIM_TRUSTED_PROXIES == ()
    request = request_via(PROXY, *FORWARDED)
    assert request.META["REMOTE_ADDR"] == PROXY and not request.is_secure()


def test_the_trust_list_is_read_from_the_environment(tmp_path):
    code = "import django; django.setup(); from django.conf import settings; print(*settings.BIM_TRUSTED_PROXIES)"
    result = run_django(["-c", code], {"BIM_TRUSTED_PROXIES": "127.0.0.1, 10.1.0.0/16"}, tmp_path)
    assert result.stdout.split() == ["127.0.0.1/32", "10.1.0.0/16"], result.stderr


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.0/99"])
def test_a_malformed_trust_list_refuses_to_start(tmp_path, value):
    result = run_django(SETUP, {"BIM_TRUSTED_PROXIES": value}, tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "BIM_TRUSTED_PROXIES" in result.stderr


def test_production_refuses_the_unconditional_proto_header(tmp_path):
    result = run_django(SETUP, {**PRODUCTION_ENV, "BIM_SECURE_PROXY_SSL_HEADER": "1"}, tmp_path)
    assert result.returncode != 0
    assert "BIM_TRUSTED_PROXIES" in result.stderr

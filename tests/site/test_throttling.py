"""API throttling: per user (or token) and per anonymous address, counted in the shared cache
(Redis when REDIS_URL is set), refused as a JSON 429 with Retry-After. The rates are settings
(BIM_API_RATE_USER / BIM_API_RATE_ANON); these tests lower them."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.core.cache import cache
from django.db import connections
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def low_rates(settings):
    settings.BIM_API_THROTTLE_RATES = {"user": "3/min", "anon": "2/min"}
    cache.clear()
    yield
    cache.clear()


def token_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def assert_throttled(response) -> None:
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert isinstance(response.json()["detail"], str)
    assert int(response["Retry-After"]) > 0


def test_a_user_past_the_rate_gets_a_json_429_with_retry_after(low_rates):
    user, other = UserFactory(), UserFactory()
    client = token_client(user)

    answers = [client.get("/api/v1/balance/").status_code for _ in range(3)]
    refused = client.get("/api/v1/balance/")

    assert answers == [200, 200, 200]
    assert_throttled(refused)
    # Per user: another account is unaffected, and a second token client of the same user is not.
    assert token_client(other).get("/api/v1/balance/").status_code == 200
    assert token_client(user).get("/api/v1/balance/").status_code == 429


def test_an_anonymous_address_past_the_rate_gets_a_json_429(low_rates):
    client = APIClient()

    answers = [client.get("/api/v1/registry/", REMOTE_ADDR="10.1.2.3").status_code for _ in range(2)]
    refused = client.get("/api/v1/registry/", REMOTE_ADDR="10.1.2.3")

    assert answers == [200, 200]
    assert_throttled(refused)
    assert client.get("/api/v1/registry/", REMOTE_ADDR="10.9.9.9").status_code == 200


def test_the_default_rates_are_high_enough_for_a_burst(settings):
    cache.clear()
    client = token_client(UserFactory())
    assert all(client.get("/api/v1/balance/").status_code == 200 for _ in range(100))
    cache.clear()


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_are_each_counted(low_rates, settings):
    """A burst of parallel requests past the rate: exactly the rate's worth get through.
    A count read and written back by each request (DRF's own history list) loses the
    updates of requests that overlap, and lets a burst far past the limit."""
    settings.BIM_API_THROTTLE_RATES = {"user": "8/min", "anon": "2/min"}
    token, _ = Token.objects.get_or_create(user=UserFactory())
    start = threading.Barrier(24)
    statuses: list[int] = []

    def request() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        start.wait()
        try:
            statuses.append(client.get("/api/v1/balance/").status_code)
        finally:
            connections.close_all()  # back to the pool, for the threads still waiting

    threads = [threading.Thread(target=request) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(statuses) == [200] * 8 + [429] * 16, Counter(statuses)

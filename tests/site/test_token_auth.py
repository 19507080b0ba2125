"""`Authorization: Token <key>` (registry.auth.ApiTokenAuthentication, DRF's scheme with a
compiled lookup): the token's user, and DRF's own refusals for anything else."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import UserFactory, user_with_credits

pytestmark = pytest.mark.django_db


def balance_with(header: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    return client.get("/api/v1/balance/")


def test_a_token_authenticates_its_user():
    token = Token.objects.create(user=user_with_credits(3))
    other = Token.objects.create(user=user_with_credits(5))

    mine, theirs = balance_with(f"Token {token.key}"), balance_with(f"Token {other.key}")

    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["credits_micro"] * 5 == theirs.json()["credits_micro"] * 3 > 0


@pytest.mark.parametrize("key", ["0" * 40, "not-a-token", "nul\x00key", "prepared-marker-" + "0" * 32])
def test_an_unknown_or_malformed_token_is_a_401(key):
    Token.objects.create(user=UserFactory())
    answer = balance_with(f"Token {key}")
    assert answer.status_code == 401
    assert answer.json()["code"] == "authentication_failed"


def test_an_inactive_users_token_is_a_401():
    user = UserFactory(is_active=False)
    token = Token.objects.create(user=user)
    answer = balance_with(f"Token {token.key}")
    assert answer.status_code == 401
    assert answer.json()["code"] == "authentication_failed", answer.json()

"""API keys (issue 12): a signed-in user creates named keys on the developer page (shown
once, stored hashed, with a prefix), sees when each was last used and revokes them; the
API takes `Authorization: Bearer <key>` beside the token scheme, and a revoked key is 401."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from developer import keys
from developer.models import ApiKey
from tests.factories import UserFactory, user_with_credits

pytestmark = pytest.mark.django_db


def _new_key(client) -> str:
    client.post(reverse("developer:key-create"), {"name": "laptop"})
    page = client.get(reverse("developer:home")).content.decode()
    return re.search(r'data-testid="new-key">(bim_[^<]+)<', page).group(1)


def test_a_key_is_shown_once_and_stored_only_as_its_digest(client):
    user = UserFactory()
    client.force_login(user)
    key = _new_key(client)
    row = ApiKey.objects.get(user=user)
    assert row.digest == keys.key_digest(key) and key not in (row.digest, row.prefix)
    assert key.startswith(row.prefix) and row.name == "laptop"
    again = client.get(reverse("developer:home")).content.decode()
    assert key not in again and row.prefix in again  # the list shows the prefix, never the key


def test_the_api_takes_a_bearer_key_and_notes_its_use(client):
    user = user_with_credits(3)
    client.force_login(user)
    key = _new_key(client)
    client.logout()
    answer = client.get("/api/v1/balance/", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert answer.status_code == 200 and answer.json()["credits_micro"] == 3_000_000
    assert ApiKey.objects.get(user=user).last_used_at is not None


def test_a_revoked_or_unknown_key_is_refused_with_401(client):
    user = UserFactory()
    client.force_login(user)
    key = _new_key(client)
    row = ApiKey.objects.get(user=user)
    client.post(reverse("developer:key-revoke", args=[row.pk]))
    client.logout()
    for bad in (key, "bim_not-a-key", "x" * 500):
        answer = client.get("/api/v1/balance/", HTTP_AUTHORIZATION=f"Bearer {bad}")
        assert answer.status_code == 401, bad
        assert answer.json()["code"] == "authentication_failed"


def test_one_cannot_revoke_another_users_key(client):
    owner, stranger = UserFactory(), UserFactory()
    row, _ = keys.api_key_create(user=owner, name="mine")
    client.force_login(stranger)
    client.post(reverse("developer:key-revoke", args=[row.pk]))
    row.refresh_from_db()
    assert row.revoked_at is None

"""Stripe's webhook (issue 12, Must show 4), offline with signed test events: a validly
signed `checkout.session.completed` credits once (a replay credits nothing), a badly
signed or unsigned one is refused and credits nothing. Events are signed as Stripe signs
them (HMAC-SHA256 of "timestamp.payload" with the endpoint secret, `t=...,v1=...`) and
checked by Stripe's own library."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from billing.models import Payment
from ledger import selectors as ledger_selectors
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SECRET = "whsec_test_secret"
URL = "/api/v1/payments/stripe/webhook/"


@pytest.fixture(autouse=True)
def stripe_settings(settings):
    settings.STRIPE_SECRET_KEY = "sk_test_offline"
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.BIM_MICRO_PER_MINOR_UNIT = 1_000_000  # a credit per cent


def signed(payload: bytes, secret: str = SECRET, at: int | None = None) -> str:
    at = at or int(time.time())
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def completed(user, *, event_id="evt_1", cents=500, kind="checkout.session.completed", status="paid") -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": kind,
            "data": {
                "object": {
                    "id": "cs_test_1",
                    "object": "checkout.session",
                    "client_reference_id": str(user.pk),
                    "amount_total": cents,
                    "currency": "usd",
                    "payment_status": status,
                    "metadata": {"bim_user_id": str(user.pk)},
                }
            },
        }
    ).encode()


def post(client, payload: bytes, signature: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return client.post(URL, data=payload, content_type="application/json", **headers)


def credits(user) -> int:
    return ledger_selectors.balance_totals(user=user)["credits_micro"]


def test_a_signed_completed_checkout_credits_once(client):
    user = UserFactory()
    payload = completed(user)
    first = post(client, payload, signed(payload))
    replay = post(client, payload, signed(payload))
    assert (first.status_code, first.json()) == (200, {"credited": True})
    assert (replay.status_code, replay.json()) == (200, {"credited": False})
    assert credits(user) == 500 * 1_000_000
    assert Payment.objects.get().event_id == "evt_1"


@pytest.mark.parametrize(
    "signature",
    [None, "", "t=1,v1=00", "garbage"],
    ids=["missing", "empty", "wrong-mac", "malformed"],
)
def test_an_unsigned_or_badly_signed_event_is_refused_and_credits_nothing(client, signature):
    user = UserFactory()
    answer = post(client, completed(user), signature)
    assert answer.status_code == 400 and answer.json()["code"] == "bad_signature"
    assert credits(user) == 0 and not Payment.objects.exists()


def test_an_event_signed_with_another_secret_or_too_long_ago_is_refused(client):
    user = UserFactory()
    payload = completed(user)
    for signature in (signed(payload, secret="whsec_other"), signed(payload, at=int(time.time()) - 3600)):
        assert post(client, payload, signature).status_code == 400
    assert credits(user) == 0


def test_other_events_and_unpaid_sessions_are_acknowledged_without_credit(client):
    user = UserFactory()
    for payload in (completed(user, event_id="evt_2", kind="customer.created"), completed(user, event_id="evt_3", status="unpaid")):
        answer = post(client, payload, signed(payload))
        assert (answer.status_code, answer.json()) == (200, {"credited": False})
    assert credits(user) == 0


def test_without_stripe_keys_payments_are_refused_as_not_offered(client, settings):
    settings.STRIPE_SECRET_KEY = ""
    user = UserFactory()
    payload = completed(user)
    answer = post(client, payload, signed(payload))
    assert answer.status_code == 404 and answer.json()["code"] == "payments_unavailable"
    assert credits(user) == 0

"""A payout destination on the account (issue 12, getting paid): set with the password,
checked as the payment rail would (IBAN check digits, e-mail address), required before a
withdrawal, and copied into each withdrawal so a later change cannot redirect a request an
operator is about to approve."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from bim_core.money import MICRO
from ledger.models import PayoutDestination, Withdrawal
from ledger.withdrawals import settlement_batch_create, withdrawal_decide
from tests.factories import SubnetFactory, UserFactory, online_node
from tests.ledger.test_withdrawals import earn

pytestmark = pytest.mark.django_db

PASSWORD = "paid where I say 42"


@pytest.fixture
def earner(client, settings):
    settings.LEDGER_MIN_WITHDRAWAL_MICRO = MICRO
    keys = online_node(SubnetFactory())
    owner = keys.node.owner
    owner.set_password(PASSWORD)
    owner.save()
    PayoutDestination.objects.filter(user=owner).delete()  # the factory names one; this owner has none yet
    earn(keys.node, 5 * MICRO, f"node:{keys.node.pk}")
    client.force_login(owner)
    return keys.node


def _set(client, method, address, password=PASSWORD):
    return client.post(reverse("contributor:payout-destination"), {"method": method, "address": address, "password": password})


def test_no_withdrawal_without_a_destination(client, earner):
    page = client.get(reverse("contributor:earnings")).content.decode()
    assert 'data-testid="no-payout-destination"' in page
    answer = client.post(reverse("contributor:earnings"), {"node": str(earner.pk), "credits": "2"})
    assert answer.status_code == 200 and "set a payout destination first" in answer.content.decode()
    api = APIClient()
    api.force_authenticate(earner.owner)
    refused = api.post("/api/v1/withdrawals/", {"node": str(earner.pk), "amount_micro": 2 * MICRO}, format="json")
    assert (refused.status_code, refused.json()["code"]) == (409, "no_payout_destination")
    assert not Withdrawal.objects.exists()


def test_an_iban_is_checked_and_stored_in_one_spelling(client, earner):
    assert _set(client, "iban", "DE89 3704 0044 0532 0130 01").status_code == 200  # a wrong check digit
    assert not PayoutDestination.objects.filter(user=earner.owner).exists()

    assert _set(client, "iban", "de89 3704 0044 0532 0130 00").status_code == 302
    destination = PayoutDestination.objects.get(user=earner.owner)
    assert (destination.method, destination.address) == ("iban", "DE89370400440532013000")
    page = client.get(reverse("contributor:earnings")).content.decode()
    assert "DE89370400440532013000" in page and 'data-testid="payout-destination"' in page


@pytest.mark.parametrize("address", ["not-an-address", "a,b@example.com", '"x y"@example.com'])
def test_a_paypal_address_must_be_one_a_payout_line_can_carry(client, earner, address):
    answer = _set(client, "paypal", address)
    assert answer.status_code == 200 and "payout_destination" not in answer.content.decode()
    assert not PayoutDestination.objects.filter(user=earner.owner).exists()


def test_the_password_guards_the_destination(client, earner):
    assert _set(client, "paypal", "me@example.com").status_code == 302
    answer = _set(client, "paypal", "thief@example.com", password="not the password")
    assert answer.status_code == 200 and "the password is not this account" in answer.content.decode()
    assert PayoutDestination.objects.get(user=earner.owner).address == "me@example.com"
    assert _set(client, "bitcoin", "1abc").status_code == 200  # not a method the form offers
    assert _set(client, "paypal", "").status_code == 200


def test_a_withdrawal_keeps_the_destination_it_was_asked_with(client, earner):
    operator = UserFactory(is_staff=True, is_superuser=True)
    _set(client, "paypal", "Me@Example.com")
    client.post(reverse("contributor:earnings"), {"node": str(earner.pk), "credits": "2"})
    _set(client, "iban", "DE89370400440532013000")  # changed after asking
    withdrawal = Withdrawal.objects.get()
    assert withdrawal.destination == "paypal:me@example.com"

    withdrawal_decide(withdrawal_id=withdrawal.pk, approve=True, operator=operator)
    batch = settlement_batch_create()

    assert batch.lines == f"{earner.pk},{earner.owner.username},paypal:me@example.com,{2 * MICRO}\n"
    page = client.get(reverse("contributor:earnings")).content.decode()
    assert "paypal:me@example.com" in page

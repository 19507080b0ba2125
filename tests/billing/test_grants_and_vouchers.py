"""Credits a user did not compute for (issue 12): the trial grant at sign-up, an operator's
grant by user name (with the permission for it), and vouchers redeemed once. Each is a
ledger transfer with its reason; the suite's ledger check runs after every test."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from billing import services
from billing.models import Voucher
from bim_core.errors import ServiceError
from ledger import selectors as ledger_selectors
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def credits(user) -> int:
    return ledger_selectors.balance_totals(user=user)["credits_micro"]


def test_a_new_account_gets_the_trial_grant(client, settings):
    settings.BIM_TRIAL_GRANT_MICRO = 2_500_000
    answer = client.post(
        reverse("contributor:signup"),
        {"username": "newdev", "password1": "a long passphrase 42", "password2": "a long passphrase 42"},
    )
    assert answer.status_code == 302
    assert credits(get_user_model().objects.get(username="newdev")) == 2_500_000


def _staff(*permissions: str):
    user = UserFactory(is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_an_operator_grants_credits_by_user_name_once_per_form(client):
    operator, user = _staff("grant_credits"), UserFactory(username="carol")
    client.force_login(operator)
    form = {"username": "carol", "credits": "12.5", "reason": "conference speaker", "request_id": "r-1"}
    for _ in range(2):  # a resubmitted form credits once
        assert client.post(reverse("admin:billing_grant"), form).status_code == 302
    assert credits(user) == 12_500_000


def test_a_grant_needs_the_permission_and_a_known_user(client):
    client.force_login(_staff("view_voucher"))
    answer = client.post(
        reverse("admin:billing_grant"), {"username": "x", "credits": "1", "reason": "r", "request_id": "r-2"}
    )
    assert answer.status_code == 403
    with pytest.raises(ServiceError) as unknown:
        services.operator_grant(operator=UserFactory(), username="nobody", amount_micro=1, reason="r", request_id="r-3")
    assert unknown.value.code == "unknown_user"


def test_a_voucher_is_redeemed_once_and_never_after_it_expires():
    operator, first, second = UserFactory(), UserFactory(), UserFactory()
    good, expired = services.voucher_batch_mint(operator=operator, batch="workshop", amount_micro=3_000_000, count=2)
    assert not Voucher.objects.filter(code_hash__in=[good, expired]).exists()  # only hashes are stored
    services.voucher_redeem(user=first, code=good.lower().replace("-", " "))  # typed loosely: the same code
    with pytest.raises(ServiceError) as again:
        services.voucher_redeem(user=second, code=good)
    assert again.value.code == "voucher_redeemed"
    Voucher.objects.filter(code_hash=services.voucher_code_hash(expired)).update(expires_at=timezone.now() - timedelta(1))
    with pytest.raises(ServiceError) as late:
        services.voucher_redeem(user=second, code=expired)
    assert late.value.code == "voucher_expired"
    with pytest.raises(ServiceError) as unknown:
        services.voucher_redeem(user=second, code="AAAA-BBBB-CCCC-DDDD")
    assert unknown.value.code == "unknown_voucher"
    assert (credits(first), credits(second)) == (3_000_000, 0)


def test_minting_needs_the_add_permission(client):
    client.force_login(_staff("view_voucher"))
    answer = client.post(reverse("admin:billing_voucher_mint"), {"batch": "b", "credits": "1", "count": "2"})
    assert answer.status_code == 403 and not Voucher.objects.exists()
    client.force_login(_staff("add_voucher", "view_voucher"))
    answer = client.post(reverse("admin:billing_voucher_mint"), {"batch": "b", "credits": "1", "count": "2"})
    assert answer.status_code == 200 and Voucher.objects.count() == 2
    assert answer.content.decode().count("-") >= 6  # the two codes, shown once

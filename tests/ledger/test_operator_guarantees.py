"""Careless or malicious operators (issue 11): every admin click that moves money needs a
real permission, a withdrawal changes state only through its services, and the ledger
check ties every withdrawal to its transfer and every exported batch line to its
withdrawals, so a tampered or double-paid state cannot pass as balanced."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.urls import reverse

from bim_core.money import MICRO
from ledger.accounts import account_balance, account_get
from ledger.checks import ledger_violations
from ledger.errors import LedgerError
from ledger.models import AccountKind, SettlementBatch, Transfer, TransferKind, Withdrawal, WithdrawalState
from ledger.posting import Leg, post_legs, transfer_create
from ledger.services import credits_top_up, transfer_reverse
from ledger.withdrawals import settlement_batch_create, withdrawal_decide, withdrawal_request
from tests.factories import SubnetFactory, UserFactory, online_node

pytestmark = pytest.mark.usefixtures("db")


class Rollback(Exception):
    """Raised to undo a deliberate tampering through its savepoint."""


@pytest.fixture(autouse=True)
def _fresh_content_types():
    """The Adjustment proxy's content type may be made inside a rolled-back test (see
    test_ledger_admin.py): forget the process-wide cache around each test."""
    ContentType.objects.clear_cache()
    yield
    ContentType.objects.clear_cache()


def staff_with(*codenames: str):
    """A staff user holding exactly these ledger permissions (codenames)."""
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="ledger", codename__in=codenames))
    assert user.user_permissions.count() == len(codenames)
    return user


VIEW_ONLY = ("view_account", "view_transfer", "view_withdrawal", "view_adjustment")


@pytest.fixture
def node():
    """A node with 5 credits of earnings."""
    node = online_node(SubnetFactory()).node
    transfer_create(
        debit=account_get(AccountKind.EXTERNAL),
        credit=account_get(AccountKind.NODE_EARNINGS, node_id=node.pk),
        amount=5 * MICRO,
        kind=TransferKind.ADJUSTMENT,
        idempotency_key=f"earn:{node.pk}",
        reason="test earnings",
    )
    return node


def earnings(node) -> int:
    return account_balance(account_get(AccountKind.NODE_EARNINGS, node_id=node.pk))


def act(client, user, model: str, action: str, pks: list) -> None:
    client.force_login(user)
    response = client.post(reverse(f"admin:ledger_{model}_changelist"), {"action": action, "_selected_action": pks})
    assert response.status_code in (200, 302, 403)


# ---------------------------------------------------------------- admin actions need a permission


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_a_view_only_staff_user_cannot_decide_a_withdrawal(client, node, action):
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)

    act(client, staff_with(*VIEW_ONLY), "withdrawal", action, [withdrawal.pk])

    withdrawal.refresh_from_db()
    assert withdrawal.state == WithdrawalState.PENDING and withdrawal.decided_by is None
    assert earnings(node) == 5 * MICRO


@pytest.mark.parametrize(("action", "state"), [("approve", WithdrawalState.APPROVED), ("reject", WithdrawalState.REJECTED)])
def test_a_staff_user_with_the_change_withdrawal_permission_decides_a_withdrawal(client, node, action, state):
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)
    decider = staff_with(*VIEW_ONLY, "change_withdrawal")

    act(client, decider, "withdrawal", action, [withdrawal.pk])

    withdrawal.refresh_from_db()
    assert (withdrawal.state, withdrawal.decided_by) == (state, decider)


def test_the_decide_actions_are_not_offered_to_a_view_only_staff_user(client):
    client.force_login(staff_with(*VIEW_ONLY))
    response = client.get(reverse("admin:ledger_withdrawal_changelist"))
    assert response.status_code == 200
    assert not {"approve", "reject"} & set(response.context["cl"].model_admin.get_actions(response.wsgi_request))


def test_a_view_only_staff_user_cannot_reverse_a_transfer(client):
    user = UserFactory()
    top_up = credits_top_up(user=user, amount=3 * MICRO, idempotency_key="t1")

    act(client, staff_with(*VIEW_ONLY), "transfer", "reverse_selected", [top_up.pk])

    assert not Transfer.objects.filter(reverses=top_up).exists()
    assert account_balance(account_get(AccountKind.USER_CREDITS, user=user)) == 3 * MICRO


def test_a_staff_user_with_the_add_adjustment_permission_reverses_a_transfer(client):
    user = UserFactory()
    top_up = credits_top_up(user=user, amount=3 * MICRO, idempotency_key="t1")

    act(client, staff_with(*VIEW_ONLY, "add_adjustment"), "transfer", "reverse_selected", [top_up.pk])

    assert Transfer.objects.get(reverses=top_up).amount == 3 * MICRO
    assert account_balance(account_get(AccountKind.USER_CREDITS, user=user)) == 0


def test_a_view_only_staff_user_cannot_post_an_adjustment(client):
    credits = account_get(AccountKind.USER_CREDITS, user=UserFactory())
    client.force_login(staff_with(*VIEW_ONLY))

    response = client.post(
        reverse("admin:ledger_adjustment_add"),
        {"debit": account_get(AccountKind.REGISTRY_REVENUE).pk, "credit": credits.pk, "amount": MICRO, "reason": "gift"},
    )

    assert response.status_code == 403
    assert not Transfer.objects.exists()


def test_a_staff_user_with_the_add_adjustment_permission_posts_an_adjustment(client):
    credits = account_get(AccountKind.USER_CREDITS, user=UserFactory())
    client.force_login(staff_with(*VIEW_ONLY, "add_adjustment"))

    response = client.post(
        reverse("admin:ledger_adjustment_add"),
        {"debit": account_get(AccountKind.REGISTRY_REVENUE).pk, "credit": credits.pk, "amount": MICRO, "reason": "gift"},
    )

    assert response.status_code == 302
    assert account_balance(credits) == MICRO


def test_a_view_only_staff_user_cannot_change_an_adjustment(client):
    credits = account_get(AccountKind.USER_CREDITS, user=UserFactory())
    adjustment = transfer_create(
        debit=account_get(AccountKind.REGISTRY_REVENUE), credit=credits, amount=MICRO, kind=TransferKind.ADJUSTMENT, idempotency_key="a"
    )
    client.force_login(staff_with(*VIEW_ONLY))

    response = client.post(
        reverse("admin:ledger_adjustment_change", args=[adjustment.pk]),
        {"debit": adjustment.debit_id, "credit": credits.pk, "amount": 2 * MICRO, "reason": "more"},
    )

    assert response.status_code == 403
    assert Transfer.objects.get(pk=adjustment.pk).amount == MICRO


# ---------------------------------------------------------------- withdrawals: their transfer is theirs


def test_a_withdrawal_transfer_is_not_reversed_as_a_plain_transfer(node):
    operator = UserFactory(is_staff=True)
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)
    withdrawal = withdrawal_decide(withdrawal_id=withdrawal.pk, approve=True, operator=operator)

    with pytest.raises(LedgerError, match="withdrawal"):
        transfer_reverse(transfer=withdrawal.transfer, reason="paid by mistake", operator=operator)

    assert not Transfer.objects.filter(reverses=withdrawal.transfer).exists()
    assert earnings(node) == 3 * MICRO
    # The owner cannot take the same earnings out twice.
    with pytest.raises(LedgerError):
        withdrawal_request(node_id=node.pk, user=node.owner, amount=5 * MICRO)


def test_the_reverse_action_refuses_a_withdrawal_transfer(client, node):
    operator = UserFactory(is_staff=True, is_superuser=True)
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)
    withdrawal = withdrawal_decide(withdrawal_id=withdrawal.pk, approve=True, operator=operator)

    act(client, operator, "transfer", "reverse_selected", [withdrawal.transfer_id])

    assert not Transfer.objects.filter(reverses=withdrawal.transfer).exists()
    settlement_batch_create()
    assert SettlementBatch.objects.get().total == 2 * MICRO


def violations_after(tamper) -> list[str]:
    """The ledger check's findings after `tamper()`, undone again before the test ends."""
    with pytest.raises(Rollback), transaction.atomic():
        tamper()
        found = ledger_violations()
        raise Rollback
    return found


def test_the_ledger_check_catches_a_withdrawal_approved_without_its_transfer(node):
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)

    found = violations_after(lambda: Withdrawal.objects.filter(pk=withdrawal.pk).update(state=WithdrawalState.APPROVED))

    assert any(f"withdrawal {withdrawal.pk}" in v for v in found), found


def test_the_ledger_check_catches_a_rejected_withdrawal_that_kept_its_transfer(node):
    operator = UserFactory(is_staff=True)
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)
    withdrawal_decide(withdrawal_id=withdrawal.pk, approve=True, operator=operator)

    found = violations_after(lambda: Withdrawal.objects.filter(pk=withdrawal.pk).update(state=WithdrawalState.REJECTED))

    assert any(f"withdrawal {withdrawal.pk}" in v for v in found), found


def test_the_ledger_check_catches_a_withdrawal_whose_transfer_was_reversed(node):
    operator = UserFactory(is_staff=True)
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)
    transfer = withdrawal_decide(withdrawal_id=withdrawal.pk, approve=True, operator=operator).transfer

    def reverse_behind_the_service() -> None:
        leg = Leg(transfer.credit, transfer.debit, transfer.amount, TransferKind.ADJUSTMENT, "sneaky", reverses_id=transfer.pk)
        post_legs([leg])

    found = violations_after(reverse_behind_the_service)

    assert any(f"withdrawal {withdrawal.pk}" in v and "revers" in v for v in found), found


def test_the_ledger_check_catches_a_withdrawal_transfer_of_another_amount_or_node(node):
    operator = UserFactory(is_staff=True)
    other = online_node(SubnetFactory()).node
    first = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)
    withdrawal_decide(withdrawal_id=first.pk, approve=True, operator=operator)

    found = violations_after(lambda: Withdrawal.objects.filter(pk=first.pk).update(amount=MICRO, node_id=other.pk))

    assert any(f"withdrawal {first.pk}" in v for v in found), found


def test_the_ledger_check_catches_a_withdrawal_transfer_without_a_withdrawal(node):
    strays = []

    def pay_out_behind_the_service() -> None:
        strays.append(
            transfer_create(
                debit=account_get(AccountKind.NODE_EARNINGS, node_id=node.pk),
                credit=account_get(AccountKind.EXTERNAL),
                amount=MICRO,
                kind=TransferKind.WITHDRAWAL,
                idempotency_key="stray",
            )
        )

    found = violations_after(pay_out_behind_the_service)

    assert any(f"transfer {strays[0].pk}" in v for v in found), found


def test_the_ledger_check_catches_a_batch_line_that_does_not_match_its_withdrawals(node):
    operator = UserFactory(is_staff=True)
    for amount in (MICRO, 2 * MICRO):
        withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=amount)
        withdrawal_decide(withdrawal_id=withdrawal.pk, approve=True, operator=operator)
    batch = settlement_batch_create()
    assert ledger_violations() == []

    doubled = batch.lines.replace(str(3 * MICRO), str(6 * MICRO))
    found = violations_after(lambda: SettlementBatch.objects.filter(pk=batch.pk).update(lines=doubled, total=6 * MICRO))

    assert any(f"batch {batch.pk}" in v for v in found), found


def test_the_ledger_check_catches_a_batched_withdrawal_that_is_not_approved(node):
    operator = UserFactory(is_staff=True)
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=MICRO)
    withdrawal_decide(withdrawal_id=withdrawal.pk, approve=True, operator=operator)
    pending = withdrawal_request(node_id=node.pk, user=node.owner, amount=MICRO)
    batch = settlement_batch_create()

    found = violations_after(lambda: Withdrawal.objects.filter(pk=pending.pk).update(batch=batch))

    assert any(f"withdrawal {pending.pk}" in v for v in found), found

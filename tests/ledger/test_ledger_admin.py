"""The ledger in admin: a health line on the ledger pages, read-only and filterable
transfers, withdrawal approval, reversal of transfers and reason-carrying manual
adjustments, all through the ledger's services."""

from __future__ import annotations

import io

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.db import transaction
from django.db.models import F
from django.urls import reverse

from bim_core.money import MICRO
from ledger.accounts import account_balance, account_get
from ledger.models import Account, AccountKind, Transfer, TransferKind, WithdrawalState
from ledger.posting import transfer_create
from ledger.services import credits_top_up
from ledger.withdrawals import withdrawal_request
from tests.factories import SubnetFactory, UserFactory, online_node, user_with_credits

pytestmark = pytest.mark.usefixtures("db")


class Rollback(Exception):
    """Raised to undo a deliberate tampering through its savepoint."""


@pytest.fixture(autouse=True)
def _fresh_content_types():
    """The Adjustment proxy has no migration, so migrate never makes its content type; the
    first admin log makes it inside a test's rolled-back transaction while the process-wide
    cache keeps its id. Forget the cache so no test logs against a row that is gone."""
    ContentType.objects.clear_cache()
    yield
    ContentType.objects.clear_cache()


@pytest.fixture
def operator():
    return UserFactory(username="op", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(client, operator):
    client.force_login(operator)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def credits_of(user) -> Account:
    return account_get(AccountKind.USER_CREDITS, user=user)


# ---------------------------------------------------------------- health line


@pytest.mark.parametrize("model", ["account", "transfer", "withdrawal"])
def test_the_ledger_pages_show_a_balanced_health_line(admin_client, model):
    user_with_credits(5)

    response = admin_client.get(reverse(f"admin:ledger_{model}_changelist"))

    assert response.status_code == 200
    assert "Ledger health: balanced; every invariant holds." in messages_of(response)
    assert b"Ledger health: balanced" in response.content


@pytest.mark.parametrize("model", ["account", "transfer"])
def test_the_health_line_reports_a_violation_after_tampering(admin_client, model):
    account = credits_of(user_with_credits(5))

    with pytest.raises(Rollback), transaction.atomic():
        Account.objects.filter(pk=account.pk).update(balance=F("balance") + 7)
        response = admin_client.get(reverse(f"admin:ledger_{model}_changelist"))
        raise Rollback

    lines = [m for m in messages_of(response) if m.startswith("Ledger health")]
    assert len(lines) == 1
    assert "violation" in lines[0] and "balances sum to 7, not 0" in lines[0]
    assert "balanced" not in lines[0]
    assert b"violation(s)" in response.content


def test_the_account_list_shows_balances_including_pending_legs(admin_client):
    credits_top_up(user=UserFactory(), amount=3 * MICRO, idempotency_key="t1")
    external = account_get(AccountKind.EXTERNAL)
    assert Account.objects.get(pk=external.pk).balance == 0  # only a pending leg so far

    response = admin_client.get(reverse("admin:ledger_account_changelist"))

    shown = {a.pk: response.context["cl"].model_admin.current_balance(a) for a in response.context["cl"].result_list}
    assert shown[external.pk] == -3 * MICRO == account_balance(external)


# ---------------------------------------------------------------- transfers: read-only, filterable


def test_transfers_cannot_be_added_changed_or_deleted_in_admin(admin_client):
    transfer = credits_top_up(user=UserFactory(), amount=MICRO, idempotency_key="t1")

    assert admin_client.get(reverse("admin:ledger_transfer_add")).status_code == 403
    assert admin_client.post(reverse("admin:ledger_transfer_change", args=[transfer.pk]), {"amount": 1}).status_code == 403
    assert admin_client.post(reverse("admin:ledger_transfer_delete", args=[transfer.pk]), {"post": "yes"}).status_code == 403
    transfer.refresh_from_db()
    assert transfer.amount == MICRO


def test_transfers_filter_by_kind_and_by_account(admin_client):
    alice, bob = UserFactory(), UserFactory()
    top_up_a = credits_top_up(user=alice, amount=MICRO, idempotency_key="a")
    top_up_b = credits_top_up(user=bob, amount=MICRO, idempotency_key="b")
    move = transfer_create(
        debit=credits_of(alice), credit=credits_of(bob), amount=10, kind=TransferKind.ADJUSTMENT, idempotency_key="m"
    )
    url = reverse("admin:ledger_transfer_changelist")

    def listed(query: dict) -> set[int]:
        response = admin_client.get(url, query)
        assert response.status_code == 200
        return {t.pk for t in response.context["cl"].result_list}

    assert listed({"kind": "top_up"}) == {top_up_a.pk, top_up_b.pk}
    assert listed({"kind": "adjustment"}) == {move.pk}
    assert listed({"account": str(account_get(AccountKind.EXTERNAL).pk)}) == {top_up_a.pk, top_up_b.pk}
    assert listed({"q": "top_up:a"}) == {top_up_a.pk}


# ---------------------------------------------------------------- actions


def test_the_approve_action_approves_a_pending_withdrawal_once(admin_client):
    node = online_node(SubnetFactory()).node
    transfer_create(
        debit=account_get(AccountKind.EXTERNAL),
        credit=account_get(AccountKind.NODE_EARNINGS, node_id=node.pk),
        amount=5 * MICRO,
        kind=TransferKind.ADJUSTMENT,
        idempotency_key="earn",
    )
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)
    url = reverse("admin:ledger_withdrawal_changelist")

    for _ in range(2):  # a second click changes nothing
        response = admin_client.post(url, {"action": "approve", "_selected_action": [withdrawal.pk]})
        assert response.status_code == 302

    withdrawal.refresh_from_db()
    assert withdrawal.state == WithdrawalState.APPROVED
    assert withdrawal.decided_by.username == "op"
    assert Transfer.objects.filter(kind=TransferKind.WITHDRAWAL).count() == 1
    assert account_balance(account_get(AccountKind.NODE_EARNINGS, node_id=node.pk)) == 3 * MICRO


def test_the_reject_action_rejects_and_leaves_the_earnings(admin_client):
    node = online_node(SubnetFactory()).node
    transfer_create(
        debit=account_get(AccountKind.EXTERNAL),
        credit=account_get(AccountKind.NODE_EARNINGS, node_id=node.pk),
        amount=5 * MICRO,
        kind=TransferKind.ADJUSTMENT,
        idempotency_key="earn",
    )
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)

    admin_client.post(reverse("admin:ledger_withdrawal_changelist"), {"action": "reject", "_selected_action": [withdrawal.pk]})

    withdrawal.refresh_from_db()
    assert withdrawal.state == WithdrawalState.REJECTED
    assert not Transfer.objects.filter(kind=TransferKind.WITHDRAWAL).exists()
    assert account_balance(account_get(AccountKind.NODE_EARNINGS, node_id=node.pk)) == 5 * MICRO


def test_withdrawals_cannot_be_edited_in_admin(admin_client):
    node = online_node(SubnetFactory()).node
    transfer_create(
        debit=account_get(AccountKind.EXTERNAL),
        credit=account_get(AccountKind.NODE_EARNINGS, node_id=node.pk),
        amount=5 * MICRO,
        kind=TransferKind.ADJUSTMENT,
        idempotency_key="earn",
    )
    withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=2 * MICRO)

    admin_client.post(
        reverse("admin:ledger_withdrawal_change", args=[withdrawal.pk]), {"state": "approved", "amount": 5 * MICRO}
    )

    withdrawal.refresh_from_db()
    assert (withdrawal.state, withdrawal.amount) == (WithdrawalState.PENDING, 2 * MICRO)


def test_the_reverse_action_reverses_a_transfer(admin_client):
    user = UserFactory()
    top_up = credits_top_up(user=user, amount=3 * MICRO, idempotency_key="t1")

    response = admin_client.post(
        reverse("admin:ledger_transfer_changelist"), {"action": "reverse_selected", "_selected_action": [top_up.pk]}
    )

    assert response.status_code == 302
    reversal = Transfer.objects.get(reverses=top_up)
    assert (reversal.debit_id, reversal.credit_id, reversal.amount) == (top_up.credit_id, top_up.debit_id, 3 * MICRO)
    assert "op" in reversal.reason
    assert account_balance(credits_of(user)) == 0
    assert f"transfer {top_up.pk} reversed" in messages_of(response)


def test_the_reverse_action_reports_what_it_refuses(admin_client):
    user = UserFactory()
    top_up = credits_top_up(user=user, amount=3 * MICRO, idempotency_key="t1")
    transfer_create(
        debit=credits_of(user), credit=credits_of(UserFactory()), amount=MICRO, kind=TransferKind.ADJUSTMENT, idempotency_key="spent"
    )
    transfers = Transfer.objects.count()

    response = admin_client.post(
        reverse("admin:ledger_transfer_changelist"), {"action": "reverse_selected", "_selected_action": [top_up.pk]}
    )

    assert Transfer.objects.count() == transfers
    assert any(m.startswith(f"transfer {top_up.pk}:") for m in messages_of(response))
    assert account_balance(credits_of(user)) == 2 * MICRO


# ---------------------------------------------------------------- manual adjustments


def test_an_adjustment_is_posted_from_the_add_form_with_its_reason(admin_client):
    user = UserFactory()
    registry_revenue = account_get(AccountKind.REGISTRY_REVENUE)
    credits = credits_of(user)

    response = admin_client.post(
        reverse("admin:ledger_adjustment_add"),
        {"debit": registry_revenue.pk, "credit": credits.pk, "amount": MICRO, "reason": "goodwill for outage 12"},
    )

    assert response.status_code == 302
    adjustment = Transfer.objects.get(kind=TransferKind.ADJUSTMENT)
    assert (adjustment.debit_id, adjustment.credit_id, adjustment.amount) == (registry_revenue.pk, credits.pk, MICRO)
    assert adjustment.reason == "op: goodwill for outage 12"
    assert adjustment.idempotency_key.startswith("adjustment:")
    assert LogEntry.objects.get(action_flag=ADDITION).object_id == str(adjustment.pk)
    assert account_balance(credits) == MICRO


@pytest.mark.parametrize("reason", ["", "   "])
def test_the_add_form_refuses_an_adjustment_without_a_reason(admin_client, reason):
    credits = credits_of(UserFactory())
    response = admin_client.post(
        reverse("admin:ledger_adjustment_add"),
        {"debit": account_get(AccountKind.REGISTRY_REVENUE).pk, "credit": credits.pk, "amount": MICRO, "reason": reason},
    )

    assert response.status_code == 200  # the form again, with its error
    assert response.context["adminform"].form.errors
    assert not Transfer.objects.exists()
    assert account_balance(credits) == 0


def test_the_add_form_reports_an_adjustment_the_ledger_refuses(admin_client):
    poor = user_with_credits(1)
    credits = credits_of(poor)
    transfers = Transfer.objects.count()

    response = admin_client.post(
        reverse("admin:ledger_adjustment_add"),
        {"debit": credits.pk, "credit": account_get(AccountKind.REGISTRY_REVENUE).pk, "amount": 2 * MICRO, "reason": "fee"},
        follow=True,
    )

    assert response.status_code == 200
    assert Transfer.objects.count() == transfers
    assert account_balance(credits) == MICRO
    messages = messages_of(response)
    assert any("adjustment refused" in m for m in messages)
    # Nothing was added, so admin must neither say so nor log an addition.
    assert not any("successfully" in m for m in messages), messages
    assert not LogEntry.objects.filter(action_flag=ADDITION).exists()


def test_an_adjustment_made_in_admin_can_be_reversed_in_admin(admin_client):
    user = UserFactory()
    credits = credits_of(user)
    admin_client.post(
        reverse("admin:ledger_adjustment_add"),
        {"debit": account_get(AccountKind.REGISTRY_REVENUE).pk, "credit": credits.pk, "amount": MICRO, "reason": "goodwill"},
    )
    adjustment = Transfer.objects.get(kind=TransferKind.ADJUSTMENT)

    admin_client.post(
        reverse("admin:ledger_transfer_changelist"), {"action": "reverse_selected", "_selected_action": [adjustment.pk]}
    )

    assert Transfer.objects.get(reverses=adjustment).amount == MICRO
    assert account_balance(credits) == 0


def test_the_adjustment_admin_model_has_its_migration():
    """`Adjustment` is a proxy model declared in ledger/admin.py. Without a migration,
    `migrate` never makes its content type (admin makes one on the fly at the first log
    entry) and `makemigrations --check` fails in CI."""
    out = io.StringIO()
    try:
        call_command("makemigrations", "ledger", "--check", "--dry-run", stdout=out, stderr=io.StringIO())
        changed = False
    except SystemExit:  # --check exits non-zero when a migration is missing
        changed = True
    assert not changed, f"ledger models changed without a migration:\n{out.getvalue()}"

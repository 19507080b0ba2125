"""Corrections: a transfer is never edited; it is undone by a new, reversing transfer that
names it (once), and an operator's manual adjustment carries its reason and can itself be
reversed. A correction obeys the same rules as any transfer: it never overdraws a user."""

from __future__ import annotations

import pytest
from django.db import transaction

from bim_core.money import MICRO
from ledger.accounts import account_balance, account_get
from ledger.checks import ledger_violations
from ledger.errors import InsufficientFunds, LedgerError
from ledger.models import AccountKind, Transfer, TransferKind
from ledger.posting import transfer_create
from ledger.services import NodeEscrowRule, adjustment_create, credits_top_up, job_settle, transfer_reverse
from registry import submit
from registry.models import Job, JobState
from tests.factories import SubnetFactory, UserFactory, online_node, user_with_credits

pytestmark = pytest.mark.usefixtures("db")


class Rollback(Exception):
    """Raised to undo what a test did on purpose through its savepoint."""


def credits_of(user):
    return account_get(AccountKind.USER_CREDITS, user=user)


def balance(account) -> int:
    return account_balance(account)


@pytest.fixture
def operator():
    return UserFactory(username="op", is_staff=True, is_superuser=True)


# ---------------------------------------------------------------- reversals


def test_a_reversal_posts_the_opposite_transfer_and_restores_the_balances(operator):
    user = UserFactory()
    external = account_get(AccountKind.EXTERNAL)
    before = balance(external)
    top_up = credits_top_up(user=user, amount=3 * MICRO, idempotency_key="order-1")

    reversal = transfer_reverse(transfer=top_up, reason="card charged back", operator=operator)

    assert reversal.reverses_id == top_up.pk
    assert (reversal.debit_id, reversal.credit_id, reversal.amount) == (top_up.credit_id, top_up.debit_id, 3 * MICRO)
    assert reversal.kind == TransferKind.ADJUSTMENT
    assert f"reverses transfer {top_up.pk}" in reversal.reason
    assert "op" in reversal.reason and "card charged back" in reversal.reason
    assert balance(credits_of(user)) == 0
    assert balance(external) == before
    top_up.refresh_from_db()  # the original is untouched, only named by its reversal
    assert (top_up.amount, top_up.kind, top_up.reversed_by.pk) == (3 * MICRO, TransferKind.TOP_UP, reversal.pk)


def test_a_transfer_is_reversed_at_most_once(operator):
    user = UserFactory()
    top_up = credits_top_up(user=user, amount=3 * MICRO, idempotency_key="order-1")
    first = transfer_reverse(transfer=top_up, reason="charge-back", operator=operator)
    transfers = Transfer.objects.count()

    # A repeat (a double click, a retried request) is the first reversal, never a second one.
    try:
        again = transfer_reverse(transfer=top_up, reason="charge-back again", operator=operator)
    except LedgerError:
        again = None
    assert again is None or again.pk == first.pk

    assert Transfer.objects.count() == transfers
    assert Transfer.objects.filter(reverses=top_up).count() == 1
    assert balance(credits_of(user)) == 0


def test_a_reversal_is_not_reversed(operator):
    user = UserFactory()
    top_up = credits_top_up(user=user, amount=3 * MICRO, idempotency_key="order-1")
    reversal = transfer_reverse(transfer=top_up, reason="charge-back", operator=operator)
    transfers = Transfer.objects.count()

    with pytest.raises(LedgerError):
        transfer_reverse(transfer=reversal, reason="undo the charge-back", operator=operator)

    assert Transfer.objects.count() == transfers
    assert balance(credits_of(user)) == 0


def test_a_reversal_that_would_overdraw_the_user_is_refused(operator):
    user = user_with_credits(0)
    top_up = credits_top_up(user=user, amount=5 * MICRO, idempotency_key="order-1")
    transfer_create(
        debit=credits_of(user),
        credit=credits_of(UserFactory()),
        amount=3 * MICRO,
        kind=TransferKind.ADJUSTMENT,
        idempotency_key="spent",
    )
    transfers = Transfer.objects.count()

    with pytest.raises(InsufficientFunds) as refused:
        transfer_reverse(transfer=top_up, reason="charge-back", operator=operator)

    assert refused.value.needed == 5 * MICRO
    assert Transfer.objects.count() == transfers
    assert not Transfer.objects.filter(reverses=top_up).exists()
    assert balance(credits_of(user)) == 2 * MICRO


def test_a_refused_reversal_can_be_posted_once_the_funds_are_back(operator):
    user = user_with_credits(0)
    top_up = credits_top_up(user=user, amount=5 * MICRO, idempotency_key="order-1")
    spent = transfer_create(
        debit=credits_of(user), credit=credits_of(UserFactory()), amount=3 * MICRO, kind="adjustment", idempotency_key="s"
    )
    with pytest.raises(InsufficientFunds):
        transfer_reverse(transfer=top_up, reason="charge-back", operator=operator)

    transfer_reverse(transfer=spent, reason="returned", operator=operator)
    reversal = transfer_reverse(transfer=top_up, reason="charge-back", operator=operator)

    assert reversal.reverses_id == top_up.pk
    assert balance(credits_of(user)) == 0


def test_reversing_one_leg_of_a_settlement_keeps_the_books_sound_or_is_refused(operator):
    """A settlement is one posting; undoing only a node's payout leg would leave the captured
    money in clearing, which `ledger_check` reports as a violation for ever (a reversal
    cannot be reversed). The ledger should refuse it, or keep every invariant."""
    subnet = SubnetFactory()
    user = user_with_credits(10)
    nodes = [online_node(subnet).node, online_node(subnet).node]
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["a", "b"]}, idempotency_key="k1")
    transfers = job_settle(
        job_id=job.pk,
        user=user,
        amount=job.price_micro,
        node_ids=(nodes[0].pk, nodes[1].pk),
        split_bp=subnet.split_bp,
        escrow=NodeEscrowRule(share_bp=0, required=0),
    )
    Job.objects.filter(pk=job.pk).update(state=JobState.SETTLED)
    payout = next(t for t in transfers if t.kind == TransferKind.PAYOUT and t.credit.node_id == nodes[0].pk)

    refused = False
    with pytest.raises(Rollback), transaction.atomic():
        try:
            transfer_reverse(transfer=payout, reason="claw back", operator=operator)
        except LedgerError:
            refused = True
        problems = ledger_violations()
        raise Rollback  # keep the database sound for the check after this test

    assert refused or problems == []


# ---------------------------------------------------------------- manual adjustments


@pytest.mark.parametrize("reason", ["", "   ", "\t\n"])
def test_an_adjustment_needs_a_reason(operator, reason):
    user = user_with_credits(5)
    with pytest.raises(LedgerError):
        adjustment_create(
            debit=credits_of(user),
            credit=account_get(AccountKind.EXTERNAL),
            amount=MICRO,
            reason=reason,
            idempotency_key="a1",
            operator=operator,
        )
    assert not Transfer.objects.filter(kind=TransferKind.ADJUSTMENT).exists()
    assert balance(credits_of(user)) == 5 * MICRO


def test_an_adjustment_carries_its_reason_and_operator_and_moves_value_once(operator):
    user = UserFactory()
    registry_revenue = account_get(AccountKind.REGISTRY_REVENUE)

    goodwill = adjustment_create(
        debit=registry_revenue, credit=credits_of(user), amount=MICRO, reason="outage goodwill", idempotency_key="a1", operator=operator
    )
    again = adjustment_create(
        debit=registry_revenue, credit=credits_of(user), amount=MICRO, reason="outage goodwill", idempotency_key="a1", operator=operator
    )

    assert again.pk == goodwill.pk
    assert goodwill.kind == TransferKind.ADJUSTMENT
    assert goodwill.idempotency_key == "adjustment:a1"
    assert "outage goodwill" in goodwill.reason and "op" in goodwill.reason
    assert balance(credits_of(user)) == MICRO
    assert balance(registry_revenue) == -MICRO


def test_an_adjustment_is_reversible(operator):
    user = user_with_credits(5)
    registry_revenue = account_get(AccountKind.REGISTRY_REVENUE)
    goodwill = adjustment_create(
        debit=registry_revenue, credit=credits_of(user), amount=MICRO, reason="goodwill", idempotency_key="a1", operator=operator
    )

    reversal = transfer_reverse(transfer=goodwill, reason="posted to the wrong user", operator=operator)

    assert reversal.reverses_id == goodwill.pk
    assert balance(credits_of(user)) == 5 * MICRO
    assert balance(registry_revenue) == 0


def test_an_adjustment_never_overdraws_a_user(operator):
    user = user_with_credits(1)
    with pytest.raises(InsufficientFunds):
        adjustment_create(
            debit=credits_of(user),
            credit=account_get(AccountKind.REGISTRY_REVENUE),
            amount=MICRO + 1,
            reason="fee",
            idempotency_key="a1",
            operator=operator,
        )
    assert not Transfer.objects.filter(kind=TransferKind.ADJUSTMENT).exists()
    assert balance(credits_of(user)) == MICRO

"""Slashing on proven fraud: a fraction of the node's escrow goes to the registry with the
job, assignment and reason as evidence, the affected job's user is refunded once, and a
slash happens once per assignment."""

from __future__ import annotations

import pytest

from bim_core.money import MICRO
from ledger.accounts import account_balance, account_get
from ledger.errors import LedgerError
from ledger.models import AccountKind, Slash, Transfer, TransferKind
from ledger.services import escrow_slash
from registry import dispatch, submit, verify
from registry.models import Assignment, Job, JobState
from registry.results import result_record
from tests.factories import (
    SubnetFactory,
    online_node,
    result_message,
    unit_vectors,
    user_with_credits,
)

pytestmark = pytest.mark.usefixtures("db")

TEXTS = ["one", "two", "three"]
PRICE = 300_000  # no per-call price, 100,000 per item
NODE_SHARE = 120_000  # 40 %
ESCROW = 12_000  # 10 % of the node share, below the requirement


def balance(kind: str, **owner) -> int:
    return account_balance(account_get(kind, **owner))


def escrow_of(node_id) -> int:
    return balance(AccountKind.NODE_ESCROW, node_id=node_id)


@pytest.fixture
def subnet():
    return SubnetFactory(price_per_call_micro=0, price_per_item_micro=100_000, escrow_required_micro=MICRO)


@pytest.fixture
def nodes(subnet):
    return [online_node(subnet), online_node(subnet)]


def settled_job(subnet, nodes, user, key: str) -> Job:
    """A job through the registry: submit, dispatch, both nodes' signed results, 2-of-2 settle."""
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key=key)
    dispatch.job_dispatch(job_id=job.pk)
    by_node = {keys.node.pk: keys for keys in nodes}
    vectors = unit_vectors(len(TEXTS))
    for assignment in job.assignments.all():
        keys = by_node[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))
    verify.job_verify(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == JobState.SETTLED
    return job


def slash(assignment: Assignment, job: Job, reason: str = "forged result, see report 17", fraction_bp: int = 10_000):
    return escrow_slash(
        node_id=assignment.node_id,
        job_id=job.pk,
        assignment_id=assignment.pk,
        job_user=job.user,
        job_price=job.price_micro,
        reason=reason,
        fraction_bp=fraction_bp,
    )


def test_a_slash_takes_the_fraction_of_escrow_to_the_registry_and_refunds_the_user(subnet, nodes):
    user = user_with_credits(10)
    job = settled_job(subnet, nodes, user, "k1")
    cheat = job.assignments.get(role="A")
    honest = job.assignments.get(role="B")
    assert escrow_of(cheat.node_id) == ESCROW
    registry_before = balance(AccountKind.REGISTRY_REVENUE)
    earnings_before = balance(AccountKind.NODE_EARNINGS, node_id=cheat.node_id)

    result = slash(cheat, job, fraction_bp=2_500)

    assert (result.node_id, result.job_id, result.assignment_id) == (cheat.node_id, job.pk, cheat.pk)
    assert (result.reason, result.fraction_bp) == ("forged result, see report 17", 2_500)
    taken = result.transfer
    assert (taken.kind, taken.amount, taken.job_id) == (TransferKind.SLASH, ESCROW // 4, job.pk)
    assert (taken.debit, taken.credit) == (
        account_get(AccountKind.NODE_ESCROW, node_id=cheat.node_id),
        account_get(AccountKind.REGISTRY_REVENUE),
    )
    for evidence in (str(job.pk), str(cheat.pk), "forged result, see report 17"):
        assert evidence in taken.reason
    refund = result.refund
    assert (refund.kind, refund.amount, refund.job_id) == (TransferKind.REFUND, PRICE, job.pk)
    assert refund.credit == account_get(AccountKind.USER_CREDITS, user=user)
    assert str(cheat.pk) in refund.reason

    assert escrow_of(cheat.node_id) == ESCROW - ESCROW // 4
    assert balance(AccountKind.REGISTRY_REVENUE) == registry_before + ESCROW // 4 - PRICE
    assert balance(AccountKind.USER_CREDITS, user=user) == 10 * MICRO  # the job cost nothing in the end
    # Earnings, the honest node and the job's settlement are untouched.
    assert balance(AccountKind.NODE_EARNINGS, node_id=cheat.node_id) == earnings_before
    assert escrow_of(honest.node_id) == ESCROW
    assert Transfer.objects.filter(job_id=job.pk, kind=TransferKind.CAPTURE).count() == 1


def test_a_full_slash_empties_the_escrow_and_settling_refills_it(subnet, nodes):
    user = user_with_credits(10)
    job = settled_job(subnet, nodes, user, "k1")
    cheat = job.assignments.get(role="A")

    slash(cheat, job)
    assert escrow_of(cheat.node_id) == 0

    settled_job(subnet, nodes, user, "k2")
    assert escrow_of(cheat.node_id) == ESCROW


def test_a_slash_is_once_per_assignment(subnet, nodes):
    user = user_with_credits(10)
    job = settled_job(subnet, nodes, user, "k1")
    settled_job(subnet, nodes, user, "k2")  # more escrow the retry could wrongly take
    cheat = job.assignments.get(role="A")
    first = slash(cheat, job, fraction_bp=5_000)
    transfers = Transfer.objects.count()
    after = (escrow_of(cheat.node_id), balance(AccountKind.REGISTRY_REVENUE), balance(AccountKind.USER_CREDITS, user=user))

    again = slash(cheat, job, fraction_bp=10_000, reason="reported twice")

    assert again.pk == first.pk
    assert (again.fraction_bp, again.transfer_id, again.refund_id) == (5_000, first.transfer_id, first.refund_id)
    assert Slash.objects.count() == 1
    assert Transfer.objects.count() == transfers
    after_retry = (escrow_of(cheat.node_id), balance(AccountKind.REGISTRY_REVENUE), balance(AccountKind.USER_CREDITS, user=user))
    assert after_retry == after


def test_slashing_both_nodes_of_a_job_refunds_its_user_once(subnet, nodes):
    user = user_with_credits(10)
    job = settled_job(subnet, nodes, user, "k1")
    first, second = job.assignments.order_by("role")

    one = slash(first, job)
    two = slash(second, job)

    assert one.refund is not None and two.refund is None
    assert two.transfer.amount == ESCROW
    assert Transfer.objects.filter(job_id=job.pk, kind=TransferKind.REFUND).count() == 1
    assert Transfer.objects.filter(job_id=job.pk, kind=TransferKind.SLASH).count() == 2
    assert balance(AccountKind.USER_CREDITS, user=user) == 10 * MICRO


def test_a_node_with_empty_escrow_is_slashed_on_record_and_the_user_still_refunded(subnet):
    nodes = [online_node(subnet), online_node(subnet)]
    subnet.escrow_required_micro = 0  # nothing is escrowed
    subnet.save()
    user = user_with_credits(10)
    job = settled_job(subnet, nodes, user, "k1")
    cheat = job.assignments.get(role="A")

    result = slash(cheat, job)

    assert result.pk is not None and result.transfer is None
    assert not Transfer.objects.filter(kind=TransferKind.SLASH).exists()
    assert result.refund.amount == PRICE
    assert balance(AccountKind.USER_CREDITS, user=user) == 10 * MICRO


def test_a_job_that_was_never_captured_is_not_refunded(subnet, nodes):
    """Fraud proven on an open job: its hold is still there, so there is nothing to refund."""
    user = user_with_credits(10)
    settled_job(subnet, nodes, user, "k1")  # gives the nodes escrow
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key="open")
    dispatch.job_dispatch(job_id=job.pk)
    assignment = job.assignments.get(role="A")

    result = slash(assignment, job)

    assert result.transfer.amount == ESCROW and result.refund is None
    assert not Transfer.objects.filter(kind=TransferKind.REFUND).exists()
    assert balance(AccountKind.USER_HOLD, user=user) == PRICE


@pytest.mark.parametrize("reason", ["", "   ", "\n"])
def test_a_slash_must_name_its_evidence(subnet, nodes, reason):
    job = settled_job(subnet, nodes, user_with_credits(10), "k1")
    cheat = job.assignments.get(role="A")
    transfers = Transfer.objects.count()

    with pytest.raises(LedgerError):
        slash(cheat, job, reason=reason)

    assert not Slash.objects.exists()
    assert Transfer.objects.count() == transfers
    assert escrow_of(cheat.node_id) == ESCROW


@pytest.mark.parametrize("fraction_bp", [0, -1, 10_001])
def test_it_refuses_a_fraction_outside_0_to_100_percent(subnet, nodes, fraction_bp):
    job = settled_job(subnet, nodes, user_with_credits(10), "k1")
    cheat = job.assignments.get(role="A")

    with pytest.raises(LedgerError):
        slash(cheat, job, fraction_bp=fraction_bp)

    assert not Slash.objects.exists()
    assert escrow_of(cheat.node_id) == ESCROW

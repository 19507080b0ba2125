"""Settling a job's price: the rounding-safe split, capture and payouts, node escrow up to
its requirement, retried settlement, and the release of a failed job's hold."""

from __future__ import annotations

import pytest
from django.db import transaction
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bim_core.money import MICRO, split_amount
from ledger.accounts import account_balance, account_get, accounts_get
from ledger.errors import HoldEnded, LedgerError
from ledger.models import AccountKind, Transfer, TransferKind
from ledger.posting import Leg, post_legs
from ledger.services import NodeEscrowRule, job_release, job_settle
from registry.models import Job, JobState
from registry.submit import job_submit
from tests.factories import SubnetFactory, online_node, served_subnet, user_with_credits

TEXTS = ["one small text", "another text", "a third one"]  # 333 + 3 x 1,000 = 3,333 micro-credits

# Only the database tests ask for `db`: the conftest's ledger check runs after each of them.
with_db = pytest.mark.usefixtures("db")


@pytest.fixture(params=[True, False], ids=["posted-in-database", "posted-by-orm"])
def posting_path(request, settings):
    """Both ways a posting is written: on PostgreSQL the bim_ledger_post function, or the
    ORM path that SQLite uses (on SQLite both run the ORM path)."""
    settings.LEDGER_POST_IN_DATABASE = request.param
    return request.param


# ---------------------------------------------------------------- split_amount (pure)


@st.composite
def splits(draw) -> tuple[int, int, int]:
    node_a = draw(st.integers(0, 10_000))
    node_b = draw(st.integers(0, 10_000 - node_a))
    return (node_a, node_b, 10_000 - node_a - node_b)


@settings(derandomize=True, database=None, max_examples=500)  # deterministic: the same cases every run
@given(total=st.integers(0, 10**12), split_bp=splits())
@example(total=10**12 - 1, split_bp=(3333, 3333, 3334))
@example(total=9_999, split_bp=(9_999, 1, 0))
def test_a_split_always_adds_up_to_the_total(total, split_bp):
    split = split_amount(total, split_bp)

    assert split.node_a + split.node_b + split.registry == total
    assert min(split.node_a, split.node_b, split.registry) >= 0
    # Nodes get exactly their floor; the registry its share plus less than two units of remainder.
    assert split.node_a == total * split_bp[0] // 10_000
    assert split.node_b == total * split_bp[1] // 10_000
    assert 0 <= split.registry * 10_000 - total * split_bp[2] < 2 * 10_000


def test_the_rounding_remainder_goes_to_the_registry():
    split = split_amount(3_333, (4000, 4000, 2000))
    assert (split.node_a, split.node_b, split.registry) == (1333, 1333, 667)
    assert split_amount(1, (4000, 4000, 2000)).registry == 1
    assert split_amount(9, (5000, 5000, 0)).registry == 1


@pytest.mark.parametrize(
    "split_bp",
    [(4000, 4000, 1999), (4000, 4000, 2001), (0, 0, 0), (12_000, -1000, -1000), (-1, 5001, 5000), (10_001, 0, -1)],
)
def test_it_refuses_a_split_that_is_not_100_percent(split_bp):
    with pytest.raises(ValueError):
        split_amount(1000, split_bp)


# ---------------------------------------------------------------- settlement on real jobs


def submit(user, subnet, key: str, texts=TEXTS) -> Job:
    job, created = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": texts}, idempotency_key=key)
    assert created
    return job


def finish(job: Job, state: str) -> None:
    """Put the job in the state its ledger entries imply (the check after each test wants it)."""
    Job.objects.filter(pk=job.pk).update(state=state)


def settle(job: Job, nodes, subnet) -> list[Transfer]:
    return job_settle(
        job_id=job.pk,
        user=job.user,
        amount=job.price_micro,
        node_ids=(nodes[0].node.pk, nodes[1].node.pk),
        split_bp=subnet.split_bp,
        escrow=NodeEscrowRule(share_bp=subnet.escrow_share_bp, required=subnet.escrow_required_micro),
    )


def balance(kind: str, **owner) -> int:
    return account_balance(account_get(kind, **owner))


def node_balances(keys) -> tuple[int, int]:
    node_id = keys.node.pk
    return balance(AccountKind.NODE_EARNINGS, node_id=node_id), balance(AccountKind.NODE_ESCROW, node_id=node_id)


@pytest.mark.usefixtures("db", "posting_path")
def test_a_settled_job_pays_40_40_20_and_escrows_a_share_of_each_node_payout():
    subnet = SubnetFactory()  # 40/40/20, 10 % escrow until 1 credit
    user = user_with_credits(10)
    nodes = [online_node(subnet), online_node(subnet)]
    job = submit(user, subnet, "k1")
    assert job.price_micro == 3_333

    transfers = settle(job, nodes, subnet)
    finish(job, JobState.SETTLED)

    by_kind = sorted((t.kind, t.amount) for t in transfers)
    assert by_kind == [
        (TransferKind.CAPTURE, 3_333),
        (TransferKind.ESCROW, 133),
        (TransferKind.ESCROW, 133),
        (TransferKind.PAYOUT, 667),
        (TransferKind.PAYOUT, 1_333),
        (TransferKind.PAYOUT, 1_333),
    ]
    assert all(t.job_id == job.pk for t in transfers)
    assert balance(AccountKind.USER_CREDITS, user=user) == 10 * MICRO - 3_333
    assert balance(AccountKind.USER_HOLD, user=user) == 0
    assert balance(AccountKind.CLEARING) == 0
    assert balance(AccountKind.REGISTRY_REVENUE) == 667
    assert node_balances(nodes[0]) == node_balances(nodes[1]) == (1_333 - 133, 133)


@pytest.mark.usefixtures("db", "posting_path")
def test_escrow_fills_up_to_the_requirement_and_stops_there():
    subnet = SubnetFactory(escrow_required_micro=300)
    user = user_with_credits(10)
    nodes = [online_node(subnet), online_node(subnet)]

    escrowed = []
    for n in range(4):
        job = submit(user, subnet, f"k{n}")
        transfers = settle(job, nodes, subnet)
        finish(job, JobState.SETTLED)
        escrowed.append(sorted(t.amount for t in transfers if t.kind == TransferKind.ESCROW))

    # 10 % of 1,333 is 133: 133, 133, then only the 34 still missing, then nothing.
    assert escrowed == [[133, 133], [133, 133], [34, 34], []]
    for keys in nodes:
        assert node_balances(keys) == (4 * 1_333 - 300, 300)


@pytest.mark.usefixtures("db", "posting_path")
def test_a_node_already_holding_its_escrow_keeps_its_whole_payout():
    subnet = SubnetFactory(escrow_required_micro=0)
    nodes = [online_node(subnet), online_node(subnet)]
    job = submit(user_with_credits(10), subnet, "k1")

    transfers = settle(job, nodes, subnet)
    finish(job, JobState.SETTLED)

    assert not [t for t in transfers if t.kind == TransferKind.ESCROW]
    assert node_balances(nodes[0]) == (1_333, 0)


TRANSFER_FIELDS = ["id", "idempotency_key", "debit_id", "credit_id", "amount", "kind", "job_id", "reason", "reverses_id", "created_at"]


@pytest.mark.usefixtures("db", "posting_path")
def test_a_settlement_returns_its_transfers_as_stored():
    subnet = SubnetFactory(escrow_required_micro=133)  # one settlement fills a node's escrow
    user = user_with_credits(10)
    full, fresh, other = online_node(subnet), online_node(subnet), online_node(subnet)
    settle_first = submit(user, subnet, "k1")
    settle(settle_first, (full, other), subnet)
    finish(settle_first, JobState.SETTLED)
    job = submit(user, subnet, "k2")

    # Node A's escrow is full, so its escrow leg (the fourth of six) is dropped in the posting.
    transfers = settle(job, (full, fresh), subnet)
    finish(job, JobState.SETTLED)

    assert [(t.kind, t.amount) for t in transfers] == [
        (TransferKind.CAPTURE, 3_333),
        (TransferKind.PAYOUT, 667),
        (TransferKind.PAYOUT, 1_333),
        (TransferKind.PAYOUT, 1_333),
        (TransferKind.ESCROW, 133),
    ]
    returned = [{field: getattr(t, field) for field in TRANSFER_FIELDS} for t in transfers]
    stored = list(Transfer.objects.filter(job_id=job.pk).exclude(kind=TransferKind.HOLD).order_by("pk").values(*TRANSFER_FIELDS))
    assert returned == stored
    assert all(not t._state.adding for t in transfers)


@with_db
def test_a_capped_leg_is_refused_where_a_retry_could_not_tell_it_apart():
    subnet = served_subnet()
    user = user_with_credits(10)
    job = submit(user, subnet, "k1")
    hold, registry, credits = accounts_get(
        [(AccountKind.USER_HOLD, user.pk, None), (AccountKind.REGISTRY_REVENUE, None, None), (AccountKind.USER_CREDITS, user.pk, None)]
    )

    # A capped leg's amount depends on balances, so only a posting its caller replays may have one,
    # and the cap reads a locked balance: an append-only account has none.
    with pytest.raises(LedgerError):
        post_legs([Leg(hold, credits, 10, TransferKind.RELEASE, "k:release", job.pk, cap=100)])
    with pytest.raises(LedgerError):
        post_legs([Leg(hold, registry, 10, TransferKind.PAYOUT, "k:payout", job.pk, cap=100)], replay=True)


@pytest.mark.usefixtures("db", "posting_path")
def test_a_retried_settlement_pays_once():
    subnet = SubnetFactory(escrow_required_micro=200)
    user = user_with_credits(10)
    nodes = [online_node(subnet), online_node(subnet)]
    job = submit(user, subnet, "k1")

    first = settle(job, nodes, subnet)
    after_first = (node_balances(nodes[0]), node_balances(nodes[1]), balance(AccountKind.REGISTRY_REVENUE))
    again = settle(job, nodes, subnet)
    finish(job, JobState.SETTLED)

    assert sorted(t.pk for t in again) == sorted(t.pk for t in first)
    assert Transfer.objects.filter(job_id=job.pk).count() == 1 + len(first)  # the hold and one settlement
    assert (node_balances(nodes[0]), node_balances(nodes[1]), balance(AccountKind.REGISTRY_REVENUE)) == after_first
    assert balance(AccountKind.USER_CREDITS, user=user) == 10 * MICRO - 3_333


@with_db
def test_a_released_job_gives_the_whole_hold_back():
    subnet = served_subnet()
    user = user_with_credits(10)
    job = submit(user, subnet, "k1")
    assert balance(AccountKind.USER_HOLD, user=user) == 3_333

    job_release(job_id=job.pk, user=user, amount=job.price_micro, reason="failed")
    job_release(job_id=job.pk, user=user, amount=job.price_micro, reason="failed")  # retried
    finish(job, JobState.FAILED)

    assert balance(AccountKind.USER_CREDITS, user=user) == 10 * MICRO
    assert balance(AccountKind.USER_HOLD, user=user) == 0
    assert list(Transfer.objects.filter(job_id=job.pk).values_list("kind", "amount")) == [
        (TransferKind.HOLD, 3_333),
        (TransferKind.RELEASE, 3_333),
    ]


@with_db
def test_a_released_job_cannot_be_settled_too():
    subnet = SubnetFactory()
    user = user_with_credits(10)
    nodes = [online_node(subnet), online_node(subnet)]
    job = submit(user, subnet, "k1")
    job_release(job_id=job.pk, user=user, amount=job.price_micro, reason="expired")

    # A hold ends once; the failed settle is rolled back like the registry's transaction would be.
    with pytest.raises(HoldEnded), transaction.atomic():
        settle(job, nodes, subnet)
    finish(job, JobState.EXPIRED)

    assert not Transfer.objects.filter(job_id=job.pk, kind__in=[TransferKind.CAPTURE, TransferKind.PAYOUT]).exists()
    assert balance(AccountKind.USER_CREDITS, user=user) == 10 * MICRO

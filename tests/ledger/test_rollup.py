"""No hot row: postings never lock or update a system account; their legs there are
appended as PendingDelta rows that `pending_rollup` folds into the stored balance. The
invariant check is exact before and after, and notices tampering with any of it: a
pending leg, a stored balance, or (behind the immutability trigger's back) a transfer."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum

from bim_core.money import MICRO
from ledger import tasks
from ledger.accounts import account_balance, account_get
from ledger.checks import ledger_violations
from ledger.models import Account, AccountKind, PendingDelta, Transfer
from ledger.services import NodeEscrowRule, credits_top_up, job_settle, pending_rollup
from registry import submit
from registry.models import Job, JobState
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.usefixtures("db")

TEXTS = ["one small text", "another text", "a third one"]  # 3,333 micro-credits: 1,333 + 1,333 + 667


class Rollback(Exception):
    """Raised to undo a deliberate tampering through its savepoint."""


def system(kind: str) -> Account:
    return account_get(kind)


def pending_of(account: Account) -> list[int]:
    return list(PendingDelta.objects.filter(account=account).order_by("pk").values_list("amount", flat=True))


def stored(account: Account) -> int:
    return Account.objects.values_list("balance", flat=True).get(pk=account.pk)


@pytest.fixture
def settle_jobs():
    """Submit and settle `count` jobs of 3,333 micro-credits for one user on two nodes."""

    def run(count: int) -> list[Job]:
        subnet = SubnetFactory()
        user = user_with_credits(10)
        nodes = [online_node(subnet).node, online_node(subnet).node]
        jobs = []
        for n in range(count):
            job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": TEXTS}, idempotency_key=f"k{n}")
            job_settle(
                job_id=job.pk,
                user=user,
                amount=job.price_micro,
                node_ids=(nodes[0].pk, nodes[1].pk),
                split_bp=subnet.split_bp,
                escrow=NodeEscrowRule(share_bp=subnet.escrow_share_bp, required=subnet.escrow_required_micro),
            )
            Job.objects.filter(pk=job.pk).update(state=JobState.SETTLED)
            jobs.append(job)
        return jobs

    return run


def test_a_settlement_appends_registry_legs_and_never_touches_the_registry_row(settle_jobs):
    settle_jobs(3)
    registry_revenue, clearing = system(AccountKind.REGISTRY_REVENUE), system(AccountKind.CLEARING)

    assert registry_revenue.append_only and clearing.append_only
    assert pending_of(registry_revenue) == [667, 667, 667]
    assert stored(registry_revenue) == 0  # no UPDATE of the hot row
    # Clearing receives the capture and pays it all out in the same posting: nothing to append.
    assert pending_of(clearing) == []
    assert stored(clearing) == 0
    assert account_balance(registry_revenue) == 3 * 667
    assert account_balance(clearing) == 0


def test_user_and_node_accounts_are_updated_in_place_without_pending_legs(settle_jobs):
    settle_jobs(2)
    touched = PendingDelta.objects.values_list("account__kind", flat=True).distinct()
    assert set(touched) <= {AccountKind.EXTERNAL, AccountKind.REGISTRY_REVENUE}


def test_a_top_up_appends_a_negative_leg_on_the_external_account():
    credits_top_up(user=user_with_credits(0), amount=2 * MICRO, idempotency_key="t1")
    assert pending_of(system(AccountKind.EXTERNAL)) == [-2 * MICRO]
    assert account_balance(system(AccountKind.EXTERNAL)) == -2 * MICRO


def test_the_rollup_folds_pending_legs_into_the_stored_balance(settle_jobs):
    settle_jobs(4)
    accounts = list(Account.objects.filter(append_only=True))
    computed = {a.pk: account_balance(a) for a in accounts}
    rows = PendingDelta.objects.count()
    assert rows == 4 + 1  # four registry legs, one top-up leg on external
    assert ledger_violations() == []

    folded = pending_rollup()

    assert folded == rows
    assert not PendingDelta.objects.exists()
    assert {a.pk: stored(a) for a in accounts} == computed
    assert {a.pk: account_balance(a) for a in accounts} == computed
    assert stored(system(AccountKind.REGISTRY_REVENUE)) == 4 * 667
    assert ledger_violations() == []
    assert pending_rollup() == 0


def test_postings_after_a_rollup_pend_again_and_fold_again(settle_jobs):
    settle_jobs(1)
    pending_rollup()
    settle_jobs(2)
    registry_revenue = system(AccountKind.REGISTRY_REVENUE)

    assert stored(registry_revenue) == 667 and pending_of(registry_revenue) == [667, 667]
    assert account_balance(registry_revenue) == 3 * 667
    assert ledger_violations() == []

    pending_rollup()
    assert stored(registry_revenue) == 3 * 667 and not PendingDelta.objects.exists()


def test_a_limited_rollup_folds_part_and_stays_exact(settle_jobs):
    settle_jobs(3)
    registry_revenue = system(AccountKind.REGISTRY_REVENUE)

    pending_rollup(limit=1)

    assert stored(registry_revenue) == 667
    assert pending_of(registry_revenue) == [667, 667]
    assert account_balance(registry_revenue) == 3 * 667
    assert ledger_violations() == []


def test_the_beat_task_runs_the_rollup(settle_jobs):
    settle_jobs(2)
    assert tasks.pending_rollup.delay().get() == 2 + 1
    assert not PendingDelta.objects.exists()


def test_the_books_sum_to_zero_with_and_without_pending_legs(settle_jobs):
    def total() -> int:
        stored_sum = Account.objects.aggregate(s=Sum("balance"))["s"] or 0
        return stored_sum + (PendingDelta.objects.aggregate(s=Sum("amount"))["s"] or 0)

    settle_jobs(2)
    assert total() == 0
    pending_rollup()
    assert total() == 0


# ---------------------------------------------------------------- tampering


def assert_ledger_check_fails(capsys) -> list[str]:
    problems = ledger_violations()
    with pytest.raises(CommandError) as failed:
        call_command("ledger_check")
    assert failed.value.returncode != 0
    assert problems and problems[0] in capsys.readouterr().err
    return problems


def test_ledger_check_fails_when_a_pending_leg_is_tampered_with(settle_jobs, capsys):
    settle_jobs(2)
    registry_revenue = system(AccountKind.REGISTRY_REVENUE)
    leg = PendingDelta.objects.filter(account=registry_revenue).first()

    with pytest.raises(Rollback), transaction.atomic():
        PendingDelta.objects.filter(pk=leg.pk).update(amount=F("amount") + 100)
        problems = assert_ledger_check_fails(capsys)
        raise Rollback

    assert "balances sum to 100, not 0" in problems
    assert any(f"account {registry_revenue.pk}" in p and "transfers give" in p for p in problems)
    assert ledger_violations() == []


def test_ledger_check_fails_when_a_pending_leg_is_deleted(settle_jobs, capsys):
    settle_jobs(2)

    with pytest.raises(Rollback), transaction.atomic():
        PendingDelta.objects.filter(pk=PendingDelta.objects.filter(amount=667).first().pk).delete()
        problems = assert_ledger_check_fails(capsys)
        raise Rollback

    assert "balances sum to -667, not 0" in problems


def test_ledger_check_fails_when_a_rolled_up_balance_is_tampered_with(settle_jobs, capsys):
    settle_jobs(2)
    pending_rollup()
    registry_revenue = system(AccountKind.REGISTRY_REVENUE)

    with pytest.raises(Rollback), transaction.atomic():
        # A rollup that added its rows but "forgot" to delete them would look like this.
        PendingDelta.objects.create(account=registry_revenue, amount=667)
        problems = assert_ledger_check_fails(capsys)
        raise Rollback

    assert any(f"account {registry_revenue.pk}" in p for p in problems)
    assert ledger_violations() == []


def test_ledger_check_fails_when_a_node_balance_is_tampered_with(settle_jobs, capsys):
    jobs = settle_jobs(1)
    earnings = Transfer.objects.filter(job_id=jobs[0].pk, kind="payout", credit__kind=AccountKind.NODE_EARNINGS).first().credit

    with pytest.raises(Rollback), transaction.atomic():
        Account.objects.filter(pk=earnings.pk).update(balance=F("balance") + 5)
        problems = assert_ledger_check_fails(capsys)
        raise Rollback

    assert any(f"account {earnings.pk}" in p and "transfers give" in p for p in problems)


def test_the_database_refuses_to_tamper_with_a_transfer(settle_jobs):
    jobs = settle_jobs(1)
    capture = Transfer.objects.get(job_id=jobs[0].pk, kind="capture")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE ledger_transfer SET amount = amount + 1 WHERE id = %s", [capture.pk])
    capture.refresh_from_db()
    assert capture.amount == jobs[0].price_micro


def test_ledger_check_fails_when_a_transfer_is_tampered_with_behind_the_trigger(settle_jobs, capsys):
    """Someone with the table owner's rights can switch the trigger off; the check still sees it."""
    assert connection.vendor == "postgresql", "this test disables a PostgreSQL trigger"
    jobs = settle_jobs(1)
    capture = Transfer.objects.get(job_id=jobs[0].pk, kind="capture")

    with pytest.raises(Rollback), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE refuses while deferred FK checks wait
        cursor.execute("ALTER TABLE ledger_transfer DISABLE TRIGGER ledger_transfer_append_only")
        cursor.execute("UPDATE ledger_transfer SET amount = amount - 1 WHERE id = %s", [capture.pk])
        problems = assert_ledger_check_fails(capsys)
        raise Rollback  # also re-enables the trigger: ALTER TABLE is transactional

    assert any(f"account {capture.debit_id}" in p and "transfers give" in p for p in problems)  # the hold
    assert any(f"account {capture.credit_id}" in p and "transfers give -1" in p for p in problems)  # clearing
    assert ledger_violations() == []
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE ledger_transfer SET amount = amount - 1 WHERE id = %s", [capture.pk])

"""The ledger under concurrency, on real PostgreSQL: threads with their own connections
settle the same jobs at once (same idempotency keys), retry the same top-ups at once,
release other jobs twice at once, request and decide withdrawals against the same nodes
(two operators deciding one request at once, sometimes in opposite ways) and roll up
pending legs, all interleaved. Afterwards the invariants hold, nothing was paid twice,
no deadlock or other database error surfaced, and every retry returned the first result.

Also here: a job's hold is captured or released, never both, even when two workers (a
settlement and an expiry) each get to the ledger with their own idempotency key."""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections import defaultdict

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Q, Sum

from bim_core.money import MICRO
from ledger.accounts import account_balance, account_get
from ledger.checks import ledger_violations
from ledger.errors import InsufficientFunds, LedgerError
from ledger.models import AccountKind, Transfer, TransferKind, Withdrawal, WithdrawalState
from ledger.services import NodeEscrowRule, credits_top_up, job_release, job_settle, pending_rollup
from ledger.withdrawals import withdrawal_decide, withdrawal_request
from registry import submit
from registry.models import Job, JobState
from tests.factories import SubnetFactory, UserFactory, online_node, user_with_credits

THREADS = 8
JOBS = 100
RELEASED = 20  # of the jobs, these are released (expired) instead of settled
TOP_UPS = 20  # keys, each sent by three threads at once
PRICE = 100_000  # one text at 100,000 per item
WITHDRAWAL = 15_000
MINIMUM = 10_000

def postgres_only(test):
    """These tests are about PostgreSQL's row locks: on any other database they fail, never skip."""

    def run(*args, **kwargs):
        assert connection.vendor == "postgresql", "this test needs PostgreSQL (make test provides it)"
        return test(*args, **kwargs)

    return functools.wraps(test)(run)


class Rollback(Exception):
    """Raised to undo what a test did on purpose through its savepoint."""


def escrow_rule(subnet) -> NodeEscrowRule:
    return NodeEscrowRule(share_bp=subnet.escrow_share_bp, required=subnet.escrow_required_micro)


@postgres_only
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_interleaved_settles_retries_and_withdrawals_keep_the_books_exact(settings):
    settings.LEDGER_MIN_WITHDRAWAL_MICRO = MINIMUM
    subnet = SubnetFactory(price_per_call_micro=0, price_per_item_micro=PRICE, escrow_required_micro=50_000)
    users = [user_with_credits(10) for _ in range(4)]
    # Not ready: the dispatch task that job_submit queues finds nobody, so jobs stay queued.
    nodes = [online_node(subnet, ready=False, ip=f"10.{n}.0.1").node for n in range(4)]
    operator = UserFactory(is_staff=True, is_superuser=True)
    jobs = [
        submit.job_submit(user=users[n % 4], subnet_slug=subnet.slug, inputs={"texts": [f"text {n}"]}, idempotency_key=f"c{n}")[0]
        for n in range(JOBS)
    ]
    assert {j.price_micro for j in jobs} == {PRICE}
    released, settled = jobs[:RELEASED], jobs[RELEASED:]
    pairs = {job.pk: (nodes[n % 4].pk, nodes[(n + 1) % 4].pk) for n, job in enumerate(jobs)}

    # Each thread's list of operations. The copies of one operation sit at the same place in
    # different threads' lists, so they run at about the same moment.
    plans: list[list[tuple]] = [[] for _ in range(THREADS)]
    for n, job in enumerate(settled):
        for copy in range(2 + n % 2):  # every settlement is sent two or three times
            plans[(n + 3 * copy) % THREADS].append(("settle", job))
        if n % 4 == 0:
            top_up = n // 4
            for copy in range(3):
                plans[(n + 1 + 2 * copy) % THREADS].append(("top_up", users[top_up % 4], f"order-{top_up}", 1_000 + top_up))
        if n % 3 == 0:
            for thread in range(THREADS):
                plans[thread].append(("withdraw", nodes[thread % 4]))
        if n % 10 == 0:
            plans[n % THREADS].append(("rollup",))
    for n, job in enumerate(released):
        for copy in range(2):
            plans[(n * 3 + copy * 5) % THREADS].insert(4 * n, ("release", job))
    assert sum(1 for plan in plans for op in plan if op[0] == "top_up") == 3 * TOP_UPS

    barrier = threading.Barrier(THREADS)
    lock = threading.Lock()
    to_decide: queue.Queue[int] = queue.Queue()
    errors: list[str] = []
    settle_results: dict[object, list[frozenset[int]]] = defaultdict(list)
    release_results: dict[object, list[int]] = defaultdict(list)
    top_up_results: dict[str, list[int]] = defaultdict(list)
    requested: list[int] = []
    refused_withdrawals = 0

    def decide_one(thread: int) -> None:
        try:
            withdrawal_id = to_decide.get_nowait()
        except queue.Empty:
            return
        # Two operators get each request; odd threads approve, even threads reject.
        withdrawal_decide(withdrawal_id=withdrawal_id, approve=thread % 2 == 1, operator=operator)

    def run(thread: int) -> None:
        nonlocal refused_withdrawals
        try:
            barrier.wait(timeout=30)
            for op in plans[thread]:
                try:
                    if op[0] == "settle":
                        job = op[1]
                        transfers = job_settle(
                            job_id=job.pk,
                            user=job.user,
                            amount=job.price_micro,
                            node_ids=pairs[job.pk],
                            split_bp=subnet.split_bp,
                            escrow=escrow_rule(subnet),
                        )
                        with lock:
                            settle_results[job.pk].append(frozenset(t.pk for t in transfers))
                    elif op[0] == "release":
                        job = op[1]
                        transfer = job_release(job_id=job.pk, user=job.user, amount=job.price_micro, reason="expired")
                        with lock:
                            release_results[job.pk].append(transfer.pk)
                    elif op[0] == "top_up":
                        _, user, key, amount = op
                        transfer = credits_top_up(user=user, amount=amount, idempotency_key=key)
                        with lock:
                            top_up_results[key].append(transfer.pk)
                    elif op[0] == "withdraw":
                        node = op[1]
                        try:
                            withdrawal = withdrawal_request(node_id=node.pk, user=node.owner, amount=WITHDRAWAL)
                        except InsufficientFunds:
                            with lock:
                                refused_withdrawals += 1
                        else:
                            with lock:
                                requested.append(withdrawal.pk)
                            to_decide.put(withdrawal.pk)
                            to_decide.put(withdrawal.pk)
                        decide_one(thread)
                        decide_one(thread)
                    elif op[0] == "rollup":
                        pending_rollup()
                except OperationalError as exc:  # a deadlock, a serialization failure, a lock timeout
                    with lock:
                        errors.append(f"thread {thread} {op[0]}: database error {exc!r}")
                except Exception as exc:  # noqa: BLE001 - any other error fails the test below
                    with lock:
                        errors.append(f"thread {thread} {op[0]}: {exc!r}")
        finally:
            connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    elapsed = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads), "a thread hung (lock wait?)"
    assert errors == []
    assert elapsed < 60

    # Pending requests never exceed a node's earnings, even mid-flight; decide the rest now.
    for node in nodes:
        earnings = account_balance(account_get(AccountKind.NODE_EARNINGS, node_id=node.pk))
        pending = Withdrawal.objects.filter(node_id=node.pk, state=WithdrawalState.PENDING).aggregate(s=Sum("amount"))["s"] or 0
        assert 0 <= pending <= earnings
    for withdrawal_id in Withdrawal.objects.filter(state=WithdrawalState.PENDING).values_list("pk", flat=True):
        withdrawal_decide(withdrawal_id=withdrawal_id, approve=True, operator=operator)

    Job.objects.filter(pk__in=[j.pk for j in settled]).update(state=JobState.SETTLED)
    Job.objects.filter(pk__in=[j.pk for j in released]).update(state=JobState.EXPIRED)
    assert ledger_violations() == []

    # No idempotency key was used twice (the constraint) and no money moved twice.
    assert not Transfer.objects.values("idempotency_key").annotate(c=Count("id")).filter(c__gt=1).exists()
    per_job = {
        row["job_id"]: row
        for row in Transfer.objects.filter(job_id__in=[j.pk for j in jobs])
        .values("job_id")
        .annotate(
            captures=Count("id", filter=Q(kind=TransferKind.CAPTURE)),
            releases=Count("id", filter=Q(kind=TransferKind.RELEASE)),
            payouts=Sum("amount", filter=Q(kind=TransferKind.PAYOUT)),
        )
    }
    for job in settled:
        assert (per_job[job.pk]["captures"], per_job[job.pk]["releases"], per_job[job.pk]["payouts"]) == (1, 0, PRICE)
        results = settle_results[job.pk]
        assert len(results) >= 2 and len(set(results)) == 1  # every retry got the first settlement's transfers
    for job in released:
        assert (per_job[job.pk]["captures"], per_job[job.pk]["releases"]) == (0, 1)
        assert len(release_results[job.pk]) == 2 and len(set(release_results[job.pk])) == 1

    # Each top-up, sent three times at once, was credited once.
    assert len(top_up_results) == TOP_UPS
    for key, pks in top_up_results.items():
        assert len(pks) == 3 and len(set(pks)) == 1
        assert Transfer.objects.filter(idempotency_key=f"top_up:{key}").count() == 1
    for n, user in enumerate(users):
        topped_up = sum(1_000 + t for t in range(TOP_UPS) if t % 4 == n)
        jobs_of_user = [j for j in jobs if j.user_id == user.pk]
        spent = PRICE * sum(1 for j in jobs_of_user if j in settled)
        assert account_balance(account_get(AccountKind.USER_CREDITS, user=user)) == 10 * MICRO + topped_up - spent
        assert account_balance(account_get(AccountKind.USER_HOLD, user=user)) == 0

    # Node earnings: payouts less escrow less approved withdrawals, never negative.
    assert len(requested) > THREADS  # most requests found enough earnings
    for node in nodes:
        earnings = account_get(AccountKind.NODE_EARNINGS, node_id=node.pk)
        escrow = account_get(AccountKind.NODE_ESCROW, node_id=node.pk)
        paid = Transfer.objects.filter(credit=earnings, kind=TransferKind.PAYOUT).aggregate(s=Sum("amount"))["s"]
        approved = Withdrawal.objects.filter(node_id=node.pk, state=WithdrawalState.APPROVED)
        withdrawn = approved.aggregate(s=Sum("amount"))["s"] or 0
        assert account_balance(earnings) == paid - account_balance(escrow) - withdrawn >= 0
        assert account_balance(escrow) <= 50_000
    for withdrawal in Withdrawal.objects.all():
        transfers = Transfer.objects.filter(idempotency_key=f"withdrawal:{withdrawal.pk}")
        if withdrawal.state == WithdrawalState.APPROVED:
            assert [t.amount for t in transfers] == [WITHDRAWAL] and withdrawal.transfer_id == transfers[0].pk
        else:
            assert withdrawal.state == WithdrawalState.REJECTED and not transfers.exists()
    assert Withdrawal.objects.filter(state=WithdrawalState.REJECTED).exists()
    assert Withdrawal.objects.filter(state=WithdrawalState.APPROVED).exists()

    pending_rollup()
    assert ledger_violations() == []


@postgres_only
@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
def test_the_same_settlement_sent_by_many_threads_at_once_pays_once():
    """The narrowest race: eight threads, one job, released at the same instant."""
    subnet = SubnetFactory(price_per_call_micro=0, price_per_item_micro=PRICE)
    user = user_with_credits(1)
    nodes = [online_node(subnet, ready=False, ip=f"10.{n}.0.1").node for n in range(2)]
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["one"]}, idempotency_key="k")
    barrier = threading.Barrier(THREADS)
    results: list[frozenset[int]] = []
    errors: list[str] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            transfers = job_settle(
                job_id=job.pk,
                user=user,
                amount=PRICE,
                node_ids=(nodes[0].pk, nodes[1].pk),
                split_bp=subnet.split_bp,
                escrow=escrow_rule(subnet),
            )
            results.append(frozenset(t.pk for t in transfers))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(results) == THREADS and len(set(results)) == 1
    Job.objects.filter(pk=job.pk).update(state=JobState.SETTLED)
    assert Transfer.objects.filter(job_id=job.pk, kind=TransferKind.CAPTURE).count() == 1
    assert account_balance(account_get(AccountKind.NODE_EARNINGS, node_id=nodes[0].pk)) == 36_000  # 40,000 less 10 % escrow
    assert ledger_violations() == []


# ---------------------------------------------------------------- capture or release, never both


@pytest.fixture
def two_held_jobs(db):
    """One user, two queued jobs with holds: the hold account holds both prices."""
    subnet = SubnetFactory(price_per_call_micro=0, price_per_item_micro=PRICE)
    user = user_with_credits(1)
    nodes = [online_node(subnet, ready=False, ip=f"10.{n}.0.1").node for n in range(2)]
    jobs = [
        submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["one"]}, idempotency_key=key)[0]
        for key in ("first", "second")
    ]
    settle = lambda job: job_settle(
        job_id=job.pk,
        user=user,
        amount=PRICE,
        node_ids=(nodes[0].pk, nodes[1].pk),
        split_bp=subnet.split_bp,
        escrow=escrow_rule(subnet),
    )
    return user, jobs, settle


def test_a_released_job_is_not_settled_from_another_jobs_hold(two_held_jobs):
    """An expiry and a late settlement race past the registry's job lock (or a retried
    settle task runs after the sweeper): the settlement must not capture the price again
    out of the other job's hold."""
    user, (job, _other), settle = two_held_jobs
    job_release(job_id=job.pk, user=user, amount=PRICE, reason="expired")
    Job.objects.filter(pk=job.pk).update(state=JobState.EXPIRED)

    with pytest.raises(Rollback), transaction.atomic():
        try:
            with transaction.atomic():  # a refusal leaves the rest of this transaction usable
                settle(job)
            refused = False
        except LedgerError:
            refused = True
        both = Transfer.objects.filter(job_id=job.pk, kind__in=[TransferKind.CAPTURE, TransferKind.RELEASE]).count()
        hold_left = account_balance(account_get(AccountKind.USER_HOLD, user=user))
        raise Rollback  # keep the books sound for the check after this test

    assert refused, f"settled after its release: {both} capture/release transfers, hold left {hold_left} of {PRICE}"


def test_a_settled_job_is_not_released_from_another_jobs_hold(two_held_jobs):
    user, (job, _other), settle = two_held_jobs
    settle(job)
    Job.objects.filter(pk=job.pk).update(state=JobState.SETTLED)

    with pytest.raises(Rollback), transaction.atomic():
        try:
            with transaction.atomic():
                job_release(job_id=job.pk, user=user, amount=PRICE, reason="expired")
            refused = False
        except LedgerError:
            refused = True
        credits = account_balance(account_get(AccountKind.USER_CREDITS, user=user))
        raise Rollback

    assert refused, f"released after its settlement: the user holds {credits}, paid for a job and got its price back"


def test_a_retried_settlement_returns_the_first_settlement_in_full(db):
    """The retry of a settlement (a redelivered task, a second thread) gets the transfers the
    first call made, all of them, even when the first call filled the escrow and the retry
    would compute no escrow legs at all."""
    subnet = SubnetFactory(price_per_call_micro=0, price_per_item_micro=PRICE, escrow_required_micro=4_000)
    user = user_with_credits(1)
    nodes = [online_node(subnet, ready=False, ip=f"10.{n}.0.1").node for n in range(2)]
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["one"]}, idempotency_key="k")

    def settle() -> list[Transfer]:
        return job_settle(
            job_id=job.pk,
            user=user,
            amount=PRICE,
            node_ids=(nodes[0].pk, nodes[1].pk),
            split_bp=subnet.split_bp,
            escrow=escrow_rule(subnet),
        )

    first = settle()
    again = settle()
    Job.objects.filter(pk=job.pk).update(state=JobState.SETTLED)

    # Capture, registry share, two node payouts and two escrow legs of 4,000 (10 % of 40,000).
    assert sorted((t.kind, t.amount) for t in first) == sorted(
        [(TransferKind.CAPTURE, PRICE), (TransferKind.PAYOUT, 20_000), (TransferKind.PAYOUT, 40_000),
         (TransferKind.PAYOUT, 40_000), (TransferKind.ESCROW, 4_000), (TransferKind.ESCROW, 4_000)]
    )
    assert sorted(t.pk for t in again) == sorted(t.pk for t in first)
    assert Transfer.objects.filter(job_id=job.pk).count() == 1 + 6

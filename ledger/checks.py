"""The ledger's invariants, checked in full: used by `manage.py ledger_check` and after
every ledger test. Returns the violations found (empty when the books are sound).

Each priced job's hold must end exactly once, the way its job ended. The ledger knows jobs
only by id, so the registry tells it how its jobs ended through `job_outcomes_register`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Literal

from django.db.models import Count, Sum

from .models import Account, AccountKind, PendingDelta, Transfer, TransferKind

# How a priced job ended, as far as its hold is concerned.
JobOutcome = Literal["open", "settled", "ended"]
JobOutcomes = Callable[[], Iterable[tuple[object, int, JobOutcome]]]

_job_outcomes: JobOutcomes | None = None


def job_outcomes_register(source: JobOutcomes) -> None:
    """Give the checks the (job id, price held, outcome) of every priced job."""
    global _job_outcomes
    _job_outcomes = source


def ledger_violations() -> list[str]:
    problems: list[str] = []
    pending: dict[int, int] = dict(
        PendingDelta.objects.values("account_id").annotate(s=Sum("amount")).values_list("account_id", "s")
    )
    total = (Account.objects.aggregate(s=Sum("balance"))["s"] or 0) + sum(pending.values())
    if total != 0:
        problems.append(f"balances sum to {total}, not 0")

    movement: dict[int, int] = defaultdict(int)
    for account_id, amount in Transfer.objects.values("credit_id").annotate(s=Sum("amount")).values_list("credit_id", "s"):
        movement[account_id] += amount
    for account_id, amount in Transfer.objects.values("debit_id").annotate(s=Sum("amount")).values_list("debit_id", "s"):
        movement[account_id] -= amount
    clearing = 0
    for account in Account.objects.all():
        balance = account.balance + pending.get(account.pk, 0)
        if balance != movement.get(account.pk, 0):
            problems.append(f"account {account.pk} ({account}) holds {balance}, transfers give {movement.get(account.pk, 0)}")
        if account.pk in pending and not account.append_only:
            problems.append(f"account {account.pk} ({account}) has pending legs but is not append-only")
        if balance < 0 and not account.append_only:
            problems.append(f"account {account.pk} ({account}) is negative: {balance}")
        if account.kind == AccountKind.CLEARING:
            clearing += balance
    if clearing != 0:
        problems.append(f"clearing holds {clearing}: a captured payment was not paid out")

    if _job_outcomes is not None:
        problems.extend(_job_hold_violations(_job_outcomes()))
    return problems


def _job_hold_violations(jobs: Iterable[tuple[object, int, JobOutcome]]) -> list[str]:
    """A priced job has one hold; a settled one one capture, paid out in full, with the
    rest of the hold (if any) released once; a failed or expired one one release and no
    capture; an open one neither yet."""
    count: dict[tuple[str, str], int] = defaultdict(int)
    total: dict[tuple[str, str], int] = defaultdict(int)
    rows = Transfer.objects.filter(job_id__isnull=False).values("job_id", "kind").annotate(n=Count("id"), s=Sum("amount"))
    for row in rows:
        count[(str(row["job_id"]), row["kind"])] = row["n"]
        total[(str(row["job_id"]), row["kind"])] = row["s"]
    problems = []
    for job_id, price, outcome in jobs:
        job = str(job_id)
        holds, captures, releases = (count[(job, k)] for k in (TransferKind.HOLD, TransferKind.CAPTURE, TransferKind.RELEASE))
        captured, released, payouts = (total[(job, k)] for k in (TransferKind.CAPTURE, TransferKind.RELEASE, TransferKind.PAYOUT))
        if holds != 1:
            problems.append(f"job {job} has {holds} holds")
        if outcome == "settled":
            if captures != 1 or releases > 1 or payouts != captured or captured + released != price:
                problems.append(
                    f"settled job {job}: {captures} captures of {captured}, {releases} releases, "
                    f"payouts {payouts}, hold {price}"
                )
        elif outcome == "ended" and (releases != 1 or captures):
            problems.append(f"ended job {job}: {releases} releases, {captures} captures")
        elif outcome == "open" and (captures or releases):
            problems.append(f"open job {job} already has captures or releases")
    return problems

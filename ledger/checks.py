"""The ledger's invariants, checked in full: used by `manage.py ledger_check` and after
every ledger test. Returns the violations found (empty when the books are sound)."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Count, Q, Sum

from registry.models import Job, JobState

from .models import Account, AccountKind, PendingDelta, Transfer, TransferKind


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

    per_job = Job.objects.filter(price_micro__gt=0).annotate(
        holds=Count("transfers", filter=Q(transfers__kind=TransferKind.HOLD)),
        captures=Count("transfers", filter=Q(transfers__kind=TransferKind.CAPTURE)),
        captured=Sum("transfers__amount", filter=Q(transfers__kind=TransferKind.CAPTURE)),
        releases=Count("transfers", filter=Q(transfers__kind=TransferKind.RELEASE)),
        released=Sum("transfers__amount", filter=Q(transfers__kind=TransferKind.RELEASE)),
        payouts=Sum("transfers__amount", filter=Q(transfers__kind=TransferKind.PAYOUT)),
    )
    for job in per_job:
        if job.holds != 1:
            problems.append(f"job {job.id} has {job.holds} holds")
        if job.state == JobState.SETTLED:
            # Captured and paid out; a settlement for less than the hold releases the rest.
            accounted = (job.captured or 0) + (job.released or 0)
            if job.captures != 1 or job.releases > 1 or job.payouts != job.captured or accounted != job.price_micro:
                problems.append(
                    f"settled job {job.id}: {job.captures} captures of {job.captured}, {job.releases} releases, "
                    f"payouts {job.payouts}, hold {job.price_micro}"
                )
        if job.state in (JobState.FAILED, JobState.EXPIRED) and (job.releases != 1 or job.captures):
            problems.append(f"{job.state} job {job.id}: {job.releases} releases, {job.captures} captures")
        if job.state not in (JobState.SETTLED, JobState.FAILED, JobState.EXPIRED) and (job.captures or job.releases):
            problems.append(f"open job {job.id} ({job.state}) already has captures or releases")
    return problems

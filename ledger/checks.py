"""The ledger's invariants, checked in full: used by `manage.py ledger_check`, by Celery beat
(`ledger_check_record`, whose last outcome /metrics reports) and after every ledger test.
Returns the violations found (empty when the books are sound).

Each priced job's hold must end exactly once, the way its job ended. The ledger knows jobs
only by id, so the registry tells it how its jobs ended through `job_outcomes_register`."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal, TypedDict

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, Sum

from .models import (
    Account,
    AccountKind,
    PendingDelta,
    SettlementBatch,
    Transfer,
    TransferKind,
    Withdrawal,
    WithdrawalState,
)
from .withdrawals import merkle_root

# How a priced job ended, as far as its hold is concerned.
JobOutcome = Literal["open", "settled", "ended"]
JobOutcomes = Callable[[], Iterable[tuple[object, int, JobOutcome]]]

_job_outcomes: JobOutcomes | None = None

log = logging.getLogger("bim.ledger.checks")


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

    problems.extend(_withdrawal_violations())
    problems.extend(_batch_violations())
    if _job_outcomes is not None:
        problems.extend(_job_hold_violations(_job_outcomes()))
    return problems


def _withdrawal_violations() -> list[str]:
    """An approved withdrawal has exactly one transfer, of kind withdrawal, of its amount,
    from its node's earnings to the external account, and not reversed; a pending or
    rejected one has none and is in no batch. Every withdrawal transfer belongs to a
    withdrawal. Otherwise the balances can add up while a batch pays out money that never
    left the earnings, or pays it twice."""
    problems = []
    claimed: set[int] = set()
    for withdrawal in Withdrawal.objects.select_related("transfer__debit", "transfer__credit", "transfer__reversed_by"):
        transfer = withdrawal.transfer
        label = f"withdrawal {withdrawal.pk} ({withdrawal.state})"
        if transfer is not None:
            claimed.add(transfer.pk)
        if withdrawal.state != WithdrawalState.APPROVED:
            if transfer is not None:
                problems.append(f"{label} has transfer {transfer.pk}")
            if withdrawal.batch_id is not None:
                problems.append(f"{label} is in batch {withdrawal.batch_id}")
            continue
        if transfer is None:
            problems.append(f"{label} has no transfer")
            continue
        debit, credit = transfer.debit, transfer.credit
        if (
            transfer.kind != TransferKind.WITHDRAWAL
            or transfer.amount != withdrawal.amount
            or (debit.kind, debit.node_id) != (AccountKind.NODE_EARNINGS, withdrawal.node_id)
            or credit.kind != AccountKind.EXTERNAL
        ):
            problems.append(
                f"{label} of {withdrawal.amount} from node {withdrawal.node_id} has transfer {transfer.pk}: "
                f"{transfer.kind} of {transfer.amount} from {debit} to {credit}"
            )
        if hasattr(transfer, "reversed_by"):
            problems.append(f"{label}: its transfer {transfer.pk} was reversed by {transfer.reversed_by.pk}")
    strays = Transfer.objects.filter(kind=TransferKind.WITHDRAWAL).exclude(pk__in=claimed).values_list("pk", flat=True)
    problems.extend(f"withdrawal transfer {pk} belongs to no withdrawal" for pk in strays)
    return problems


def _batch_violations() -> list[str]:
    """Each exported line (`node_id,owner,destination,amount`) is the sum of the batch's
    withdrawals of that node to that destination, and the batch's count, total and Merkle
    root are those of its lines."""
    in_batch: dict[tuple[int, tuple[str, str]], int] = defaultdict(int)
    rows = Withdrawal.objects.filter(batch__isnull=False).values_list("batch_id", "node_id", "destination", "amount")
    for batch_id, node_id, destination, amount in rows:
        in_batch[(batch_id, (str(node_id), destination))] += amount
    problems = []
    for batch in SettlementBatch.objects.order_by("pk"):
        lines = batch.lines.splitlines()
        exported: dict[tuple[str, str], int] = defaultdict(int)
        for line in lines:
            fields = line.split(",")
            if len(fields) != 4 or not fields[3].isdigit():
                problems.append(f"batch {batch.pk} has a malformed line {line!r}")
                continue
            exported[(fields[0], fields[2])] += int(fields[3])
        withdrawn = {node: total for (batch_id, node), total in in_batch.items() if batch_id == batch.pk}
        if exported != withdrawn:
            problems.append(f"batch {batch.pk} exports {dict(exported)}, its withdrawals sum to {withdrawn}")
        if (batch.line_count, batch.total) != (len(lines), sum(exported.values())):
            problems.append(
                f"batch {batch.pk} records {batch.line_count} lines of {batch.total}, "
                f"holds {len(lines)} of {sum(exported.values())}"
            )
        if batch.merkle_root != merkle_root([line.encode() for line in lines]):
            problems.append(f"batch {batch.pk}: its Merkle root is not that of its lines")
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


# The last full check's outcome, for /metrics: a scrape must not rescan the books. In the
# shared cache (Redis), so the worker whose beat ran the check and every daphne scraped
# report the same; lost with the cache, it is back at the next check (and an alert on its
# age or absence says when checks stop).
LAST_CHECK_KEY = "ledger:last-check"


class CheckRecord(TypedDict):
    checked_at: float  # Unix time
    violations: int


def ledger_check_record() -> list[str]:
    """Check the whole ledger on one snapshot, log each violation and remember the outcome."""
    with _snapshot():
        problems = ledger_violations()
    for problem in problems:
        log.error("ledger invariant violated: %s", problem)
    record: CheckRecord = {"checked_at": time.time(), "violations": len(problems)}
    cache.set(LAST_CHECK_KEY, record, timeout=None)
    return problems


@contextmanager
def _snapshot() -> Iterator[None]:
    """One transaction that sees one state of the books: the check's queries run one after
    another while settlements commit, and at PostgreSQL's default READ COMMITTED a transfer
    landing between two of them reads as a violation that is not there. Inside a caller's
    transaction (a test's) the snapshot is the caller's: SET TRANSACTION must come first."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield

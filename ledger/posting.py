"""The posting engine: every balance change is a posting of one or more legs, each an
immutable transfer, written by `post_legs` inside one transaction:
- idempotent: each leg has a unique key; a posting whose keys exist returns the first
  transfers when the fields match and raises IdempotencyConflict when they don't;
- user and node accounts are locked in primary-key order (no deadlocks) and checked
  for overdraft, then updated by one statement;
- append-only system accounts get PendingDelta rows instead: never locked, so the
  registry's revenue is no hot row (see models.py);
- a leg may be capped: it shrinks to what its credit account may still take, read under
  the lock (a node's escrow fills up to its requirement), and is dropped when nothing fits.
On PostgreSQL the whole posting is one call of the `bim_ledger_post` function (migration
0006); elsewhere (SQLite) the same steps run through the ORM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Case, F, Q, Value, When

from .accounts import accounts_lock
from .errors import HoldEnded, IdempotencyConflict, InsufficientFunds, LedgerError
from .models import (
    Account,
    PendingDelta,
    Transfer,
    TransferKind,
)


@dataclass(frozen=True)
class Leg:
    debit: Account
    credit: Account
    amount: int
    kind: str
    key: str
    job_id: object | None = None
    reason: str = ""
    reverses_id: int | None = None
    # The most the credit account may hold after this leg (balances read under the lock).
    cap: int | None = None


def post_legs(
    legs: Sequence[Leg], *, locked: dict[int, Account] | None = None, replay: bool = False
) -> list[Transfer] | None:
    """Write `legs` as one atomic posting (see module docstring) and return its transfers
    (a capped leg that was dropped has none). `locked` passes accounts the caller already
    holds locks on. When the posting's keys exist, the first transfers are returned,
    checked field by field; with `replay` the caller gets None and looks them up itself
    (a settlement is the same settlement however its retry computes the escrow share).
    Capped legs need `replay`: their amount depends on balances, so a retry's fields may
    differ from the first posting's."""
    for leg in legs:
        if type(leg.amount) is not int or leg.amount <= 0:  # bool is an int subclass; refuse it
            raise LedgerError(f"amount must be a positive integer, got {leg.amount!r}")
        if leg.debit.pk == leg.credit.pk:
            raise LedgerError("debit and credit accounts are the same")
        if leg.cap is not None and (leg.credit.append_only or not replay):
            raise LedgerError("a capped leg credits a user or node account, in a replayed posting")
    db = connections[DEFAULT_DB_ALIAS]  # looked up once: each `connection.x` is a lookup of its own
    if settings.LEDGER_POST_IN_DATABASE and db.vendor == "postgresql":
        return _post_in_database(db, legs, replay)
    with transaction.atomic():
        lockable = {a.pk for leg in legs for a in (leg.debit, leg.credit) if not a.append_only}
        accounts = dict(locked or {})
        accounts.update(accounts_lock(lockable - accounts.keys()))
        # Checked after the locks: a concurrent twin with these keys has committed by now.
        existing = {t.idempotency_key: t for t in Transfer.objects.filter(idempotency_key__in=[leg.key for leg in legs])}
        if existing:
            return None if replay else [_same_or_conflict(existing.get(leg.key), leg) for leg in legs]
        legs = [
            leg if leg.cap is None else replace(leg, amount=min(leg.amount, leg.cap - accounts[leg.credit.pk].balance))
            for leg in legs
        ]
        legs = [leg for leg in legs if leg.amount > 0]
        change: dict[int, int] = defaultdict(int)
        for leg in legs:
            change[leg.debit.pk] -= leg.amount
            change[leg.credit.pk] += leg.amount
        if _hold_already_ended(legs):
            raise HoldEnded("the job's hold was already captured or released")
        for pk in lockable:
            if accounts[pk].balance + change[pk] < 0:
                raise InsufficientFunds(accounts[pk], -change[pk])
        try:
            with transaction.atomic():
                transfers = Transfer.objects.bulk_create(
                    Transfer(
                        idempotency_key=leg.key,
                        debit_id=leg.debit.pk,
                        credit_id=leg.credit.pk,
                        amount=leg.amount,
                        kind=leg.kind,
                        job_id=leg.job_id,
                        reason=leg.reason[:300],
                        reverses_id=leg.reverses_id,
                    )
                    for leg in legs
                )
        except IntegrityError:
            # Lost a race on a key against a posting on other accounts.
            raise IdempotencyConflict(f"idempotency keys {[leg.key for leg in legs]} already used") from None
        updates = {pk: delta for pk, delta in change.items() if pk in lockable and delta}
        if updates:
            Account.objects.filter(pk__in=updates).update(
                balance=F("balance") + Case(*(When(pk=pk, then=Value(d)) for pk, d in updates.items()))
            )
            for pk, delta in updates.items():
                accounts[pk].balance += delta
        PendingDelta.objects.bulk_create(
            PendingDelta(account_id=pk, amount=delta) for pk, delta in change.items() if pk not in lockable and delta
        )
        return transfers


_ENDS_HOLD = {TransferKind.CAPTURE: TransferKind.RELEASE, TransferKind.RELEASE: TransferKind.CAPTURE}


def _hold_already_ended(legs: Sequence[Leg]) -> bool:
    """A job's hold ends once: a capture after a release (or the reverse) is refused."""
    match = Q(pk__in=[])
    for leg in legs:
        if leg.kind in _ENDS_HOLD and leg.job_id is not None:
            match |= Q(job_id=leg.job_id, kind=_ENDS_HOLD[leg.kind])
    return Transfer.objects.filter(match).exists()


# %b: binary parameters, cheaper to dump than text arrays (no quoting of each element).
_POST_SQL = (
    "SELECT * FROM bim_ledger_post(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[], %b::text[],"
    " %b::uuid[], %b::text[], %b::bigint[], %b::bigint[])"
)


def _bound_cursor(db: BaseDatabaseWrapper) -> CursorWrapper:
    """A Django cursor that sends parameters apart from the SQL text (server-side binding).
    Django's default inlines them as literals: quoting each array element cost the client
    more than the rest of the posting, and parsing the literals cost the server about as
    much again (bench/ledger.py)."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    db.ensure_connection()
    db.validate_thread_sharing()
    cursor = ServerBindingCursor(db.connection)
    return db.make_debug_cursor(cursor) if db.queries_logged else db.make_cursor(cursor)


def _post_in_database(db: BaseDatabaseWrapper, legs: Sequence[Leg], replay: bool) -> list[Transfer] | None:
    """The same posting as the ORM path in one round trip: the `bim_ledger_post` function
    (migration 0006) locks, checks keys, the hold and overdraft, applies caps, and writes,
    inside PostgreSQL. It reads which accounts are append-only from their rows."""
    keys = [leg.key for leg in legs]
    reasons = [leg.reason[:300] for leg in legs]
    reverses = [leg.reverses_id for leg in legs]
    caps = [leg.cap for leg in legs]
    params = [
        keys,
        [leg.debit.pk for leg in legs],
        [leg.credit.pk for leg in legs],
        [leg.amount for leg in legs],
        [leg.kind for leg in legs],
        [leg.job_id for leg in legs],
        reasons,
        # A column of NULLs goes as one NULL (its elements read as NULL): cheaper to send.
        reverses if any(r is not None for r in reverses) else None,
        caps if any(c is not None for c in caps) else None,
    ]
    try:
        with _bound_cursor(db) as cursor:
            cursor.execute(_POST_SQL, params)
            status, ids, amounts, posted_at, short_account, short_balance, short_needed = cursor.fetchone()
    except IntegrityError:
        # Lost a race on a key against a posting on other accounts.
        raise IdempotencyConflict(f"idempotency keys {keys} already used") from None
    if status == "created":
        transfers, next_id = [], iter(ids).__next__
        for leg, amount, reason in zip(legs, amounts, reasons):
            if amount:  # 0: a capped leg with nothing left to take
                # In Transfer's field order: from_db skips the keyword handling of Model.__init__.
                values = (next_id(), leg.key, leg.debit.pk, leg.credit.pk, amount, leg.kind, leg.job_id, reason)
                transfers.append(Transfer.from_db(db.alias, None, (*values, leg.reverses_id, posted_at)))
        return transfers
    if status == "existing":
        if replay:
            return None
        existing = {t.idempotency_key: t for t in Transfer.objects.filter(idempotency_key__in=keys)}
        return [_same_or_conflict(existing.get(leg.key), leg) for leg in legs]
    if status == "hold_ended":
        raise HoldEnded("the job's hold was already captured or released")
    account = next(a for leg in legs for a in (leg.debit, leg.credit) if a.pk == short_account)
    account.balance = short_balance
    raise InsufficientFunds(account, short_needed)


def _same_or_conflict(existing: Transfer | None, leg: Leg) -> Transfer:
    same = existing is not None and (
        existing.debit_id == leg.debit.pk
        and existing.credit_id == leg.credit.pk
        and existing.amount == leg.amount
        and existing.kind == leg.kind
        and str(existing.job_id) == str(leg.job_id)
    )
    if not same:
        raise IdempotencyConflict(f"idempotency key {leg.key!r} was used for another transfer")
    return existing


def transfer_create(
    *,
    debit: Account,
    credit: Account,
    amount: int,
    kind: str,
    idempotency_key: str,
    job_id: object | None = None,
    reason: str = "",
) -> Transfer:
    """Move `amount` from `debit` to `credit`. A repeat with the same key and the same
    fields returns the first transfer; with different fields it raises IdempotencyConflict."""
    leg = Leg(debit=debit, credit=credit, amount=amount, kind=kind, key=idempotency_key, job_id=job_id, reason=reason)
    return post_legs([leg])[0]

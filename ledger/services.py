"""Writes to the ledger.

Every balance change is a posting of one or more legs, each an immutable transfer,
written by `_post` inside one transaction:
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

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Case, F, Q, Sum, Value, When
from django.utils import timezone

from .models import (
    Account,
    AccountKind,
    PendingDelta,
    SettlementBatch,
    Slash,
    Transfer,
    TransferKind,
    Withdrawal,
    WithdrawalState,
)

SYSTEM_KINDS = frozenset({AccountKind.EXTERNAL, AccountKind.REGISTRY_REVENUE, AccountKind.CLEARING})


class LedgerError(Exception):
    pass


class InsufficientFunds(LedgerError):
    def __init__(self, account: Account, needed: int) -> None:
        super().__init__(f"{account} holds {account.balance} micro-credits, {needed} needed")
        self.account = account
        self.needed = needed


class IdempotencyConflict(LedgerError):
    """The key was used before for a different transfer."""


class HoldEnded(LedgerError):
    """The job's hold was already captured (settled) or released (failed, expired)."""


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


@dataclass(frozen=True)
class Split:
    node_a: int
    node_b: int
    registry: int


def split_amount(total: int, split_bp: tuple[int, int, int]) -> Split:
    """Nodes get their floor share; the registry gets its share plus the rounding remainder,
    so the parts always add up to `total` exactly."""
    a_bp, b_bp, r_bp = split_bp
    if a_bp + b_bp + r_bp != 10_000 or min(split_bp) < 0:
        raise ValueError(f"split {split_bp} does not sum to 10000 basis points")
    node_a = total * a_bp // 10_000
    node_b = total * b_bp // 10_000
    return Split(node_a=node_a, node_b=node_b, registry=total - node_a - node_b)


# ---------------------------------------------------------------- accounts


def account_get(kind: str, *, user: AbstractBaseUser | None = None, node_id: object | None = None) -> Account:
    """The one account of a kind for a user, a node or the system (made on first use),
    read fresh: its stored balance is current."""
    found = _account(kind, user_id=user.pk if user is not None else None, node_id=node_id)
    return Account.objects.get(pk=found.pk)


# (kind, user_id, node_id) -> account, for identity only (pk, append_only): accounts are
# never deleted, and every balance check re-reads the row under its lock.
_account_cache: dict[tuple[str, object, object], Account] = {}


def account_cache_clear() -> None:
    """Forget cached account identities (tests start each database over)."""
    _account_cache.clear()


def accounts_get(specs: Sequence[tuple[str, object | None, object | None]]) -> list[Account]:
    """Several accounts, given as (kind, user_id, node_id), from the cache or in one query;
    made on first use. Their `balance` is not current: read it under a lock."""
    keys = [
        (kind, None if node_id is not None else user_id, str(node_id) if node_id is not None else None)
        for kind, user_id, node_id in specs
    ]
    found = {key: _account_cache[key] for key in keys if key in _account_cache}
    missing = [key for key in keys if key not in found]
    if missing:
        match = Q(pk__in=[])
        for kind, user_id, node_id in missing:
            match |= Q(kind=kind, user_id=user_id, node_id=node_id)
        for account in Account.objects.filter(match):
            found[(account.kind, account.user_id, str(account.node_id) if account.node_id else None)] = account
        for kind, user_id, node_id in missing:
            if (kind, user_id, node_id) not in found:
                found[(kind, user_id, node_id)], _ = Account.objects.get_or_create(
                    kind=kind, user_id=user_id, node_id=node_id, defaults={"append_only": kind in SYSTEM_KINDS}
                )
        # Cached once committed: a row made (or first seen) in a transaction that rolls
        # back must not outlive it.
        fresh = {key: found[key] for key in missing}
        transaction.on_commit(lambda: _account_cache.update(fresh))
    return [found[key] for key in keys]


def _account(kind: str, *, user_id: object | None = None, node_id: object | None = None) -> Account:
    return accounts_get([(kind, user_id, node_id)])[0]


def account_balance(account: Account) -> int:
    """The balance including legs not yet rolled up."""
    pending = PendingDelta.objects.filter(account=account).aggregate(s=Sum("amount"))["s"] or 0
    return Account.objects.values_list("balance", flat=True).get(pk=account.pk) + pending


def _lock(ids: Iterable[int]) -> dict[int, Account]:
    """Lock accounts in primary-key order (two postings touching the same accounts never
    deadlock) and read their balances under the lock."""
    wanted = sorted(set(ids))
    if connection.vendor != "postgresql":
        return {a.pk: a for a in Account.objects.select_for_update().filter(pk__in=wanted).order_by("pk")}
    # On the settlement hot path the ORM's query building costs more than the query.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, balance, append_only FROM ledger_account WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [wanted]
        )
        return {pk: Account(id=pk, balance=balance, append_only=append_only) for pk, balance, append_only in cursor}


# ---------------------------------------------------------------- posting


def _post(
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
        accounts.update(_lock(lockable - accounts.keys()))
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
    return _post([leg])[0]


def transfer_reverse(*, transfer: Transfer, reason: str, operator: AbstractBaseUser | None = None) -> Transfer:
    """Undo a transfer with a new one in the opposite direction (transfers are never edited)."""
    if transfer.reverses_id is not None:
        raise LedgerError("a reversal is not reversed; post a new adjustment instead")
    if transfer.kind in (TransferKind.CAPTURE, TransferKind.PAYOUT):
        # Half a settlement undone would strand value in clearing: a settled job is
        # corrected by a refund (escrow_slash) or an adjustment, never leg by leg.
        raise LedgerError("settlement legs are not reversed one by one; refund or adjust instead")
    who = f" by {operator}" if operator is not None else ""
    leg = Leg(
        debit=transfer.credit,
        credit=transfer.debit,
        amount=transfer.amount,
        kind=TransferKind.ADJUSTMENT,
        key=f"reverse:{transfer.pk}",
        job_id=transfer.job_id,
        reason=f"reverses transfer {transfer.pk}{who}: {reason}",
        reverses_id=transfer.pk,
    )
    return _post([leg])[0]


def adjustment_create(
    *, debit: Account, credit: Account, amount: int, reason: str, idempotency_key: str, operator: AbstractBaseUser
) -> Transfer:
    """A manual correction by an operator; it carries its reason and can be reversed."""
    if not reason.strip():
        raise LedgerError("an adjustment needs a reason")
    return transfer_create(
        debit=debit,
        credit=credit,
        amount=amount,
        kind=TransferKind.ADJUSTMENT,
        idempotency_key=f"adjustment:{idempotency_key}",
        reason=f"{operator}: {reason}",
    )


# ---------------------------------------------------------------- users and jobs


def credits_top_up(*, user: AbstractBaseUser, amount: int, idempotency_key: str, reason: str = "top-up") -> Transfer:
    return transfer_create(
        debit=_account(AccountKind.EXTERNAL),
        credit=_account(AccountKind.USER_CREDITS, user_id=user.pk),
        amount=amount,
        kind=TransferKind.TOP_UP,
        idempotency_key=f"top_up:{idempotency_key}",
        reason=reason,
    )


def job_hold(*, job_id: object, user: AbstractBaseUser, amount: int) -> Transfer:
    """Reserve the job's price from the user's credits; InsufficientFunds when short."""
    credits, hold = accounts_get([(AccountKind.USER_CREDITS, user.pk, None), (AccountKind.USER_HOLD, user.pk, None)])
    return transfer_create(
        debit=credits,
        credit=hold,
        amount=amount,
        kind=TransferKind.HOLD,
        idempotency_key=f"job:{job_id}:hold",
        job_id=job_id,
        reason="hold on submit",
    )


def job_release(*, job_id: object, user: AbstractBaseUser, amount: int, reason: str) -> Transfer:
    """Give a failed or expired job's hold back in full."""
    return transfer_create(
        debit=_account(AccountKind.USER_HOLD, user_id=user.pk),
        credit=_account(AccountKind.USER_CREDITS, user_id=user.pk),
        amount=amount,
        kind=TransferKind.RELEASE,
        idempotency_key=f"job:{job_id}:release",
        job_id=job_id,
        reason=reason,
    )


@dataclass(frozen=True)
class NodeEscrowRule:
    share_bp: int
    required: int


def job_settle(
    *,
    job_id: object,
    user: AbstractBaseUser,
    amount: int,
    node_ids: Sequence[object],
    split_bp: tuple[int, int, int],
    escrow: NodeEscrowRule,
    held: int | None = None,
) -> list[Transfer]:
    """Capture `amount` of the job's hold and pay it out in one posting: the agreeing nodes
    (after a tie-break, the majority pair; the minority gets nothing; one node for a solo
    job, whose split gives node B nothing), the registry (remainder included), and each
    node's escrow share until its escrow reaches the requirement. When `held` is more than
    `amount`, the rest of the hold is released in the same posting. Safe to call twice:
    the second call returns the first call's transfers."""
    if not 1 <= len(node_ids) <= 2 or (len(node_ids) == 1 and split_bp[1]):
        raise LedgerError("one or two nodes are paid, and a single node's split gives node B nothing")
    split = split_amount(amount, split_bp)
    hold, clearing, registry, credits, *node_accounts = accounts_get(
        [
            (AccountKind.USER_HOLD, user.pk, None),
            (AccountKind.CLEARING, None, None),
            (AccountKind.REGISTRY_REVENUE, None, None),
            (AccountKind.USER_CREDITS, user.pk, None),
            *((AccountKind.NODE_EARNINGS, None, node) for node in node_ids),
            *((AccountKind.NODE_ESCROW, None, node) for node in node_ids),
        ]
    )
    earnings, escrows = node_accounts[: len(node_ids)], node_accounts[len(node_ids) :]
    legs = [Leg(hold, clearing, amount, TransferKind.CAPTURE, f"job:{job_id}:capture", job_id, "capture on settle")]
    if held is not None and held > amount:
        legs.append(Leg(hold, credits, held - amount, TransferKind.RELEASE, f"job:{job_id}:release", job_id, "rest of the hold"))
    if split.registry:
        legs.append(Leg(clearing, registry, split.registry, TransferKind.PAYOUT, f"job:{job_id}:payout:registry", job_id, "registry share"))
    for role, share, earned, escrowed in zip("AB", (split.node_a, split.node_b), earnings, escrows):
        if not share:
            continue
        legs.append(Leg(clearing, earned, share, TransferKind.PAYOUT, f"job:{job_id}:payout:{role}", job_id, f"node {role} share"))
        to_escrow = share * escrow.share_bp // 10_000
        if to_escrow > 0:
            # Up to the requirement: the posting reads the escrow's balance under its lock.
            key = f"job:{job_id}:escrow:{role}"
            legs.append(Leg(earned, escrowed, to_escrow, TransferKind.ESCROW, key, job_id, "escrow from earnings", cap=escrow.required))
    posted = _post(legs, replay=True)
    if posted is None:  # settled before: the first settlement's transfers, all of them
        posted = list(
            Transfer.objects.filter(
                job_id=job_id,
                kind__in=[TransferKind.CAPTURE, TransferKind.PAYOUT, TransferKind.ESCROW, TransferKind.RELEASE],
            ).order_by("pk")
        )
    return posted


# ---------------------------------------------------------------- fraud


def escrow_slash(
    *,
    node_id: object,
    job_id: object,
    assignment_id: object,
    job_user: AbstractBaseUser,
    job_price: int,
    reason: str,
    fraction_bp: int = 10_000,
) -> Slash:
    """On proven fraud take `fraction_bp` of the node's escrow to the registry and refund
    the affected job's user from registry revenue. One slash per assignment (its evidence)."""
    if not 0 < fraction_bp <= 10_000:
        raise LedgerError("fraction_bp must be in (0, 10000]")
    if not reason.strip():
        raise LedgerError("a slash names its evidence")
    escrow_account = _account(AccountKind.NODE_ESCROW, node_id=node_id)
    registry = _account(AccountKind.REGISTRY_REVENUE)
    with transaction.atomic():
        locked = _lock([escrow_account.pk])
        slash = Slash.objects.filter(assignment_id=assignment_id).first()
        if slash is not None:
            return slash
        slash = Slash(node_id=node_id, job_id=job_id, assignment_id=assignment_id, reason=reason[:300], fraction_bp=fraction_bp)
        taken = locked[escrow_account.pk].balance * fraction_bp // 10_000
        evidence = f"job {job_id}, assignment {assignment_id}: {reason}"
        if taken:
            slash.transfer = _post(
                [Leg(escrow_account, registry, taken, TransferKind.SLASH, f"slash:{assignment_id}", job_id, evidence)],
                locked=locked,
            )[0]
        captured = Transfer.objects.filter(job_id=job_id, kind=TransferKind.CAPTURE).exists()
        refunded = Transfer.objects.filter(job_id=job_id, kind=TransferKind.REFUND).exists()
        if captured and not refunded and job_price:
            slash.refund = transfer_create(
                debit=registry,
                credit=_account(AccountKind.USER_CREDITS, user_id=job_user.pk),
                amount=job_price,
                kind=TransferKind.REFUND,
                idempotency_key=f"job:{job_id}:refund",
                job_id=job_id,
                reason=f"refund after fraud: {evidence}",
            )
        slash.save()
        return slash


# ---------------------------------------------------------------- withdrawals and batches


def withdrawal_request(*, node: object, user: AbstractBaseUser, amount: int) -> Withdrawal:
    """A node owner asks to withdraw earnings; pending requests count against the balance."""
    if node.owner_id != user.pk:
        raise LedgerError("only the node's owner may withdraw its earnings")
    minimum = settings.LEDGER_MIN_WITHDRAWAL_MICRO
    if type(amount) is not int or amount < minimum:
        raise LedgerError(f"withdrawals start at {minimum} micro-credits")
    earnings = _account(AccountKind.NODE_EARNINGS, node_id=node.pk)
    with transaction.atomic():
        balance = _lock([earnings.pk])[earnings.pk].balance
        pending = (
            Withdrawal.objects.filter(node=node, state=WithdrawalState.PENDING).aggregate(s=Sum("amount"))["s"] or 0
        )
        if balance - pending < amount:
            raise InsufficientFunds(earnings, amount + pending)
        return Withdrawal.objects.create(node=node, requested_by=user, amount=amount)


def withdrawal_decide(*, withdrawal_id: int, approve: bool, operator: AbstractBaseUser, reason: str = "") -> Withdrawal:
    """An operator approves (earnings leave to the external account) or rejects a request."""
    with transaction.atomic():
        withdrawal = Withdrawal.objects.select_for_update().get(pk=withdrawal_id)
        if withdrawal.state != WithdrawalState.PENDING:
            return withdrawal
        if approve:
            withdrawal.transfer = transfer_create(
                debit=_account(AccountKind.NODE_EARNINGS, node_id=withdrawal.node_id),
                credit=_account(AccountKind.EXTERNAL),
                amount=withdrawal.amount,
                kind=TransferKind.WITHDRAWAL,
                idempotency_key=f"withdrawal:{withdrawal.pk}",
                reason=f"approved by {operator}",
            )
        withdrawal.state = WithdrawalState.APPROVED if approve else WithdrawalState.REJECTED
        withdrawal.decided_at = timezone.now()
        withdrawal.decided_by = operator
        withdrawal.decision_reason = reason[:300]
        withdrawal.save()
        return withdrawal


def merkle_root(lines: Sequence[bytes]) -> str:
    """SHA-256 Merkle root: leaves are sha256(line); an odd level repeats its last node."""
    level = [hashlib.sha256(line).digest() for line in lines]
    if not level:
        return hashlib.sha256(b"").hexdigest()
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0].hex()


def settlement_batch_create() -> SettlementBatch | None:
    """Batch every approved, not yet batched withdrawal into net payout lines per node."""
    with transaction.atomic():
        withdrawals = list(
            Withdrawal.objects.select_for_update()
            .filter(state=WithdrawalState.APPROVED, batch__isnull=True)
            .select_related("node__owner")
            .order_by("pk")
        )
        if not withdrawals:
            return None
        net: dict[tuple[str, str], int] = defaultdict(int)
        for withdrawal in withdrawals:
            net[(str(withdrawal.node_id), withdrawal.node.owner.get_username())] += withdrawal.amount
        lines = [f"{node_id},{owner},{amount}" for (node_id, owner), amount in sorted(net.items())]
        batch = SettlementBatch.objects.create(
            merkle_root=merkle_root([line.encode() for line in lines]),
            line_count=len(lines),
            total=sum(net.values()),
            lines="\n".join(lines) + "\n",
        )
        Withdrawal.objects.filter(pk__in=[w.pk for w in withdrawals]).update(batch=batch)
        return batch


# ---------------------------------------------------------------- roll-up


def pending_rollup(*, limit: int = 10_000) -> int:
    """Fold append-only accounts' pending legs into their stored balances. The rows added
    are deleted in the same transaction, so no leg is counted twice or lost."""
    folded = 0
    for account_id in PendingDelta.objects.values_list("account_id", flat=True).distinct():
        with transaction.atomic():
            # NO KEY UPDATE: postings that reference the account (FK checks) need not wait.
            Account.objects.select_for_update(no_key=True).filter(pk=account_id).first()
            rows = list(
                PendingDelta.objects.select_for_update(skip_locked=True)
                .filter(account_id=account_id)
                .order_by("pk")
                .values_list("pk", "amount")[:limit]
            )
            if not rows:
                continue
            PendingDelta.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
            Account.objects.filter(pk=account_id).update(balance=F("balance") + sum(a for _, a in rows))
            folded += len(rows)
    return folded


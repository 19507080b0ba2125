"""Writes to the ledger. Every balance change is `transfer_create`: one balanced,
idempotent, immutable transfer inside one transaction, with both account rows
locked in primary-key order so concurrent transfers cannot deadlock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F

from .models import Account, AccountKind, Transfer, TransferKind


class LedgerError(Exception):
    pass


class InsufficientFunds(LedgerError):
    def __init__(self, account: Account, needed: int) -> None:
        super().__init__(f"{account} holds {account.balance} micro-credits, {needed} needed")
        self.account = account
        self.needed = needed


class IdempotencyConflict(LedgerError):
    """The key was used before for a different transfer."""


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


def account_get(
    kind: str, *, user: AbstractBaseUser | None = None, node_id: object | None = None
) -> Account:
    """The one account of a kind for a user, a node or the system; made on first use."""
    account, _ = Account.objects.get_or_create(
        kind=kind,
        user=user if node_id is None else None,
        node_id=node_id,
        defaults={"allow_negative": kind == AccountKind.EXTERNAL},
    )
    return account


def _lock_accounts(ids: Sequence[int]) -> dict[int, Account]:
    # Fixed (primary-key) order: two transfers touching the same pair never deadlock.
    return {a.pk: a for a in Account.objects.select_for_update().filter(pk__in=ids).order_by("pk")}


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
    if type(amount) is not int or amount <= 0:  # bool is an int subclass; refuse it
        raise LedgerError(f"amount must be a positive integer, got {amount!r}")
    if debit.pk == credit.pk:
        raise LedgerError("debit and credit accounts are the same")
    with transaction.atomic():
        locked = _lock_accounts([debit.pk, credit.pk])
        # Checked after the lock: a concurrent twin with this key has committed by now.
        existing = Transfer.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return _same_or_conflict(existing, debit, credit, amount, kind, job_id)
        source = locked[debit.pk]
        if not source.allow_negative and source.balance < amount:
            raise InsufficientFunds(source, amount)
        Account.objects.filter(pk=debit.pk).update(balance=F("balance") - amount)
        Account.objects.filter(pk=credit.pk).update(balance=F("balance") + amount)
        try:
            with transaction.atomic():
                return Transfer.objects.create(
                    idempotency_key=idempotency_key,
                    debit_id=debit.pk,
                    credit_id=credit.pk,
                    amount=amount,
                    kind=kind,
                    job_id=job_id,
                    reason=reason,
                )
        except IntegrityError:
            # Lost a race on the key against a transfer between other accounts.
            raise IdempotencyConflict(f"idempotency key {idempotency_key!r} already used") from None


def _same_or_conflict(
    existing: Transfer, debit: Account, credit: Account, amount: int, kind: str, job_id: object
) -> Transfer:
    same = (
        existing.debit_id == debit.pk
        and existing.credit_id == credit.pk
        and existing.amount == amount
        and existing.kind == kind
        and str(existing.job_id) == str(job_id)
    )
    if not same:
        raise IdempotencyConflict(
            f"idempotency key {existing.idempotency_key!r} was used for another transfer"
        )
    return existing


def credits_top_up(
    *, user: AbstractBaseUser, amount: int, idempotency_key: str, reason: str = "top-up"
) -> Transfer:
    return transfer_create(
        debit=account_get(AccountKind.EXTERNAL),
        credit=account_get(AccountKind.USER_CREDITS, user=user),
        amount=amount,
        kind=TransferKind.TOP_UP,
        idempotency_key=f"top_up:{idempotency_key}",
        reason=reason,
    )


def job_hold(*, job_id: object, user: AbstractBaseUser, amount: int) -> Transfer:
    """Reserve the job's price from the user's credits; InsufficientFunds when short."""
    return transfer_create(
        debit=account_get(AccountKind.USER_CREDITS, user=user),
        credit=account_get(AccountKind.USER_HOLD, user=user),
        amount=amount,
        kind=TransferKind.HOLD,
        idempotency_key=f"job:{job_id}:hold",
        job_id=job_id,
        reason="hold on submit",
    )


def job_release(*, job_id: object, user: AbstractBaseUser, amount: int, reason: str) -> Transfer:
    """Give a failed or expired job's hold back in full."""
    return transfer_create(
        debit=account_get(AccountKind.USER_HOLD, user=user),
        credit=account_get(AccountKind.USER_CREDITS, user=user),
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
    node_ids: tuple[object, object],
    split_bp: tuple[int, int, int],
    escrow: NodeEscrowRule,
) -> list[Transfer]:
    """Capture the held price and pay it out: node A, node B, registry (remainder included).
    Part of each node payout goes to that node's escrow until the escrow reaches the rule's
    requirement. Safe to call twice: every transfer is keyed by job and role."""
    split = split_amount(amount, split_bp)
    clearing = account_get(AccountKind.CLEARING)
    transfers = [
        transfer_create(
            debit=account_get(AccountKind.USER_HOLD, user=user),
            credit=clearing,
            amount=amount,
            kind=TransferKind.CAPTURE,
            idempotency_key=f"job:{job_id}:capture",
            job_id=job_id,
            reason="capture on settle",
        )
    ]
    if split.registry:
        transfers.append(
            transfer_create(
                debit=clearing,
                credit=account_get(AccountKind.REGISTRY_REVENUE),
                amount=split.registry,
                kind=TransferKind.PAYOUT,
                idempotency_key=f"job:{job_id}:payout:registry",
                job_id=job_id,
                reason="registry share",
            )
        )
    for role, node_id, share in (("A", node_ids[0], split.node_a), ("B", node_ids[1], split.node_b)):
        if not share:
            continue
        earnings = account_get(AccountKind.NODE_EARNINGS, node_id=node_id)
        transfers.append(
            transfer_create(
                debit=clearing,
                credit=earnings,
                amount=share,
                kind=TransferKind.PAYOUT,
                idempotency_key=f"job:{job_id}:payout:{role}",
                job_id=job_id,
                reason=f"node {role} share",
            )
        )
        escrow_transfer = _escrow_from_payout(job_id, role, node_id, earnings, share, escrow)
        if escrow_transfer is not None:
            transfers.append(escrow_transfer)
    return transfers


def _escrow_from_payout(
    job_id: object, role: str, node_id: object, earnings: Account, share: int, rule: NodeEscrowRule
) -> Transfer | None:
    key = f"job:{job_id}:escrow:{role}"
    with transaction.atomic():
        # A retry must find the first escrow transfer, not recompute it from a balance
        # that transfer already raised.
        existing = Transfer.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return existing
        escrow_account = account_get(AccountKind.NODE_ESCROW, node_id=node_id)
        held = _lock_accounts([escrow_account.pk])[escrow_account.pk].balance
        amount = min(share * rule.share_bp // 10_000, rule.required - held)
        if amount <= 0:
            return None
        return transfer_create(
            debit=earnings,
            credit=escrow_account,
            amount=amount,
            kind=TransferKind.ESCROW,
            idempotency_key=key,
            job_id=job_id,
            reason="escrow from earnings",
        )

"""The ledger's use cases, each one posting: top-ups, job holds, releases and settlements
(the 40/40/20 split with escrow), operators' reversals and adjustments, slashing on
proven fraud, and the roll-up of append-only accounts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F

from bim_core.money import split_amount

from .accounts import account_for, accounts_get, accounts_lock
from .errors import LedgerError
from .models import (
    Account,
    AccountKind,
    PendingDelta,
    Slash,
    Transfer,
    TransferKind,
)
from .posting import Leg, post_legs, transfer_create


def transfer_reverse(*, transfer: Transfer, reason: str, operator: AbstractBaseUser | None = None) -> Transfer:
    """Undo a transfer with a new one in the opposite direction (transfers are never edited)."""
    if transfer.reverses_id is not None:
        raise LedgerError("a reversal is not reversed; post a new adjustment instead")
    if transfer.kind in (TransferKind.CAPTURE, TransferKind.PAYOUT):
        # Half a settlement undone would strand value in clearing: a settled job is
        # corrected by a refund (escrow_slash) or an adjustment, never leg by leg.
        raise LedgerError("settlement legs are not reversed one by one; refund or adjust instead")
    if transfer.kind == TransferKind.WITHDRAWAL:
        # Its withdrawal would stay approved and be exported (paid) again while the
        # earnings came back: a withdrawal changes state only through its own services.
        raise LedgerError("a withdrawal's transfer is not reversed as a plain transfer; its withdrawal stays approved")
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
    return post_legs([leg])[0]


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


def credits_top_up(*, user: AbstractBaseUser, amount: int, idempotency_key: str, reason: str = "top-up") -> Transfer:
    return transfer_create(
        debit=account_for(AccountKind.EXTERNAL),
        credit=account_for(AccountKind.USER_CREDITS, user_id=user.pk),
        amount=amount,
        kind=TransferKind.TOP_UP,
        idempotency_key=f"top_up:{idempotency_key}",
        reason=reason,
    )


def credits_grant(*, user: AbstractBaseUser, amount: int, idempotency_key: str, reason: str) -> Transfer:
    """Credits given, not bought (a trial grant, an operator's grant, a voucher): from the
    promotions account, so what the registry gave away is one balance. Idempotent by key."""
    if not reason.strip():
        raise LedgerError("a grant names its reason")
    return transfer_create(
        debit=account_for(AccountKind.PROMOTIONS),
        credit=account_for(AccountKind.USER_CREDITS, user_id=user.pk),
        amount=amount,
        kind=TransferKind.GRANT,
        idempotency_key=f"grant:{idempotency_key}",
        reason=reason,
    )


def job_hold(*, job_id: object, user: AbstractBaseUser, amount: int) -> Transfer:
    """Reserve the job's price from the user's credits; InsufficientFunds when short."""
    return jobs_hold(user=user, holds=[(job_id, amount)])[0]


def jobs_hold(*, user: AbstractBaseUser, holds: Sequence[tuple[object, int]]) -> list[Transfer]:
    """Reserve the prices of jobs submitted together, as (job id, price), in one posting:
    all held or, when the user's credits do not cover their sum, none (InsufficientFunds)."""
    credits, hold = accounts_get([(AccountKind.USER_CREDITS, user.pk, None), (AccountKind.USER_HOLD, user.pk, None)])
    legs = [
        Leg(credits, hold, amount, TransferKind.HOLD, f"job:{job_id}:hold", job_id, "hold on submit")
        for job_id, amount in holds
    ]
    return post_legs(legs) or []


def job_release(*, job_id: object, user: AbstractBaseUser, amount: int, reason: str) -> Transfer:
    """Give a failed or expired job's hold back in full."""
    return transfer_create(
        debit=account_for(AccountKind.USER_HOLD, user_id=user.pk),
        credit=account_for(AccountKind.USER_CREDITS, user_id=user.pk),
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
    surcharge: int = 0,
) -> list[Transfer]:
    """Capture `amount` of the job's hold and pay it out in one posting: the agreeing nodes
    (after a tie-break, the majority pair; the minority gets nothing; one node for a solo
    job, whose split gives node B nothing), the registry (remainder included), and each
    node's escrow share until its escrow reaches the requirement. When `held` is more than
    `amount`, the rest of the hold is released in the same posting. `surcharge` (a
    peer-to-peer job's relaying, which the registry pays for) is captured on top and paid to
    the registry whole. Safe to call twice: the second call returns the first call's transfers."""
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
    captured = amount + surcharge
    legs = [Leg(hold, clearing, captured, TransferKind.CAPTURE, f"job:{job_id}:capture", job_id, "capture on settle")]
    if held is not None and held > captured:
        legs.append(Leg(hold, credits, held - captured, TransferKind.RELEASE, f"job:{job_id}:release", job_id, "rest of the hold"))
    if split.registry:
        legs.append(Leg(clearing, registry, split.registry, TransferKind.PAYOUT, f"job:{job_id}:payout:registry", job_id, "registry share"))
    if surcharge:
        legs.append(Leg(clearing, registry, surcharge, TransferKind.PAYOUT, f"job:{job_id}:payout:relay", job_id, "relay surcharge"))
    for role, share, earned, escrowed in zip("AB", (split.node_a, split.node_b), earnings, escrows):
        if not share:
            continue
        legs.append(Leg(clearing, earned, share, TransferKind.PAYOUT, f"job:{job_id}:payout:{role}", job_id, f"node {role} share"))
        to_escrow = share * escrow.share_bp // 10_000
        if to_escrow > 0:
            # Up to the requirement: the posting reads the escrow's balance under its lock.
            key = f"job:{job_id}:escrow:{role}"
            legs.append(Leg(earned, escrowed, to_escrow, TransferKind.ESCROW, key, job_id, "escrow from earnings", cap=escrow.required))
    posted = post_legs(legs, replay=True)
    if posted is None:  # settled before: the first settlement's transfers, all of them
        posted = list(
            Transfer.objects.filter(
                job_id=job_id,
                kind__in=[TransferKind.CAPTURE, TransferKind.PAYOUT, TransferKind.ESCROW, TransferKind.RELEASE],
            ).order_by("pk")
        )
    return posted


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
    escrow_account = account_for(AccountKind.NODE_ESCROW, node_id=node_id)
    registry = account_for(AccountKind.REGISTRY_REVENUE)
    with transaction.atomic():
        locked = accounts_lock([escrow_account.pk])
        slash = Slash.objects.filter(assignment_id=assignment_id).first()
        if slash is not None:
            return slash
        slash = Slash(node_id=node_id, job_id=job_id, assignment_id=assignment_id, reason=reason[:300], fraction_bp=fraction_bp)
        taken = locked[escrow_account.pk].balance * fraction_bp // 10_000
        evidence = f"job {job_id}, assignment {assignment_id}: {reason}"
        if taken:
            slash.transfer = post_legs(
                [Leg(escrow_account, registry, taken, TransferKind.SLASH, f"slash:{assignment_id}", job_id, evidence)],
                locked=locked,
            )[0]
        captured = Transfer.objects.filter(job_id=job_id, kind=TransferKind.CAPTURE).exists()
        refunded = Transfer.objects.filter(job_id=job_id, kind=TransferKind.REFUND).exists()
        if captured and not refunded and job_price:
            slash.refund = transfer_create(
                debit=registry,
                credit=account_for(AccountKind.USER_CREDITS, user_id=job_user.pk),
                amount=job_price,
                kind=TransferKind.REFUND,
                idempotency_key=f"job:{job_id}:refund",
                job_id=job_id,
                reason=f"refund after fraud: {evidence}",
            )
        slash.save()
        return slash


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

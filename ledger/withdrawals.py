"""Withdrawals: a node's owner asks to take earnings out, an operator decides, and approved
requests are batched into net payout lines under a SHA-256 Merkle root (for an optional
on-chain settlement).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from .accounts import account_for, accounts_lock
from .errors import EarningsShort, LedgerError, NoPayoutDestination
from .models import (
    AccountKind,
    SettlementBatch,
    TransferKind,
    Withdrawal,
    WithdrawalState,
)
from .payouts import payout_destination_of
from .posting import transfer_create


def withdrawal_request(*, node_id: object, user: AbstractBaseUser, amount: int) -> Withdrawal:
    """The node's owner (checked by the caller) asks to withdraw earnings to their payout
    destination, which the request keeps; pending requests count against the balance."""
    minimum = settings.LEDGER_MIN_WITHDRAWAL_MICRO
    if type(amount) is not int or amount < minimum:
        raise LedgerError(f"withdrawals start at {minimum} micro-credits")
    destination = payout_destination_of(user=user)
    if destination is None:
        raise NoPayoutDestination("set a payout destination first: there is nowhere to pay this withdrawal")
    earnings = account_for(AccountKind.NODE_EARNINGS, node_id=node_id)
    with transaction.atomic():
        balance = accounts_lock([earnings.pk])[earnings.pk].balance
        pending = (
            Withdrawal.objects.filter(node_id=node_id, state=WithdrawalState.PENDING).aggregate(s=Sum("amount"))["s"]
            or 0
        )
        if balance - pending < amount:
            # The locked balance, not `earnings.balance`: that is the cached account's, maybe stale.
            raise EarningsShort(earnings, balance=balance, pending=pending, asked=amount)
        return Withdrawal.objects.create(node_id=node_id, requested_by=user, amount=amount, destination=str(destination))


def withdrawal_decide(*, withdrawal_id: int, approve: bool, operator: AbstractBaseUser, reason: str = "") -> Withdrawal:
    """An operator approves (earnings leave to the external account) or rejects a request."""
    with transaction.atomic():
        withdrawal = Withdrawal.objects.select_for_update().get(pk=withdrawal_id)
        if withdrawal.state != WithdrawalState.PENDING:
            return withdrawal
        if approve:
            withdrawal.transfer = transfer_create(
                debit=account_for(AccountKind.NODE_EARNINGS, node_id=withdrawal.node_id),
                credit=account_for(AccountKind.EXTERNAL),
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
    """Batch every approved, not yet batched withdrawal into net payout lines
    (`node_id,owner,destination,amount`), one per node and destination."""
    with transaction.atomic():
        withdrawals = list(
            Withdrawal.objects.select_for_update()
            .filter(state=WithdrawalState.APPROVED, batch__isnull=True)
            .select_related("requested_by")
            .order_by("pk")
        )
        if not withdrawals:
            return None
        net: dict[tuple[str, str, str], int] = defaultdict(int)
        for withdrawal in withdrawals:
            owner = withdrawal.requested_by.get_username()
            net[(str(withdrawal.node_id), owner, withdrawal.destination)] += withdrawal.amount
        lines = [f"{node_id},{owner},{destination},{amount}" for (node_id, owner, destination), amount in sorted(net.items())]
        batch = SettlementBatch.objects.create(
            merkle_root=merkle_root([line.encode() for line in lines]),
            line_count=len(lines),
            total=sum(net.values()),
            lines="\n".join(lines) + "\n",
        )
        Withdrawal.objects.filter(pk__in=[w.pk for w in withdrawals]).update(batch=batch)
        return batch

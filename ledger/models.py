"""Double-entry credits ledger.

Invariants (checked by `ledger.checks`, `manage.py ledger_check` and after every ledger test):
- every movement of value is one immutable Transfer from a debit account to a credit
  account with amount > 0, so the balances of all accounts always sum to zero;
- an account's balance (stored balance plus its not yet rolled-up deltas) equals its
  credits minus its debits;
- user and node accounts never go negative; only append-only system accounts (external,
  registry revenue, clearing) may;
- a transfer is written once: its idempotency key is unique, and database triggers
  refuse UPDATE and DELETE. Corrections are new, reversing transfers.
Amounts are integer micro-credits (1 credit = 1,000,000 micro-credits).

The ledger knows jobs, assignments and nodes only as the opaque ids its callers pass in
(`job_id`, `assignment_id`, `node_id`): no foreign key or import reaches into the
registry, which checks ownership before it asks the ledger to move anything.

No hot row: every settlement credits the registry, so system accounts are never locked
or updated by a transfer. Their legs are appended as PendingDelta rows, which
`services.pending_rollup` (Celery beat) folds into the stored balance, deleting exactly
the rows it adds in the same transaction.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class AccountKind(models.TextChoices):
    USER_CREDITS = "user_credits"
    USER_HOLD = "user_hold"
    NODE_EARNINGS = "node_earnings"
    NODE_ESCROW = "node_escrow"
    REGISTRY_REVENUE = "registry_revenue"
    CLEARING = "clearing"  # captured job payments on their way to the payouts
    EXTERNAL = "external"  # the world outside: top-ups come from it, withdrawals go to it
    PROMOTIONS = "promotions"  # credits the registry gives away: trial grants, operators' grants, vouchers


USER_KINDS = frozenset({AccountKind.USER_CREDITS, AccountKind.USER_HOLD})
NODE_KINDS = frozenset({AccountKind.NODE_EARNINGS, AccountKind.NODE_ESCROW})
SYSTEM_KINDS = frozenset(
    {AccountKind.REGISTRY_REVENUE, AccountKind.CLEARING, AccountKind.EXTERNAL, AccountKind.PROMOTIONS}
)


class Account(models.Model):
    kind = models.CharField(max_length=20, choices=AccountKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )
    # A node's earnings or escrow: the registry's node id. Look-ups go by (kind, node_id),
    # the unique index below, so the column needs no index of its own.
    node_id = models.UUIDField(null=True, blank=True)
    unit = models.CharField(max_length=16, default="micro-credit", editable=False)
    balance = models.BigIntegerField(default=0)
    # System accounts: written through PendingDelta rows, never locked, may go negative.
    append_only = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(append_only=True) | Q(balance__gte=0), name="account_no_overdraft"
            ),
            models.UniqueConstraint(
                fields=["kind", "user"],
                condition=Q(user__isnull=False, node_id__isnull=True),
                name="account_unique_per_user",
            ),
            models.UniqueConstraint(
                fields=["kind", "node_id"], condition=Q(node_id__isnull=False), name="account_unique_per_node"
            ),
            models.UniqueConstraint(
                fields=["kind"],
                condition=Q(user__isnull=True, node_id__isnull=True),
                name="account_unique_system",
            ),
        ]

    def __str__(self) -> str:
        owner = self.node_id or self.user_id or "system"
        return f"{self.kind}:{owner}"


class TransferKind(models.TextChoices):
    TOP_UP = "top_up"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    PAYOUT = "payout"
    ESCROW = "escrow"
    SLASH = "slash"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    WITHDRAWAL = "withdrawal"
    GRANT = "grant"  # credits given, not bought: from the promotions account, with the reason


class Transfer(models.Model):
    # Unique by a constraint in Meta, not `unique=True`: on PostgreSQL that would add a
    # second (pattern-matching) index that no query uses, written on every transfer.
    idempotency_key = models.CharField(max_length=200)
    debit = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="debits")
    credit = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credits")
    amount = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16, choices=TransferKind.choices)
    # The job a transfer belongs to (the registry's job id). No index of its own: the
    # (job_id, kind) index serves look-ups by job.
    job_id = models.UUIDField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    # A correction names the transfer it undoes; each transfer is undone at most once.
    reverses = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="reversed_by"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="transfer_amount_positive"),
            models.CheckConstraint(
                condition=~Q(debit=models.F("credit")), name="transfer_distinct_accounts"
            ),
            models.UniqueConstraint(fields=["idempotency_key"], name="transfer_unique_idempotency_key"),
        ]
        indexes = [models.Index(fields=["job_id", "kind"], name="ledger_tran_job_id_6c6e83_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.debit_id}->{self.credit_id}"


class PendingDelta(models.Model):
    """A leg of a transfer on an append-only account, not yet folded into its balance."""

    # No index of its own: the (account, id) index serves look-ups by account.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="pending", db_index=False)
    amount = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["account", "id"])]


class PayoutMethod(models.TextChoices):
    IBAN = "iban", "bank transfer (IBAN)"
    PAYPAL = "paypal", "PayPal (e-mail address)"


class PayoutDestination(models.Model):
    """Where a user's withdrawals are paid: one per account, changed only with the
    password (ledger/payouts.py). A withdrawal copies it when requested, so the operator
    approves, and the settlement pays, the destination the owner named at the time."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="payout_destination")
    method = models.CharField(max_length=10, choices=PayoutMethod.choices)
    address = models.CharField(max_length=100)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.method}:{self.address}"


class WithdrawalState(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class Withdrawal(models.Model):
    """A node owner's request to take earnings out: pending until an operator decides."""

    node_id = models.UUIDField()
    # The node's owner, who asked (the registry checked the ownership).
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="withdrawals")
    amount = models.PositiveBigIntegerField()
    # "method:address", the owner's PayoutDestination when they asked ("" before payouts
    # had destinations).
    destination = models.CharField(max_length=112, blank=True)
    state = models.CharField(max_length=10, choices=WithdrawalState.choices, default=WithdrawalState.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decision_reason = models.CharField(max_length=300, blank=True)
    transfer = models.OneToOneField(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    batch = models.ForeignKey(
        "SettlementBatch", null=True, blank=True, on_delete=models.PROTECT, related_name="withdrawals"
    )

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="withdrawal_amount_positive")]
        indexes = [models.Index(fields=["node_id", "state"], name="ledger_with_node_id_951407_idx")]

    def __str__(self) -> str:
        return f"withdrawal {self.pk} of {self.amount} ({self.state})"


class Slash(models.Model):
    """Escrow taken from a node on proven fraud, with its evidence and the user's refund."""

    node_id = models.UUIDField(db_index=True)
    job_id = models.UUIDField(db_index=True)
    # The evidence: one slash per assignment.
    assignment_id = models.UUIDField(unique=True)
    reason = models.CharField(max_length=300)
    fraction_bp = models.PositiveIntegerField()
    transfer = models.OneToOneField(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    refund = models.OneToOneField(Transfer, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"slash of {self.node_id} for job {self.job_id}"


class SettlementBatch(models.Model):
    """Approved withdrawals exported as lines with a SHA-256 Merkle root over them, so an
    optional on-chain settlement can anchor the batch."""

    created_at = models.DateTimeField(auto_now_add=True)
    merkle_root = models.CharField(max_length=64)
    line_count = models.PositiveIntegerField()
    total = models.PositiveBigIntegerField()
    lines = models.TextField()

    def __str__(self) -> str:
        return f"batch {self.pk} ({self.line_count} lines, root {self.merkle_root[:12]})"

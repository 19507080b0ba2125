"""Double-entry credits ledger.

Invariants (checked by `ledger.checks`, `manage.py ledger_check` and after every ledger test):
- every movement of value is one immutable Transfer from a debit account to a credit
  account with amount > 0, so the balances of all accounts always sum to zero;
- an account's stored balance equals its credits minus its debits;
- only the external account (top-ups, withdrawals) may go negative;
- a transfer is written once: its idempotency key is unique, and database triggers
  refuse UPDATE and DELETE. Corrections are new, reversing transfers.
Amounts are integer micro-credits (1 credit = 1,000,000 micro-credits).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

MICRO = 1_000_000


class AccountKind(models.TextChoices):
    USER_CREDITS = "user_credits"
    USER_HOLD = "user_hold"
    NODE_EARNINGS = "node_earnings"
    NODE_ESCROW = "node_escrow"
    REGISTRY_REVENUE = "registry_revenue"
    CLEARING = "clearing"  # captured job payments on their way to the payouts
    EXTERNAL = "external"  # the world outside: top-ups come from it, withdrawals go to it


USER_KINDS = frozenset({AccountKind.USER_CREDITS, AccountKind.USER_HOLD})
NODE_KINDS = frozenset({AccountKind.NODE_EARNINGS, AccountKind.NODE_ESCROW})
SYSTEM_KINDS = frozenset({AccountKind.REGISTRY_REVENUE, AccountKind.CLEARING, AccountKind.EXTERNAL})


class Account(models.Model):
    kind = models.CharField(max_length=20, choices=AccountKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )
    node = models.ForeignKey(
        "registry.Node", null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )
    balance = models.BigIntegerField(default=0)
    allow_negative = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(allow_negative=True) | Q(balance__gte=0), name="account_no_overdraft"
            ),
            models.UniqueConstraint(
                fields=["kind", "user"],
                condition=Q(user__isnull=False, node__isnull=True),
                name="account_unique_per_user",
            ),
            models.UniqueConstraint(
                fields=["kind", "node"], condition=Q(node__isnull=False), name="account_unique_per_node"
            ),
            models.UniqueConstraint(
                fields=["kind"],
                condition=Q(user__isnull=True, node__isnull=True),
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


class Transfer(models.Model):
    idempotency_key = models.CharField(max_length=200, unique=True)
    debit = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="debits")
    credit = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="credits")
    amount = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16, choices=TransferKind.choices)
    job = models.ForeignKey(
        "registry.Job", null=True, blank=True, on_delete=models.PROTECT, related_name="transfers"
    )
    reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="transfer_amount_positive"),
            models.CheckConstraint(
                condition=~Q(debit=models.F("credit")), name="transfer_distinct_accounts"
            ),
        ]
        indexes = [models.Index(fields=["job", "kind"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.debit_id}->{self.credit_id}"

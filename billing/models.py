"""Where credits come from, besides jobs: vouchers operators mint and users redeem, and
payments a provider (Stripe) confirmed. Each credit is a ledger transfer; these rows are
the evidence behind it (which code, which provider event), kept to refuse a second use."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Voucher(models.Model):
    """A code worth `amount_micro` credits, redeemed once. Only its SHA-256 is stored (the
    code is shown once, when minted); `prefix` lets an operator recognise it."""

    code_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    batch = models.CharField(max_length=100, help_text="what the batch is for, e.g. a workshop")
    amount_micro = models.PositiveBigIntegerField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    redeemed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    redeemed_at = models.DateTimeField(null=True, blank=True)
    # The ledger transfer that credited it (ledger ids, no foreign key across the ledger's line).
    transfer_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["batch"])]
        # Granting moves money like minting does, so it is a permission of its own.
        permissions = [("grant_credits", "Can grant credits to a user by name")]

    def __str__(self) -> str:
        return f"voucher {self.prefix}… ({self.batch})"


class Payment(models.Model):
    """A payment the provider confirmed (a signed webhook event), credited once."""

    provider = models.CharField(max_length=20)
    event_id = models.CharField(max_length=255)
    checkout_id = models.CharField(max_length=255, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    amount_micro = models.PositiveBigIntegerField()
    paid_minor = models.PositiveBigIntegerField(help_text="what the provider charged, in the currency's minor unit")
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)
    transfer_id = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="payment_unique_event")]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_id}"

"""Credits a user did not earn by computing: the trial grant at sign-up, an operator's grant
by user name, vouchers, and payments. Each is one ledger transfer (`ledger.services`) with
its reason, idempotent, so a retried request or a replayed webhook credits once."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from bim_core.errors import ServiceError
from ledger import services as ledger

from .models import Payment, Voucher
from .payments import PaymentEvent

VOUCHER_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are typed by people
VOUCHER_GROUPS, VOUCHER_GROUP_LEN = 4, 4
MAX_VOUCHERS_PER_BATCH = 10_000


def trial_grant(*, user: AbstractBaseUser) -> int:
    """The configurable credits every new account starts with (0 turns it off)."""
    amount = settings.BIM_TRIAL_GRANT_MICRO
    if amount > 0:
        ledger.credits_grant(user=user, amount=amount, idempotency_key=f"trial:{user.pk}", reason="trial credits at sign-up")
    return amount


def operator_grant(
    *, operator: AbstractBaseUser, username: str, amount_micro: int, reason: str, request_id: str
) -> AbstractBaseUser:
    """An operator grants credits to a user named by user name (the user's credit account
    is created when missing). `request_id` (the admin form's one-time id) makes a resubmitted
    form credit once."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ServiceError("unknown_user", f"no user named {username!r}", status=404)
    if amount_micro <= 0:
        raise ServiceError("bad_amount", "a grant is a positive amount")
    if not reason.strip():
        raise ServiceError("reason_required", "a grant names its reason")
    ledger.credits_grant(
        user=user, amount=amount_micro, idempotency_key=f"operator:{request_id}", reason=f"{operator}: {reason}"
    )
    return user


def voucher_code_hash(code: str) -> str:
    normalized = "".join(ch for ch in code.upper() if ch.isalnum())
    return hashlib.sha256(normalized.encode("ascii", "ignore")).hexdigest()


def voucher_batch_mint(
    *, operator: AbstractBaseUser, batch: str, amount_micro: int, count: int, expires_at: datetime | None = None
) -> list[str]:
    """Mint `count` vouchers; returns their codes, which exist nowhere else (only hashes are
    stored): the operator hands them out from this one answer."""
    if not 0 < count <= MAX_VOUCHERS_PER_BATCH:
        raise ServiceError("bad_count", f"mint 1 to {MAX_VOUCHERS_PER_BATCH} vouchers at a time")
    if amount_micro <= 0:
        raise ServiceError("bad_amount", "a voucher is worth a positive amount")
    if not batch.strip():
        raise ServiceError("batch_required", "name the batch (what the vouchers are for)")
    codes = []
    with transaction.atomic():
        for _ in range(count):
            groups = [
                "".join(secrets.choice(VOUCHER_ALPHABET) for _ in range(VOUCHER_GROUP_LEN)) for _ in range(VOUCHER_GROUPS)
            ]
            code = "-".join(groups)
            Voucher.objects.create(
                code_hash=voucher_code_hash(code),
                prefix=groups[0],
                batch=batch.strip()[:100],
                amount_micro=amount_micro,
                created_by=operator,
                expires_at=expires_at,
            )
            codes.append(code)
    return codes


def voucher_redeem(*, user: AbstractBaseUser, code: str) -> Voucher:
    """Credit a voucher to `user`, once: a second redemption, by anyone, is refused."""
    with transaction.atomic():
        voucher = Voucher.objects.select_for_update().filter(code_hash=voucher_code_hash(code)).first()
        if voucher is None:
            raise ServiceError("unknown_voucher", "no voucher has this code", status=404)
        if voucher.redeemed_at is not None:
            raise ServiceError("voucher_redeemed", "this voucher was redeemed already", status=409)
        if voucher.expires_at is not None and voucher.expires_at <= timezone.now():
            raise ServiceError("voucher_expired", "this voucher has expired", status=410)
        transfer = ledger.credits_grant(
            user=user,
            amount=voucher.amount_micro,
            idempotency_key=f"voucher:{voucher.pk}",
            reason=f"voucher {voucher.prefix}… of batch {voucher.batch}",
        )
        voucher.redeemed_by, voucher.redeemed_at, voucher.transfer_id = user, timezone.now(), transfer.pk
        voucher.save(update_fields=["redeemed_by", "redeemed_at", "transfer_id"])
    return voucher


def payment_record(*, event: PaymentEvent) -> tuple[Payment, bool]:
    """Credit a payment the provider confirmed, once per provider event (a replayed webhook,
    or the provider's own retry, finds the payment and credits nothing). Returns
    (payment, created)."""
    existing = Payment.objects.filter(provider=event.provider, event_id=event.event_id).first()
    if existing is not None:
        return existing, False
    user = get_user_model().objects.filter(pk=event.user_id).first()
    if user is None:
        raise ServiceError("unknown_user", f"the payment names no user of this registry ({event.user_id!r})", status=422)
    try:
        with transaction.atomic():
            transfer = ledger.credits_top_up(
                user=user,
                amount=event.amount_micro,
                idempotency_key=f"{event.provider}:{event.event_id}",
                reason=f"{event.provider} payment {event.checkout_id or event.event_id}: {event.paid_minor} {event.currency}",
            )
            payment = Payment.objects.create(
                provider=event.provider,
                event_id=event.event_id,
                checkout_id=event.checkout_id,
                user=user,
                amount_micro=event.amount_micro,
                paid_minor=event.paid_minor,
                currency=event.currency,
                transfer_id=transfer.pk,
            )
    except IntegrityError:  # the same event, delivered twice at once: the other one credited it
        return Payment.objects.get(provider=event.provider, event_id=event.event_id), False
    return payment, True

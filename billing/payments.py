"""Payment providers behind one interface: a checkout the user is sent to, and the signed
event the provider sends back when the money arrived. The registry credits only on that
event (`services.payment_record`), never on the user's return to the success page.

The Stripe adapter uses Stripe's own library (`stripe`): Checkout Sessions to pay, and
`stripe.Webhook.construct_event` to verify the `Stripe-Signature` header (HMAC-SHA256 over
the timestamped payload, with a replay window) rather than a hand-written check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from bim_core.errors import ServiceError


@dataclass(frozen=True)
class PaymentEvent:
    """A payment the provider says is complete, in the registry's terms."""

    provider: str
    event_id: str
    checkout_id: str
    user_id: str
    paid_minor: int
    currency: str

    @property
    def amount_micro(self) -> int:
        return self.paid_minor * settings.BIM_MICRO_PER_MINOR_UNIT


@dataclass(frozen=True)
class Checkout:
    checkout_id: str
    url: str


class PaymentProvider(Protocol):
    name: str

    def checkout_create(self, *, user_id: str, credits: int, success_url: str, cancel_url: str) -> Checkout: ...

    def event_parse(self, *, payload: bytes, signature: str) -> PaymentEvent | None:
        """The completed payment a signed event reports, None for events of other kinds;
        ServiceError `bad_signature` when the signature does not verify."""
        ...


def credits_price_minor(credits: int) -> int:
    """What `credits` credits cost, in the currency's minor unit (cents)."""
    micro = credits * 1_000_000
    price, remainder = divmod(micro, settings.BIM_MICRO_PER_MINOR_UNIT)
    if remainder:
        raise ServiceError("bad_amount", "buy credits in whole units of the currency")
    return price


class StripeProvider:
    name = "stripe"

    def __init__(self, *, secret_key: str, webhook_secret: str, currency: str, api_base: str | None = None) -> None:
        import stripe

        self.stripe = stripe
        self.client = stripe.StripeClient(secret_key, base_addresses={"api": api_base} if api_base else None)
        self.webhook_secret = webhook_secret
        self.currency = currency

    def checkout_create(self, *, user_id: str, credits: int, success_url: str, cancel_url: str) -> Checkout:
        session = self.client.v1.checkout.sessions.create(
            params={
                "mode": "payment",
                "client_reference_id": user_id,
                "metadata": {"bim_user_id": user_id, "bim_credits": str(credits)},
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": self.currency,
                            "unit_amount": credits_price_minor(credits),
                            "product_data": {"name": f"{credits} BIM credits"},
                        },
                    }
                ],
                "success_url": success_url,
                "cancel_url": cancel_url,
            }
        )
        return Checkout(checkout_id=session.id, url=session.url or "")

    def event_parse(self, *, payload: bytes, signature: str) -> PaymentEvent | None:
        try:
            event = self.stripe.Webhook.construct_event(payload, signature, self.webhook_secret)
        except (ValueError, self.stripe.SignatureVerificationError):
            raise ServiceError("bad_signature", "the Stripe-Signature header does not verify this payload") from None
        if event["type"] not in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            return None
        session: dict[str, Any] = event["data"]["object"].to_dict()
        if session.get("payment_status") != "paid":
            return None  # async methods (bank debits) complete later, with their own event
        # What was charged, not what was asked for: the amount comes from the session total.
        return PaymentEvent(
            provider=self.name,
            event_id=str(event["id"]),
            checkout_id=str(session.get("id", "")),
            user_id=str(session.get("client_reference_id") or (session.get("metadata") or {}).get("bim_user_id", "")),
            paid_minor=int(session.get("amount_total") or 0),
            currency=str(session.get("currency", "")),
        )


def payment_provider(name: str) -> PaymentProvider:
    if name == "stripe" and settings.STRIPE_SECRET_KEY and settings.STRIPE_WEBHOOK_SECRET:
        return StripeProvider(
            secret_key=settings.STRIPE_SECRET_KEY,
            webhook_secret=settings.STRIPE_WEBHOOK_SECRET,
            currency=settings.BIM_CURRENCY,
            api_base=settings.STRIPE_API_BASE or None,
        )
    # Not a passing outage (no 503 to retry): this registry does not take payments that way.
    raise ServiceError("payments_unavailable", f"this registry takes no payments through {name!r}", status=404)

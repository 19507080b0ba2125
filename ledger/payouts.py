"""Payout destinations: where a user's withdrawals are paid. Setting one needs the
account's password (a stolen session must not redirect someone's earnings), and the
address is checked the way the payment rail would check it: an IBAN by its country format
and mod-97 check digits (python-stdnum), a PayPal account by its e-mail address."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from stdnum import iban
from stdnum.exceptions import ValidationError as NumberInvalid

from .errors import LedgerError
from .models import PayoutDestination, PayoutMethod

# For forms outside the ledger (its models are its own).
METHOD_CHOICES = PayoutMethod.choices


class DestinationInvalid(LedgerError):
    pass


def destination_normalized(*, method: str, address: str) -> str:
    """The address in the one spelling payouts use, or DestinationInvalid saying why."""
    address = address.strip()
    if method == PayoutMethod.IBAN:
        try:
            return iban.validate(address)
        except NumberInvalid as exc:
            raise DestinationInvalid(f"not a valid IBAN: {exc}") from None
    if method == PayoutMethod.PAYPAL:
        try:
            EmailValidator()(address)
        except ValidationError:
            raise DestinationInvalid("not a valid e-mail address") from None
        # Settlement lines are comma-separated: an address that needs quoting is refused.
        if any(c in address for c in ',"\\ '):
            raise DestinationInvalid("an address with commas, quotes or spaces cannot be paid") from None
        return address.lower()
    raise DestinationInvalid(f"payout method must be one of {', '.join(PayoutMethod.values)}")


def payout_destination_set(*, user: AbstractBaseUser, password: str, method: str, address: str) -> PayoutDestination:
    """Set (or replace) the user's payout destination; pending withdrawals keep the one
    they were requested with."""
    if not user.check_password(password):
        raise DestinationInvalid("the password is not this account's")
    normalized = destination_normalized(method=method, address=address)
    destination, _ = PayoutDestination.objects.update_or_create(user=user, defaults={"method": method, "address": normalized})
    return destination


def payout_destination_of(*, user: AbstractBaseUser) -> PayoutDestination | None:
    return PayoutDestination.objects.filter(user=user).first()

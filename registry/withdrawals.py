"""Contributors take their earnings out: the registry checks that the node is the asking
user's, then the ledger holds the request until an operator decides."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from bim_core.errors import ServiceError
from ledger import withdrawals as ledger_withdrawals
from ledger.errors import InsufficientFunds, LedgerError, NoPayoutDestination

from .models import Node


def node_withdrawal_request(*, node: Node, user: AbstractBaseUser, amount: int) -> object:
    """Ask to withdraw `amount` of the node's earnings; refused for anyone but its owner."""
    if node.owner_id != user.pk:
        raise ServiceError("not_owner", "only the node's owner may withdraw its earnings", status=403)
    try:
        return ledger_withdrawals.withdrawal_request(node_id=node.pk, user=user, amount=amount)
    except InsufficientFunds as exc:
        raise ServiceError("insufficient_earnings", str(exc), status=402) from None
    except NoPayoutDestination as exc:
        raise ServiceError("no_payout_destination", str(exc), status=409) from None
    except LedgerError as exc:
        raise ServiceError("withdrawal_refused", str(exc)) from None

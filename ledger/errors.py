"""What the ledger refuses, as exceptions its callers catch.
"""

from __future__ import annotations

from .models import (
    Account,
)


class LedgerError(Exception):
    pass


class InsufficientFunds(LedgerError):
    def __init__(self, account: Account, needed: int) -> None:
        super().__init__(f"{account} holds {account.balance} micro-credits, {needed} needed")
        self.account = account
        self.needed = needed


class NoPayoutDestination(LedgerError):
    """A withdrawal of a user who has not said where to pay it."""


class IdempotencyConflict(LedgerError):
    """The key was used before for a different transfer."""


class HoldEnded(LedgerError):
    """The job's hold was already captured (settled) or released (failed, expired)."""


class EarningsShort(InsufficientFunds):
    """A withdrawal asks for more than the earnings left after pending withdrawals."""

    def __init__(self, account: Account, *, balance: int, pending: int, asked: int) -> None:
        LedgerError.__init__(
            self,
            f"{balance} micro-credits earned, {pending} in pending withdrawals: "
            f"{balance - pending} available, {asked} asked",
        )
        self.account, self.needed = account, asked + pending

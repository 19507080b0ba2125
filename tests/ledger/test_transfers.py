"""Transfers: the one way value moves. Balanced, positive, idempotent, never overdrawn,
and immutable in the database itself; `ledger_check` notices a ledger that is not."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum

from bim_core.money import MICRO
from ledger.accounts import account_balance, account_get
from ledger.checks import ledger_violations
from ledger.errors import IdempotencyConflict, InsufficientFunds, LedgerError
from ledger.models import Account, AccountKind, PendingDelta, Transfer, TransferKind
from ledger.posting import transfer_create
from ledger.services import credits_top_up
from tests.factories import UserFactory, user_with_credits

# `usefixtures("db")` rather than the django_db mark alone: the conftest's ledger check only
# runs for tests whose fixtures name `db`.
pytestmark = pytest.mark.usefixtures("db")


class Rollback(Exception):
    """Raised to undo a deliberate tampering through its savepoint."""


def balances(*accounts: Account) -> list[int]:
    return [account_balance(a) for a in accounts]


def credits_of(user) -> Account:
    return account_get(AccountKind.USER_CREDITS, user=user)


def move(debit: Account, credit: Account, amount: int, key: str = "t1", **fields) -> Transfer:
    return transfer_create(
        debit=debit, credit=credit, amount=amount, kind=TransferKind.ADJUSTMENT, idempotency_key=key, **fields
    )


def test_a_transfer_moves_value_and_the_books_still_sum_to_zero():
    alice, bob = user_with_credits(5), UserFactory()
    source, target = credits_of(alice), credits_of(bob)

    transfer = move(source, target, 2 * MICRO)

    assert (transfer.debit_id, transfer.credit_id, transfer.amount) == (source.pk, target.pk, 2 * MICRO)
    assert balances(source, target) == [3 * MICRO, 2 * MICRO]
    stored = Account.objects.aggregate(s=Sum("balance"))["s"]
    assert stored + PendingDelta.objects.aggregate(s=Sum("amount"))["s"] == 0
    assert ledger_violations() == []


@pytest.mark.parametrize("amount", [0, -1, 1.0, 0.5, "5", None, True])
def test_it_refuses_an_amount_that_is_not_a_positive_integer(amount):
    source, target = credits_of(user_with_credits(5)), credits_of(UserFactory())

    with pytest.raises(LedgerError):
        move(source, target, amount)

    assert Transfer.objects.filter(idempotency_key="t1").count() == 0
    assert balances(source, target) == [5 * MICRO, 0]


def test_it_refuses_a_transfer_from_an_account_to_itself():
    source = credits_of(user_with_credits(5))
    with pytest.raises(LedgerError):
        move(source, source, 1)
    assert balances(source) == [5 * MICRO]


def test_it_refuses_an_overdraft_and_writes_nothing():
    source, target = credits_of(user_with_credits(1)), credits_of(UserFactory())
    transfers_before = Transfer.objects.count()

    with pytest.raises(InsufficientFunds) as refused:
        move(source, target, MICRO + 1)

    assert refused.value.needed == MICRO + 1
    assert Transfer.objects.count() == transfers_before
    assert not Transfer.objects.filter(idempotency_key="t1").exists()
    assert balances(source, target) == [MICRO, 0]


def test_an_account_may_be_emptied_exactly():
    source, target = credits_of(user_with_credits(1)), credits_of(UserFactory())
    move(source, target, MICRO)
    assert balances(source, target) == [0, MICRO]


def test_the_external_account_may_go_negative():
    user = UserFactory()
    external = account_get(AccountKind.EXTERNAL)

    credits_top_up(user=user, amount=7 * MICRO, idempotency_key="first")

    assert external.append_only
    assert balances(external, credits_of(user)) == [-7 * MICRO, 7 * MICRO]


def test_the_same_key_and_fields_return_the_first_transfer():
    source, target = credits_of(user_with_credits(5)), credits_of(UserFactory())
    first = move(source, target, 3 * MICRO)

    # Even though the source could not pay it again, a repeat is the same transfer, not a new one.
    again = move(source, target, 3 * MICRO)

    assert again.pk == first.pk
    assert Transfer.objects.filter(idempotency_key="t1").count() == 1
    assert balances(source, target) == [2 * MICRO, 3 * MICRO]


def test_a_repeated_top_up_credits_once():
    user = UserFactory()
    first = credits_top_up(user=user, amount=MICRO, idempotency_key="order-1")
    again = credits_top_up(user=user, amount=MICRO, idempotency_key="order-1")
    assert again.pk == first.pk
    assert balances(credits_of(user)) == [MICRO]


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 2 * MICRO},
        {"credit": "other"},
        {"debit": "other"},
        {"kind": TransferKind.REFUND},
    ],
    ids=["amount", "credit", "debit", "kind"],
)
def test_the_same_key_with_different_fields_is_a_conflict(change):
    source, target = credits_of(user_with_credits(5)), credits_of(UserFactory())
    other = credits_of(user_with_credits(5))
    move(source, target, MICRO)
    fields = {"debit": source, "credit": target, "amount": MICRO, "kind": TransferKind.ADJUSTMENT}
    fields.update({k: other if v == "other" else v for k, v in change.items()})
    before = balances(source, target, other)

    with pytest.raises(IdempotencyConflict):
        transfer_create(idempotency_key="t1", **fields)

    assert Transfer.objects.filter(idempotency_key="t1").count() == 1
    assert balances(source, target, other) == before


def test_the_database_refuses_to_update_a_transfer():
    source, target = credits_of(user_with_credits(5)), credits_of(UserFactory())
    transfer = move(source, target, MICRO)

    with pytest.raises(IntegrityError), transaction.atomic():
        Transfer.objects.filter(pk=transfer.pk).update(amount=F("amount") + 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        # Not even a harmless-looking column: corrections are reversing transfers.
        Transfer.objects.filter(pk=transfer.pk).update(reason="edited")
    transfer.amount = 1
    with pytest.raises(IntegrityError), transaction.atomic():
        transfer.save()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE ledger_transfer SET amount = amount * 2 WHERE id = %s", [transfer.pk])

    transfer.refresh_from_db()
    assert (transfer.amount, transfer.reason) == (MICRO, "")


def test_the_database_refuses_to_delete_a_transfer():
    source, target = credits_of(user_with_credits(5)), credits_of(UserFactory())
    transfer = move(source, target, MICRO)

    with pytest.raises(IntegrityError), transaction.atomic():
        Transfer.objects.filter(pk=transfer.pk).delete()
    with pytest.raises(IntegrityError), transaction.atomic():
        transfer.delete()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM ledger_transfer WHERE id = %s", [transfer.pk])

    assert Transfer.objects.filter(pk=transfer.pk).exists()


def test_the_database_refuses_a_transfer_that_bypasses_the_service():
    source, target = credits_of(user_with_credits(5)), credits_of(UserFactory())
    with pytest.raises(IntegrityError), transaction.atomic():
        Transfer.objects.create(idempotency_key="zero", debit=source, credit=target, amount=0, kind="adjustment")
    with pytest.raises(IntegrityError), transaction.atomic():
        Transfer.objects.create(idempotency_key="self", debit=source, credit=source, amount=1, kind="adjustment")
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.filter(pk=source.pk).update(balance=-1)


def test_ledger_check_passes_on_a_sound_ledger(capsys):
    alice = user_with_credits(5)
    move(credits_of(alice), credits_of(UserFactory()), MICRO)

    call_command("ledger_check")

    assert "all invariants hold" in capsys.readouterr().out


def test_ledger_check_fails_when_a_balance_is_tampered_with(capsys):
    alice = user_with_credits(5)
    account = credits_of(alice)

    with pytest.raises(Rollback), transaction.atomic():
        Account.objects.filter(pk=account.pk).update(balance=F("balance") + 1)

        problems = ledger_violations()
        with pytest.raises(CommandError) as failed:
            call_command("ledger_check")

        raise Rollback  # undo the tampering so the ledger is sound again for the conftest check

    assert "balances sum to 1, not 0" in problems
    assert any(f"account {account.pk}" in p and "transfers give" in p for p in problems)
    assert failed.value.returncode != 0
    assert f"account {account.pk}" in capsys.readouterr().err
    assert ledger_violations() == []

"""Accounts: the one account of a kind per user, node or the system (made on first use and
its identity cached), balances, and locks taken in primary-key order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Q, Sum

from .models import (
    SYSTEM_KINDS,
    Account,
    PendingDelta,
)


def account_get(kind: str, *, user: AbstractBaseUser | None = None, node_id: object | None = None) -> Account:
    """The one account of a kind for a user, a node or the system (made on first use),
    read fresh: its stored balance is current."""
    found = account_for(kind, user_id=user.pk if user is not None else None, node_id=node_id)
    return Account.objects.get(pk=found.pk)


# (kind, user_id, node_id) -> account, for identity only (pk, append_only): accounts are
# never deleted, and every balance check re-reads the row under its lock.
_account_cache: dict[tuple[str, object, object], Account] = {}


def account_cache_clear() -> None:
    """Forget cached account identities (tests start each database over)."""
    _account_cache.clear()


def accounts_get(specs: Sequence[tuple[str, object | None, object | None]]) -> list[Account]:
    """Several accounts, given as (kind, user_id, node_id), from the cache or in one query;
    made on first use. Their `balance` is not current: read it under a lock."""
    keys = [
        (kind, None if node_id is not None else user_id, str(node_id) if node_id is not None else None)
        for kind, user_id, node_id in specs
    ]
    found = {key: _account_cache[key] for key in keys if key in _account_cache}
    missing = [key for key in keys if key not in found]
    if missing:
        match = Q(pk__in=[])
        for kind, user_id, node_id in missing:
            match |= Q(kind=kind, user_id=user_id, node_id=node_id)
        for account in Account.objects.filter(match):
            found[(account.kind, account.user_id, str(account.node_id) if account.node_id else None)] = account
        for kind, user_id, node_id in missing:
            if (kind, user_id, node_id) not in found:
                found[(kind, user_id, node_id)], _ = Account.objects.get_or_create(
                    kind=kind, user_id=user_id, node_id=node_id, defaults={"append_only": kind in SYSTEM_KINDS}
                )
        # Cached once committed: a row made (or first seen) in a transaction that rolls
        # back must not outlive it.
        fresh = {key: found[key] for key in missing}
        transaction.on_commit(lambda: _account_cache.update(fresh))
    return [found[key] for key in keys]


def account_for(kind: str, *, user_id: object | None = None, node_id: object | None = None) -> Account:
    return accounts_get([(kind, user_id, node_id)])[0]


def account_balance(account: Account) -> int:
    """The balance including legs not yet rolled up."""
    pending = PendingDelta.objects.filter(account=account).aggregate(s=Sum("amount"))["s"] or 0
    return Account.objects.values_list("balance", flat=True).get(pk=account.pk) + pending


def accounts_lock(ids: Iterable[int]) -> dict[int, Account]:
    """Lock accounts in primary-key order (two postings touching the same accounts never
    deadlock) and read their balances under the lock."""
    wanted = sorted(set(ids))
    if connection.vendor != "postgresql":
        return {a.pk: a for a in Account.objects.select_for_update().filter(pk__in=wanted).order_by("pk")}
    # On the settlement hot path the ORM's query building costs more than the query.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, balance, append_only FROM ledger_account WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [wanted]
        )
        return {pk: Account(id=pk, balance=balance, append_only=append_only) for pk, balance, append_only in cursor}

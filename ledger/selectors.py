"""Reads of the ledger for the layers above it: balances by owner, escrow levels, a user's
withdrawals, totals and the last invariant check for /metrics. Nodes are named by the
opaque ids the caller holds."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db.models import QuerySet, Sum

from .checks import LAST_CHECK_KEY, CheckRecord
from .models import Account, AccountKind, PendingDelta, Withdrawal


def balance_totals(*, user: AbstractBaseUser | None = None, node_ids: Iterable[object] = ()) -> dict[str, int]:
    """Summed balances in micro-credits: the user's credits and hold, and the earnings and
    escrow of the given nodes (stored balances: user and node accounts have no pending legs)."""
    totals = {"credits_micro": 0, "held_micro": 0, "earnings_micro": 0, "escrow_micro": 0}
    names = {
        AccountKind.USER_CREDITS: "credits_micro",
        AccountKind.USER_HOLD: "held_micro",
        AccountKind.NODE_EARNINGS: "earnings_micro",
        AccountKind.NODE_ESCROW: "escrow_micro",
    }
    node_ids = list(node_ids)
    if user is not None:
        rows = Account.objects.filter(user=user, node_id__isnull=True, kind__in=names).values("kind")
        for kind, total in rows.annotate(s=Sum("balance")).values_list("kind", "s"):
            totals[names[kind]] += total
    if node_ids:
        rows = Account.objects.filter(node_id__in=node_ids, kind__in=names).values("kind")
        for kind, total in rows.annotate(s=Sum("balance")).values_list("kind", "s"):
            totals[names[kind]] += total
    return totals


def nodes_with_escrow(*, node_ids: Iterable[object], required: int) -> set[object]:
    """Those of the nodes whose escrow has reached `required` micro-credits."""
    return set(
        Account.objects.filter(kind=AccountKind.NODE_ESCROW, node_id__in=list(node_ids), balance__gte=required)
        .values_list("node_id", flat=True)
    )


def withdrawal_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Withdrawal]:
    return Withdrawal.objects.filter(requested_by=user).order_by("-created_at")


def totals_by_kind() -> dict[str, int]:
    """Every account kind's summed balance in micro-credits, pending legs of the append-only
    accounts included (the registry's revenue and the clearing account take most legs
    there), in two aggregate queries: what operators watch (credits held for jobs, escrow,
    revenue) and the books' first invariant (the kinds sum to zero)."""
    totals = {kind: 0 for kind in AccountKind.values}
    for kind, total in Account.objects.values("kind").annotate(s=Sum("balance")).values_list("kind", "s"):
        totals[kind] += total or 0
    pending = PendingDelta.objects.values("account__kind").annotate(s=Sum("amount"))
    for kind, total in pending.values_list("account__kind", "s"):
        totals[kind] += total or 0
    return totals


def ledger_check_last() -> CheckRecord | None:
    """When the last full invariant check ran and how many violations it found (None before
    the first, or when the cache lost it)."""
    return cache.get(LAST_CHECK_KEY)

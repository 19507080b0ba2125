"""Contributor reads: what the dashboard shows (subnets and opt-ins, this browser's node,
its recent work and the owner's ledger balances)."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count

from ledger import selectors as ledger_selectors
from registry import selectors as registry_selectors
from registry.models import Assignment, AssignmentState, Node, NodeSubnet
from subnets import selectors as subnet_selectors
from subnets.models import EulaAcceptance, Subnet

RECENT_ASSIGNMENTS = 50


def subnets_with_opt_in(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Every active subnet, with the user's acceptance of its current license (or None)."""
    accepted = {
        (a.license_id, a.license_version): a
        for a in EulaAcceptance.objects.filter(user=user).select_related("license")
    }
    return [
        {"subnet": subnet, "acceptance": accepted.get((subnet.license_id, subnet.license.version))}
        for subnet in subnet_selectors.subnet_list_active()
    ]


def subnet_for_opt_in(*, slug: str) -> Subnet:
    return subnet_selectors.subnet_get_active(slug=slug)


def owner_balances(*, user: AbstractBaseUser, node: Node | None = None) -> dict[str, int]:
    """Earnings and escrow of all the user's nodes, and of `node` alone when given."""

    everything = ledger_selectors.balance_totals(node_ids=registry_selectors.node_ids_of_owner(user=user))
    balances = {"earnings_micro": everything["earnings_micro"], "escrow_micro": everything["escrow_micro"]}
    if node is not None:
        one = ledger_selectors.balance_totals(node_ids=[node.pk])
        balances["node_earnings_micro"] = one["earnings_micro"]
        balances["node_escrow_micro"] = one["escrow_micro"]
    return balances


def node_of_owner(*, user: AbstractBaseUser, node_id: str) -> Node | None:
    try:
        pk = uuid.UUID(node_id)
    except (ValueError, TypeError, AttributeError):
        return None
    return Node.objects.filter(pk=pk, owner=user).first()


def node_status(*, node: Node) -> dict[str, Any]:
    """The node's standing per subnet, its work by outcome and its latest assignments."""
    links = NodeSubnet.objects.filter(node=node).select_related("subnet").order_by("subnet__slug")
    by_state = dict(
        Assignment.objects.filter(node=node).values("state").annotate(n=Count("pk")).values_list("state", "n")
    )
    recent = (
        Assignment.objects.filter(node=node)
        .select_related("job")
        .order_by("-dispatched_at")[:RECENT_ASSIGNMENTS]
    )
    return {
        "id": str(node.pk),
        "name": node.name,
        "is_online": node.is_online,
        "reputation": node.reputation,
        "runtime": node.runtime,
        "backend": node.backend,
        "os": node.os,
        "gpu_family": node.gpu_family,
        "subnets": [
            {
                "slug": link.subnet.slug,
                "ready": link.ready_at is not None,
                "score": link.score,
                "items_per_s": link.items_per_s,
                "latency_p50_ms": link.latency_p50_ms,
                "latency_p95_ms": link.latency_p95_ms,
                "benchmarked_at": link.benchmarked_at.isoformat() if link.benchmarked_at else None,
            }
            for link in links
        ],
        "counts": {state: by_state.get(state, 0) for state in AssignmentState.values},
        "assignments": [
            {
                "assignment_id": str(a.pk),
                "job_id": str(a.job_id),
                "role": a.role,
                "state": a.state,
                "items": a.job.item_count,
                "job_state": a.job.state,
                "elapsed_ms": a.elapsed_ms,
                "dispatched_at": a.dispatched_at.isoformat(),
                "submitted_at": a.submitted_at.isoformat() if a.submitted_at else None,
            }
            for a in recent
        ],
    }

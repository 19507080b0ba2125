"""Contributor reads: what the dashboard shows (subnets and opt-ins, this browser's node,
its recent work and the owner's ledger balances)."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count

from bim_core import scoring
from bim_core.money import MICRO, micro_to_text
from ledger import payouts
from ledger import selectors as ledger_selectors
from registry import selectors as registry_selectors
from registry.models import Assignment, AssignmentState, Node, NodeSubnet
from subnets import selectors as subnet_selectors
from subnets.models import EulaAcceptance, Subnet

RECENT_ASSIGNMENTS = 50


# The task families the dashboard's engines compute (js/app.js ENGINES, js/task-families.js:
# embeddings and images with onnxruntime-web, text with llama.cpp in WebAssembly).
BROWSER_TASK_TYPES = frozenset({"embedding", "image", "text"})


def subnets_with_opt_in(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Every active subnet with the user's standing opt-in (None when they never opted in,
    opted out, or its license changed since), the latest acceptance (to say which), and why
    a browser cannot serve it ("" when it can)."""
    latest: dict[int, EulaAcceptance] = {}
    for acceptance in EulaAcceptance.objects.filter(user=user).select_related("license").order_by("accepted_at", "pk"):
        latest[acceptance.subnet_id] = acceptance
    rows = []
    for subnet in subnet_selectors.subnet_list_active():
        last = latest.get(subnet.pk)
        standing = (
            last
            if last is not None
            and last.withdrawn_at is None
            and (last.license_id, last.license_version) == (subnet.license_id, subnet.license.version)
            else None
        )
        rows.append({"subnet": subnet, "acceptance": standing, "latest": last, "unavailable": _unavailable(subnet, last, standing)})
    return rows


def _unavailable(subnet: Subnet, last: EulaAcceptance | None, standing: EulaAcceptance | None) -> str:
    if subnet.task_type not in BROWSER_TASK_TYPES:
        return f"browsers do not compute {subnet.task_type} jobs yet; a headless node (bim-node) can serve it"
    if last is not None and last.withdrawn_at is None and standing is None:
        return (
            f"its license changed to {subnet.license.slug} {subnet.license.version} since you accepted "
            f"{last.license_version}: review it again to keep serving it"
        )
    return ""


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
                # Real jobs on the registry's clock, offer to result (what routing uses once
                # there are any): the dashboard sets it beside the benchmark's figure.
                "observed_items_per_s": link.observed_items_per_s,
                "observed_latency_ms": link.observed_latency_ms,
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


def opt_in_terms(*, subnet: Subnet) -> dict[str, str]:
    """The opt-in page's plain terms (issue 12): what a credit is worth, what a job pays and
    how it is split, escrow, slashing and bans, what the browser sees, how to withdraw."""
    per_minor = settings.BIM_MICRO_PER_MINOR_UNIT
    credit_minor = MICRO / per_minor
    family = {"embedding": "texts", "text": "prompts and the generated text", "image": "images"}
    policy = scoring.ReputationPolicy.from_dict(subnet.reputation_policy)
    return {
        "credit": f"1 credit = {credit_minor:g} {settings.BIM_CURRENCY.upper()} minor units (cents)"
        if credit_minor != 1
        else f"1 credit = 1 {settings.BIM_CURRENCY.upper()} cent",
        "price": f"{micro_to_text(subnet.price_per_call_micro)} credits a job plus "
        f"{micro_to_text(subnet.price_per_item_micro)} per {'token' if subnet.task_type == 'text' else 'item'}",
        "split": f"each of the two contributors whose results agree gets {subnet.split_node_a_bp / 100:g} % "
        f"of the price; the registry keeps {subnet.split_registry_bp / 100:g} %",
        "escrow": f"{subnet.escrow_share_bp / 100:g} % of each payout goes to your escrow until it holds "
        f"{micro_to_text(subnet.escrow_required_micro)} credits; escrow is yours, and is what a slash takes",
        "slashing": f"a wrong result caught by a honeypot or a sentinel re-run costs {subnet.honeypot_slash_bp / 100:g} % "
        f"of your escrow (refunding the job's user) and a strike; {policy.strikes_to_ban} active strikes ban "
        f"your node for {policy.ban_h:g} hours. Missing a deadline or a refused result is a strike too",
        "data": f"your browser receives the users' {family.get(subnet.task_type, 'inputs')} for the jobs it computes, "
        "and computes their outputs: do not contribute from a device you do not trust with them",
        "withdraw": f"earnings of at least {micro_to_text(settings.LEDGER_MIN_WITHDRAWAL_MICRO)} credits can be "
        "withdrawn on the Earnings page (or POST /api/v1/withdrawals/); an operator approves each "
        "withdrawal, and no fee is taken",
    }


def owner_nodes(*, user: AbstractBaseUser) -> list[Node]:
    return list(Node.objects.filter(owner=user).order_by("name"))


def owner_nodes_with_balances(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """Each of the user's nodes with its earnings and escrow (micro-credits and as text)."""
    rows = []
    for node in owner_nodes(user=user):
        totals = ledger_selectors.balance_totals(node_ids=[node.pk])
        rows.append(
            {
                "node": node,
                "earnings": micro_to_text(totals["earnings_micro"]),
                "escrow": micro_to_text(totals["escrow_micro"]),
            }
        )
    return rows


def withdrawals_of_owner(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    names = dict(Node.objects.filter(owner=user).values_list("pk", "name"))
    return [
        {"withdrawal": w, "node": names.get(w.node_id, str(w.node_id)), "credits": micro_to_text(w.amount)}
        for w in ledger_selectors.withdrawal_list_for_user(user=user)[:100]
    ]


def payout_destination_of(*, user: AbstractBaseUser) -> Any:
    return payouts.payout_destination_of(user=user)

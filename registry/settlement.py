"""Settlement paths: pay an agreeing pair, a trusted solo node or a re-scored text pair;
strike the minority; fail and refund when nobody can be trusted.
"""

from __future__ import annotations

import uuid
from typing import Any

from bim_core import families
from bim_core.verification import Verdict
from ledger import services as ledger

from . import metrics, p2p, policy_enforcement, reputation, selectors, turn_usage
from .jobs import job_transition
from .models import (
    Assignment,
    AssignmentState,
    Job,
    JobState,
)
from .prepared import PreparedUpdate
from .receipts import receipt_build
from .terms import JobTerms


def job_settle_rescored(
    job: Job,
    pair: tuple[Assignment, Assignment],
    verdict: Verdict,
    verification: dict[str, Any],
    evidence: dict[str, dict[str, Any]],
) -> None:
    """Settle a text pair on re-scoring: both sequences within the margin is honest
    nondeterminism (a near-tie flipped): both are paid, nobody is struck. One within it:
    its node is paid as the majority (the registry, which did the tie-breaker's work, takes
    the tie-breaker's share) and the other gets nothing and a strike. Neither: the job
    fails, the user is refunded and both nodes are struck."""
    verification = {
        **verification,
        "path": "rescored",
        "rescoring": {x.role: evidence[x.result_hash] for x in pair},
    }
    accepted = tuple(x for x in pair if evidence[x.result_hash]["accepted"])
    rejected = tuple(x for x in pair if not evidence[x.result_hash]["accepted"])
    verification["majority"] = [x.role for x in accepted]
    if not accepted:
        Assignment.objects.filter(pk__in=[x.pk for x in pair]).update(state=AssignmentState.DISAGREED)
        why = "re-scoring accepted neither sequence"
        job_transition(job, JobState.FAILED, detail=why, failure_reason=why, verification=verification)
        if job.price_micro:
            ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason=why)
        reputation.reputation_record(node_ids=[x.node_id for x in pair], outcome=0.0, subnet=job.subnet)
        for loser in pair:
            reputation.node_strike(node_id=loser.node_id, reason="re-scoring rejected its tokens", job_id=job.id, subnet=job.subnet)
        return
    detail = "rescored: both within the margin" if not rejected else f"rescored: {rejected[0].role} rejected"
    reason = "" if not rejected else f"re-scoring rejected {rejected[0].role}"
    settled = Verdict(True, "tokens", verdict.worst, reason)
    job_settle_agreed(job, accepted, rejected, settled, verification, detail=detail, strike_reason="re-scoring rejected its tokens")


def job_settle_solo(job: Job, solo: Assignment) -> None:
    """A trusted node's unchecked result: the user pays solo_price_bp of the pair price (the
    rest of the hold is released), the node earns what it would in a pair, the registry the
    remainder. No reputation is earned by unchecked work."""
    terms = JobTerms.of_job(job)
    if _output_withheld(job, (solo,), (), {"path": "solo"}):
        return
    amount = _price_captured(job, solo) * terms.solo_price_bp // 10_000
    node_bp = min(10_000, terms.split_node_a_bp * 10_000 // max(1, terms.solo_price_bp))
    transfers = _pay(job, amount, (solo,), (node_bp, 0, 10_000 - node_bp))
    Assignment.objects.filter(pk=solo.pk).update(state=AssignmentState.AGREED)
    verdict = Verdict(True, "unchecked", None, "trusted node, not replicated")
    verification = {"path": "solo", **verdict.as_dict(), "price_micro": amount}
    receipt = receipt_build(job, [solo], verdict, transfers, "solo")
    job_transition(job, JobState.SETTLED, detail="solo (adaptive replication)", verification=verification, receipt=receipt)
    metrics.job_settled_record(subnet_slug=job.subnet.slug, created_at=job.created_at)


def job_settle_agreed(
    job: Job,
    majority: tuple[Assignment, ...],
    struck: tuple[Assignment, ...],
    verdict: Verdict,
    verification: dict[str, Any],
    *,
    detail: str,
    strike_reason: str = "minority in a tie-break",
) -> None:
    """Pay the agreeing pair, update reputations, sign the receipt, mark the job settled.
    A majority of one (a text pair settled by re-scoring) is paid node A's share; the
    registry, which re-scored, keeps the rest."""
    terms = JobTerms.of_job(job)
    if _output_withheld(job, majority, struck, verification, strike_reason=strike_reason):
        return
    split_bp = terms.split_bp if len(majority) == 2 else (terms.split_node_a_bp, 0, 10_000 - terms.split_node_a_bp)
    amount = _price_captured(job, majority[0])
    transfers = _pay(job, amount, majority, split_bp)
    # A majority is two nodes (2 of 2, 2 of 3) or one (a pair settled by re-scoring), whose
    # id then goes twice.
    _assignments_agreed.run(majority[0].pk, majority[-1].pk)
    for loser in struck:
        Assignment.objects.filter(pk=loser.pk).update(state=AssignmentState.DISAGREED)
    receipt = receipt_build(
        job, list(majority), verdict, transfers, verification["path"], verification.get("rescoring")
    )
    job_transition(job, JobState.SETTLED, detail=detail, verification=verification, receipt=receipt)
    # The nodes' rows, which every settlement of theirs locks, last: held from here to the
    # commit, not across the receipt's signature (issue 13's lock waits).
    reputation.reputation_record(node_ids=[x.node_id for x in majority], outcome=1.0, subnet=job.subnet)
    for loser in struck:
        reputation.reputation_record(node_ids=[loser.node_id], outcome=0.0, subnet=job.subnet)
        reputation.node_strike(node_id=loser.node_id, reason=strike_reason, job_id=job.id, subnet=job.subnet)
    metrics.job_settled_record(subnet_slug=job.subnet.slug, created_at=job.created_at)


# Once per settled job, compiled once (registry.prepared).
_assignments_agreed = PreparedUpdate(
    lambda first, second: (Assignment.objects.filter(pk__in=[first, second]), {"state": AssignmentState.AGREED}),
    (uuid.UUID, uuid.UUID),
)


def _output_withheld(
    job: Job,
    majority: tuple[Assignment, ...],
    struck: tuple[Assignment, ...],
    verification: dict[str, Any],
    *,
    strike_reason: str = "",
) -> bool:
    """A verified text that breaks the contract's output rules is not delivered: the job
    fails as content_policy_output:<rule>, the user's hold is released in full and nobody
    is paid. The nodes computed what the model produces for the user's prompt, so none is
    struck and the verification stands for reputations (a minority is still struck: it
    disagreed with the model). Paying them would mean charging the user for text they may
    not receive, or the registry paying for it (a payout farm for prompts that steer the
    model into a blocked output); refusing both keeps every posting balanced, as a job with
    no majority does, and costs each node one job's compute (docs/content-policy.md)."""
    if majority[0].result is None:
        return False  # peer to peer, bytes never held: only without output rules (p2p_uploads.uploads_needed)
    violation = policy_enforcement.output_violation(job, selectors.assignment_result(majority[0]))
    if violation is None:
        return False
    Assignment.objects.filter(pk__in=[x.pk for x in majority]).update(state=AssignmentState.AGREED)
    if verification.get("path") != "solo":
        reputation.reputation_record(node_ids=[x.node_id for x in majority], outcome=1.0, subnet=job.subnet)
    for loser in struck:
        Assignment.objects.filter(pk=loser.pk).update(state=AssignmentState.DISAGREED)
        reputation.reputation_record(node_ids=[loser.node_id], outcome=0.0, subnet=job.subnet)
        reputation.node_strike(node_id=loser.node_id, reason=strike_reason, job_id=job.id, subnet=job.subnet)
    withheld = {**verification, "withheld": {"rule": violation.rule, "detail": violation.detail}}
    policy_enforcement.job_fail_for_content(
        job, reason=f"content_policy_output:{violation.rule}", verification=withheld
    )
    return True


def _pay(job: Job, amount: int, paid: tuple[Assignment, ...], split_bp: tuple[int, int, int]) -> list[Any]:
    """Capture `amount` of the job's hold (releasing the rest) and pay it out to the paid
    nodes and the registry by `split_bp`, the subnet's escrow rule applied: one posting."""
    if not amount:
        return []
    terms = JobTerms.of_job(job)
    # A peer-to-peer job's relaying (TURN, as its nodes report it bounded by what the TURN
    # server reported, and the registry relay), within the reserve its hold carries; a
    # relay job is priced without it.
    relayed = turn_usage.turn_bytes_charged(job) + job.relay_bytes if p2p.job_is_p2p(job) else 0
    return ledger.job_settle(
        job_id=job.id,
        user=job.user,
        amount=amount,
        held=job.price_micro,
        node_ids=tuple(x.node_id for x in paid),
        split_bp=split_bp,
        escrow=ledger.NodeEscrowRule(share_bp=terms.escrow_share_bp, required=terms.escrow_required_micro),
        surcharge=terms.relay_surcharge(relayed) if relayed else 0,
    )


def _price_captured(job: Job, delivered: Assignment) -> int:
    """What the user pays: the held price, or less when the delivered result used fewer
    units than the hold covers (a text job holds max_tokens and pays for the tokens
    generated); settlement releases the rest. Never more than the hold."""
    family = families.family_for(job.subnet.task_type)
    sized = p2p.inputs_or_summary(job)
    terms = JobTerms.of_job(job)
    # A peer-to-peer job's hold also reserves its relay surcharge, captured apart (_pay).
    held = job.price_micro - (terms.relay_reserve_micro if p2p.job_is_p2p(job) and job.price_micro else 0)
    # From the signed shape: a peer-to-peer result's bytes may never have reached the registry.
    used = family.used_units_of_shape(sized, tuple(delivered.result_shape or ()))
    if not job.price_micro or used >= family.price_units(sized):
        return held
    return min(held, terms.price_for(used))

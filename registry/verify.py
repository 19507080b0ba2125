"""Verification: compare a job's results under its subnet's tolerances, re-score a text
pair that differs, send a mismatch to a tie-breaker and adjudicate 2-of-3.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Least

from bim_core import families, protocol
from bim_core.errors import ServiceError
from bim_core.verification import Verdict, identical_verdict, judge_rescored, verify_pair
from ledger import services as ledger
from subnets.models import Subnet
from subnets.services import trusted_rescore

from . import effects, honeypots, metrics, p2p, p2p_uploads, reputation, selectors, turn_usage
from .jobs import PAIR_ROLES, job_locked, job_transition
from .models import (
    AgreementStat,
    Assignment,
    AssignmentRole,
    AssignmentState,
    Job,
    JobState,
    Node,
)
from .prepared import PreparedQuery, PreparedUpdate
from .settlement import job_settle_agreed, job_settle_rescored, job_settle_solo

log = logging.getLogger("bim.registry.verify")


# Prepared (registry.prepared): read once for every job verified.
_submitted_with_nodes = PreparedQuery(
    lambda job_id: Assignment.objects.filter(job_id=job_id, state=AssignmentState.SUBMITTED).select_related("node"),
    (uuid.UUID,),
)


def job_verify(*, job_id: object, may_rescore: bool = True) -> Job | None:
    """Compare the pair and settle on agreement; on a mismatch send the contract to a
    tie-breaker (nothing is paid yet). With the tie-breaker's result in, adjudicate. A text
    pair that differs is re-scored instead, on the registry's own runner, before the job
    row is locked (a model pass takes a second or more) and settled on that evidence;
    `may_rescore=False` says the caller knows no re-scoring can apply (saves its read)."""
    rescored = _text_rescoring(job_id) if may_rescore else None
    with transaction.atomic(), _agreements_last():
        return _job_verify_locked(job_id, rescored)


def _job_verify_locked(job_id: object, rescored: dict[str, dict[str, Any]] | None) -> Job | None:
    """job_verify's work, in its transaction."""
    job = job_locked(job_id)
    if job is None:
        return None
    results = {a.role: a for a in _submitted_with_nodes.all(job.pk)}
    for assignment in results.values():
        assignment.job = job  # as job.assignments gives them: no read of the job again
    if job.state == JobState.ADJUDICATING and AssignmentRole.C in results:
        return job_adjudicate(job, results)
    if job.state != JobState.VERIFYING:
        return job
    if p2p.job_is_p2p(job) and not job.solo and len(results) < len(PAIR_ROLES):
        # A pair member did not show its committed bytes (struck): its partner goes on,
        # to the honeypot's answer or to a tie-breaker.
        if job.honeypot_id is not None and results and all(x.result is not None for x in results.values()):
            verification = honeypots.honeypot_judge(job, list(results.values()), rescored=rescored or {})
            job_transition(job, JobState.SETTLED, detail="honeypot checked", verification=verification)
        else:
            p2p_uploads.tie_breaker_without_silent(job)
        return job
    if p2p.job_is_p2p(job) and p2p_uploads.payload_wait(job, list(results.values())):
        return job  # peer to peer: the user's confirmation, or an upload, is still due
    if p2p.job_is_p2p(job) and turn_usage.report_wait(job):
        return job  # the TURN server's own figure of what it relayed is on its way
    if job.solo:
        job_settle_solo(job, results[AssignmentRole.A])
        return job
    a, b = results[AssignmentRole.A], results[AssignmentRole.B]
    if job.honeypot_id is not None:
        verification = honeypots.honeypot_judge(job, [a, b], rescored=rescored or {})
        job_transition(job, JobState.SETTLED, detail="honeypot checked", verification=verification)
        return job
    if a.result is None or b.result is None:
        # Peer to peer, the same hash committed twice and delivered: the same bytes.
        verdict = identical_verdict(job.subnet.task_type)
        agreement_record(subnet=job.subnet, nodes=(a.node, b.node), verdict=verdict)
        verification = {"path": "2-of-2", **verdict.as_dict(), "threshold": job.contract["tolerances"], "transport": "p2p"}
        job_settle_agreed(job, (a, b), (), verdict, verification, detail="2-of-2 agreement (peer to peer)")
        return job
    verdict = _compare(job, a, b)
    verification = {"path": "2-of-2", **verdict.as_dict(), "threshold": job.contract["tolerances"]}
    if not verdict.passed and rescored is not None and {a.result_hash, b.result_hash} <= rescored.keys():
        job_settle_rescored(job, (a, b), verdict, verification, rescored)
        return job
    if not verdict.passed:
        job_transition(job, JobState.ADJUDICATING, detail=verdict.reason, verification=verification)
        effects.queue_task("dispatch_job", str(job.id))
        return job
    job_settle_agreed(job, (a, b), (), verdict, verification, detail="2-of-2 agreement")
    return job


def verification_is_quick(job: Job) -> bool:
    """Whether verifying the job (its results all in) is a comparison and a settlement,
    no model pass: every family but text, and a text pair that answered identically."""
    if not families.family_for(job.subnet.task_type).rescored_on_mismatch:
        return True
    if job.solo or job.state == JobState.ADJUDICATING:
        return True  # nothing to re-score: one result, or a 2-of-3 vote
    if job.honeypot_id is not None:
        return False
    hashes = job.assignments.filter(role__in=PAIR_ROLES, state=AssignmentState.SUBMITTED).values_list(
        "result_hash", flat=True
    )
    return len(set(hashes)) == 1


def job_verify_now(*, job_id: object) -> None:
    """Verify where the last result arrived; if that fails, the task does it again (and
    failing there too, the sweeper finds the job still verifying)."""
    try:
        job_verify(job_id=job_id, may_rescore=False)  # quick: verification_is_quick said so
    except Exception:
        log.exception("job %s: verifying in place failed; queued for a worker", job_id)
        effects.queue_task("verify_job", str(job_id))


def _text_rescoring(job_id: object) -> dict[str, dict[str, Any]] | None:
    """The evidence that settles a text pair that differs, keyed by result hash: each
    claimed sequence re-scored in one teacher-forced pass on the registry's trusted runner
    (no third node to find and wait for, and a forged token is caught, where a third node's
    vote could only outnumber it). For a honeypot, each result that is not the registry's
    own answer is re-scored, so an honest node whose CPU flipped a near-tie is not punished.
    None when there is nothing to re-score, or no runner here (the job then goes to a third
    node). Reads without locks: job_verify re-checks the hashes."""
    job = (
        Job.objects.select_related("subnet", "honeypot")
        .filter(pk=job_id, state=JobState.VERIFYING, solo=False)
        .first()
    )
    if job is None or not families.family_for(job.subnet.task_type).rescored_on_mismatch:
        return None
    pair = list(job.assignments.filter(state=AssignmentState.SUBMITTED, role__in=PAIR_ROLES))
    if job.honeypot is not None:
        known = protocol.sha256_hex(bytes(job.honeypot.result))
        # One per claimed sequence, one that holds its bytes where there is one (a
        # peer-to-peer pair that committed the same hash uploaded it once).
        claims = {x.result_hash: x for x in sorted(pair, key=lambda x: x.result is not None)}
        pair = [x for x in claims.values() if x.result_hash != known]
    elif len(pair) != 2 or pair[0].result_hash == pair[1].result_hash:
        return None
    if not pair or any(x.result is None for x in pair):
        return None  # a peer-to-peer payload not uploaded yet: job_verify asks for it
    margin = float(job.contract["tolerances"]["logit_margin"])
    # A peer-to-peer honeypot's job holds no inputs unless a node uploaded them: the
    # registry's own copy is the same (its hash is the contract's).
    inputs = job.honeypot.inputs if job.honeypot is not None else job.inputs
    evidence = {}
    for assignment in pair:
        try:
            rescoring = trusted_rescore(job.subnet, inputs, selectors.assignment_result(assignment))
        except ServiceError as exc:
            log.warning("job %s: cannot re-score here (%s); a third node will break the tie", job.id, exc.detail)
            return None
        within, failing = judge_rescored(rescoring.positions, margin)
        gaps = [top - claimed for claimed, top in rescoring.positions]
        worst_gap = max(gaps, default=0.0)
        evidence[assignment.result_hash] = {
            "accepted": within and not rescoring.problems,
            "tokens": len(rescoring.positions),
            "max_gap": round(worst_gap, 4) if math.isfinite(worst_gap) else None,
            "failing_positions": failing[:20],
            "problems": rescoring.problems,
        }
    return evidence


def _compare(job: Job, first: Assignment, second: Assignment) -> Verdict:
    verdict = verify_pair(
        job.subnet.task_type,
        selectors.assignment_result(first),
        selectors.assignment_result(second),
        job.contract["tolerances"],
    )
    metrics.verification_record(subnet_slug=job.subnet.slug, passed=verdict.passed, similarity=verdict.worst)
    agreement_record(subnet=job.subnet, nodes=(first.node, second.node), verdict=verdict)
    return verdict


def node_environment(node: Node) -> str:
    return f"{node.runtime or '?'}/{node.backend or '?'}/{node.gpu_family or '?'}"


# Samples job_verify records last in its transaction (`_agreements_last`).
_deferred_agreements: ContextVar[list[tuple[Subnet, str, str, bool, float]] | None] = ContextVar(
    "deferred_agreements", default=None
)


@contextmanager
def _agreements_last() -> Iterator[None]:
    """Record the agreement samples of a verification as the last statements of its
    transaction. One row per subnet and pair of environments takes every settlement's
    sample: updated first, it stayed locked while the settlement went on (the ledger
    posting, reputations, the receipt's signature), and settlements queued behind each
    other on it (the most waited-for lock in bench/throughput.py, issue 13). Last, it is
    held for the commit alone."""
    token = _deferred_agreements.set([])
    try:
        yield
        for sample in _deferred_agreements.get() or []:
            _agreement_add(*sample)
    finally:
        _deferred_agreements.reset(token)


def agreement_record(*, subnet: Subnet, nodes: tuple[Node, Node], verdict: Verdict) -> None:
    """Add one compared pair to its environments' agreement statistics (within job_verify,
    at the end of its transaction)."""
    if verdict.worst is None:
        return
    env_a, env_b = sorted(node_environment(n) for n in nodes)
    sample = (subnet, env_a, env_b, verdict.passed, verdict.worst)
    deferred = _deferred_agreements.get()
    if deferred is not None:
        deferred.append(sample)
    else:
        _agreement_add(*sample)


def _agreement_add(subnet: Subnet, env_a: str, env_b: str, passed: bool, worst: float) -> None:
    # The row exists but for a pair of environments' first comparison: one statement then.
    if not _agreement_update.run(subnet.pk, env_a, env_b, int(passed), worst):
        AgreementStat.objects.get_or_create(subnet=subnet, env_a=env_a, env_b=env_b)
        _agreement_update.run(subnet.pk, env_a, env_b, int(passed), worst)


# Once per verified pair, compiled once (registry.prepared).
_agreement_update = PreparedUpdate(
    lambda subnet_id, env_a, env_b, passed, worst: (
        AgreementStat.objects.filter(subnet_id=subnet_id, env_a=env_a, env_b=env_b),
        {
            "samples": F("samples") + 1,
            "passed": F("passed") + passed,
            "sum_similarity": F("sum_similarity") + worst,
            "min_similarity": Coalesce(Least("min_similarity", Value(worst)), Value(worst)),
        },
    ),
    (int, str, str, int, float),
)


def _adjudicate_without_silent(job: Job, partner: Assignment, c: Assignment) -> Job:
    """2-of-3 of a peer-to-peer job whose other pair member was struck for not uploading its
    committed bytes (p2p_uploads.tie_breaker_without_silent): the partner and the tie-breaker agree,
    and are paid as a pair, or the job fails with the user's hold released."""
    verdict = _compare(job, partner, c)
    verification = {**job.verification, "path": "2-of-3", "tie_break": {f"{partner.role.lower()}_c": verdict.as_dict()}}
    if not verdict.passed:
        Assignment.objects.filter(pk__in=[partner.pk, c.pk]).update(state=AssignmentState.DISAGREED)
        job_transition(job, JobState.FAILED, detail="no majority", failure_reason="no majority", verification=verification)
        if job.price_micro:
            ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason="no majority in tie-break")
        reputation.reputation_record(node_ids=[partner.node_id, c.node_id], outcome=0.0, subnet=job.subnet)
        return job
    verification["majority"] = [partner.role, c.role]
    job_settle_agreed(job, (partner, c), (), verdict, verification, detail="2-of-3, the other node did not upload")
    return job


def job_adjudicate(job: Job, results: dict[str, Assignment]) -> Job:
    """2-of-3: the tie-breaker sides with A or B. The majority pair is paid as a normal
    settlement; the minority gets nothing, a strike and a zero reputation outcome. If C
    agrees with neither, there is no majority: the job fails and the user is refunded."""
    c = results[AssignmentRole.C]
    if AssignmentRole.A not in results or AssignmentRole.B not in results:
        return _adjudicate_without_silent(job, results.get(AssignmentRole.A) or results[AssignmentRole.B], c)
    a, b = results[AssignmentRole.A], results[AssignmentRole.B]
    with_a, with_b = _compare(job, a, c), _compare(job, b, c)
    verification = {
        **job.verification,
        "path": "2-of-3",
        "tie_break": {"a_c": with_a.as_dict(), "b_c": with_b.as_dict()},
    }
    if not with_a.passed and not with_b.passed:
        Assignment.objects.filter(pk__in=[a.pk, b.pk, c.pk]).update(state=AssignmentState.DISAGREED)
        job_transition(job, JobState.FAILED, detail="no majority", failure_reason="no majority", verification=verification)
        if job.price_micro:
            ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason="no majority in tie-break")
        reputation.reputation_record(node_ids=[a.node_id, b.node_id, c.node_id], outcome=0.0, subnet=job.subnet)
        return job
    # When C agrees with both, A and B differ only at the edge of tolerance: C sides with
    # the closer one and nobody is struck.
    sides_with_a = with_a.passed and (not with_b.passed or (with_a.worst or 0) >= (with_b.worst or 0))
    majority, minority, verdict = ((a, c), b, with_a) if sides_with_a else ((b, c), a, with_b)
    struck = () if with_a.passed and with_b.passed else (minority,)
    verification["majority"] = [x.role for x in majority]
    job_settle_agreed(job, majority, struck, verdict, verification, detail=f"2-of-3, minority {minority.role}")
    return job

"""Sentinel re-runs: the registry re-computes a sample of settled jobs with the subnet's own
files and records how far each settled result drifted; drift beyond the subnet's tolerance
opens a dispute for operators (paper §6: long-term drift must not accumulate unseen) and,
where tolerance alone judges results, costs the nodes that agreed on it what a failed
honeypot costs, refunding the user."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from bim_core import families
from bim_core.verification import verify_pair
from subnets.services import trusted_run

from . import selectors
from .models import Assignment, AssignmentState, Dispute, Job, JobState, SentinelRun
from .penalties import wrong_result_punish

log = logging.getLogger("bim.registry.sentinels")


def sentinel_check(*, job: Job) -> SentinelRun:
    """Re-run one settled job and compare the delivered result with the trusted one."""
    delivered = selectors.job_delivered_assignment(job=job)
    if delivered is None:
        raise ValueError(f"job {job.id} has no delivered result to check")
    trusted = trusted_run(job.subnet, job.inputs)
    verdict = verify_pair(
        job.subnet.task_type, selectors.assignment_result(delivered), trusted, job.contract["tolerances"]
    )
    with transaction.atomic():
        run = SentinelRun.objects.create(job=job, similarity=verdict.worst, passed=verdict.passed, detail=verdict.reason[:200])
        if not verdict.passed:
            Dispute.objects.get_or_create(
                job=job, defaults={"sentinel": run, "reason": f"sentinel re-run drifted: {verdict.reason}"[:300]}
            )
            log.warning("sentinel opened a dispute on job %s: %s", job.id, verdict.reason)
            _agreeing_nodes_punish(job, trusted, run)
    return run


def _agreeing_nodes_punish(job: Job, trusted: object, run: SentinelRun) -> None:
    """Nodes that agreed on a result outside the subnet's tolerance of the registry's own
    answer colluded or share a broken build: a retroactive honeypot, with its penalty
    (the slash refunds the user). Not for families whose honest results may differ beyond
    tolerance and are settled by re-scoring (text): there the dispute is for operators."""
    if families.family_for(job.subnet.task_type).rescored_on_mismatch:
        return
    for assignment in job.assignments.filter(state=AssignmentState.AGREED):
        verdict = verify_pair(
            job.subnet.task_type, selectors.assignment_result(assignment), trusted, job.contract["tolerances"]
        )
        if not verdict.passed:
            wrong_result_punish(
                job=job,
                assignment=assignment,
                strike_reason="failed a sentinel re-run",
                evidence=f"sentinel run {run.pk}: {verdict.reason}",
            )


def sentinels_run(*, sample: int = 5) -> int:
    """Beat: check a random sample of settled user jobs not checked before."""
    unchecked = (
        Job.objects.filter(state=JobState.SETTLED, honeypot__isnull=True, sentinel_runs__isnull=True)
        # A peer-to-peer job is re-run once the registry holds its input and a payload (an
        # audit or a dispute uploaded them, docs/p2p.md); until then there is nothing to run.
        .exclude(inputs={})
        .filter(
            Exists(Assignment.objects.filter(job=OuterRef("pk"), state=AssignmentState.AGREED, result__isnull=False))
        )
        .select_related("subnet")
        .order_by("?")[:sample]
    )
    checked = 0
    for job in unchecked:
        sentinel_check(job=job)
        checked += 1
    return checked


def dispute_resolve(*, dispute: Dispute, resolution: str) -> None:
    Dispute.objects.filter(pk=dispute.pk, resolved_at__isnull=True).update(
        resolved_at=timezone.now(), resolution=resolution[:300]
    )

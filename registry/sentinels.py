"""Sentinel re-runs: the registry re-computes a sample of settled jobs with the subnet's own
files and records how far each settled result drifted; drift beyond the subnet's tolerance
opens a dispute for operators (paper §6: long-term drift must not accumulate unseen)."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from bim_core.verification import verify_pair
from subnets.services import trusted_run

from . import selectors
from .models import Dispute, Job, JobState, SentinelRun

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
    return run


def sentinels_run(*, sample: int = 5) -> int:
    """Beat: check a random sample of settled user jobs not checked before."""
    unchecked = (
        Job.objects.filter(state=JobState.SETTLED, honeypot__isnull=True, sentinel_runs__isnull=True)
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

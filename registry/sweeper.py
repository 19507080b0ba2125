"""The registry's clock: drop silent nodes, take back assignments past their deadline or
their node's reconnect grace, expire overdue jobs, place waiting jobs and verify jobs whose
verification task was lost. Each job is handled in a savepoint of its own
(`jobs.job_step_isolated`): one job that cannot move never stops the others.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import p2p_uploads, presence
from .dispatch import jobs_dispatch_waiting
from .jobs import job_expire, job_locked, job_step_isolated
from .models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    AssignmentRole,
    AssignmentState,
    Job,
    JobState,
)
from .takeback import assignments_lose_disconnected, assignments_lose_overdue
from .verify import job_verify


def jobs_expire_overdue() -> int:
    overdue = Job.objects.filter(state__in=ALLOWED_TRANSITIONS.keys() - TERMINAL_STATES, expires_at__lte=timezone.now())
    expired = 0
    for job_id in overdue.values_list("id", flat=True)[:1000]:
        expired += bool(job_step_isolated(job_id, "expiry", lambda job_id=job_id: _job_expire_if_overdue(job_id)))
    return expired


def _job_expire_if_overdue(job_id: object) -> bool:
    job = job_locked(job_id)
    if job is None or job.state in TERMINAL_STATES or job.expires_at > timezone.now():
        return False
    if JobState.EXPIRED not in ALLOWED_TRANSITIONS[job.state]:
        return False  # a verifying job has both results: let verification finish it
    job_expire(job)
    return True


def sweep() -> dict[str, int]:
    """The registry's clock: drop silent nodes, take back overdue and abandoned
    assignments, expire overdue jobs, place waiting jobs."""
    # Liveness is in the cache (heartbeats write no row): presence decides who is silent.
    # Dropped in bulk: a network partition silences thousands at once.
    stale = [(node_id, channel, "") for node_id, channel in presence.nodes_stale()]
    dropped = sum(sum(presence.nodes_disconnect(stale[i : i + 500])) for i in range(0, len(stale), 500))
    return {
        "nodes_dropped": dropped,
        "assignments_overdue": assignments_lose_overdue(),
        "assignments_abandoned": assignments_lose_disconnected(),
        "jobs_expired": jobs_expire_overdue(),
        "assignments_made": jobs_dispatch_waiting(),
        "verifications_retried": jobs_verify_stalled(),
        "uploads_overdue": p2p_uploads.uploads_overdue_handle(),
    }


def jobs_verify_stalled(*, older_than_s: float = 10.0) -> int:
    """Verify jobs whose verification task was lost (a worker died between the results
    and the verdict): both results are in, so the verdict can still be reached."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    stalled = Job.objects.filter(
        Q(state=JobState.VERIFYING, verifying_at__lt=cutoff)
        | Q(
            state=JobState.ADJUDICATING,
            assignments__role=AssignmentRole.C,
            assignments__state=AssignmentState.SUBMITTED,
            assignments__submitted_at__lt=cutoff,
        )
    ).values_list("id", flat=True)[:500]
    for job_id in stalled:
        job_step_isolated(job_id, "verification", lambda job_id=job_id: job_verify(job_id=job_id))
    return len(stalled)


_last_sweep = 0.0


def sweep_if_due(*, interval_s: float = 2.0) -> None:
    """Embedded mode has no Celery beat: node heartbeats drive the sweeper instead, at most
    once per interval per process. With a real worker, beat runs `tasks.sweep`."""
    global _last_sweep
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        return
    now = time.monotonic()
    if now - _last_sweep < interval_s:
        return
    _last_sweep = now
    sweep()

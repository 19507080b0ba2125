"""The registry's clock: drop silent nodes, take back assignments past their deadline or
their node's reconnect grace, expire overdue jobs, place waiting jobs and verify jobs whose
verification task was lost. Each job is handled in a savepoint of its own
(`jobs.job_step_isolated`): one job that cannot move never stops the others.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from . import presence
from .dispatch import jobs_dispatch_waiting
from .jobs import assignments_lose, job_expire, job_locked, job_step_isolated
from .models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    Assignment,
    AssignmentRole,
    AssignmentState,
    Job,
    JobState,
    Node,
)
from .reputation import node_strike
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


def assignments_lose_overdue() -> int:
    """Open assignments past their own deadline: the role goes to another node now, so a
    silent node costs seconds, not the job. Silence in the session that got the offer is
    the node's fault (a strike); a node offline or back with a new session is left
    blameless (the disconnect may be ours)."""
    overdue = Assignment.objects.filter(state=AssignmentState.DISPATCHED, deadline__lte=timezone.now())
    return _assignments_take_back(overdue, "no result by the assignment deadline", blame_online=True)


def assignments_lose_disconnected() -> int:
    """Open assignments of nodes offline for longer than NODE_RECONNECT_GRACE_S since their
    last heartbeat go to other nodes, without blame: a disconnect is not misbehaviour, and
    a node back within the grace keeps its work (a registry restart is nobody's fault)."""
    gone_before = timezone.now() - timedelta(seconds=settings.NODE_RECONNECT_GRACE_S)
    gone = Assignment.objects.filter(state=AssignmentState.DISPATCHED, node__is_online=False).filter(
        Q(node__last_seen__lt=gone_before) | Q(node__last_seen__isnull=True)
    )
    return _assignments_take_back(gone, "node offline past the reconnect grace", blame_online=False)


def _assignments_take_back(candidates: QuerySet[Assignment], reason: str, *, blame_online: bool) -> int:
    taken = 0
    for job_id in candidates.values_list("job_id", flat=True).distinct()[:500]:
        taken += (
            job_step_isolated(
                job_id,
                "taking back assignments",
                lambda job_id=job_id: _job_assignments_take_back(job_id, candidates, reason, blame_online),
            )
            or 0
        )
    return taken


def _job_assignments_take_back(
    job_id: object, candidates: QuerySet[Assignment], reason: str, blame_online: bool
) -> int:
    job = job_locked(job_id)
    if job is None or job.state in TERMINAL_STATES:
        return 0
    # Re-read under the job's lock: a result may have come in since the query above.
    rows = list(
        candidates.filter(job_id=job_id)
        .select_for_update(of=("self",))
        .values_list("pk", "node_id", "node__is_online", "session_key_pub", "node__session_key_pub")
    )
    lost = assignments_lose([(pk, job_id) for pk, *_ in rows], reason)
    for _, node_id, online, offered_to, session in rows:
        # Only silence in the session that received the offer is the node's fault: a node
        # back with a new session (after a restart, maybe ours) may have dropped it.
        if blame_online and online and offered_to == session:
            Node.objects.filter(pk=node_id).update(jobs_failed=F("jobs_failed") + 1)
            node_strike(node_id=node_id, reason=reason, job_id=job_id, subnet=job.subnet)
    return lost


def sweep() -> dict[str, int]:
    """The registry's clock: drop silent nodes, take back overdue and abandoned
    assignments, expire overdue jobs, place waiting jobs."""
    dropped = 0
    # Liveness is in the cache (heartbeats write no row): presence decides who is silent.
    for node_id, channel in presence.nodes_stale():
        dropped += presence.node_disconnect(node_id=node_id, channel_name=channel)
    return {
        "nodes_dropped": dropped,
        "assignments_overdue": assignments_lose_overdue(),
        "assignments_abandoned": assignments_lose_disconnected(),
        "jobs_expired": jobs_expire_overdue(),
        "assignments_made": jobs_dispatch_waiting(),
        "verifications_retried": jobs_verify_stalled(),
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

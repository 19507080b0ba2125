"""The job state machine: legal transitions, the job row lock, expiry.

Every state change runs in one transaction with the job row locked, writes a JobEvent,
and queues its side effects (tasks, messages to nodes) with `transaction.on_commit`, so a
task or message never sees uncommitted state and running a step twice changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.db import transaction
from django.utils import timezone

from bim_core.errors import ServiceError
from ledger import services as ledger

from . import effects, metrics
from .models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    Assignment,
    AssignmentRole,
    AssignmentState,
    Job,
    JobEvent,
    JobState,
)
from .prepared import PreparedQuery, fields_save

log = logging.getLogger("bim.registry")

T = TypeVar("T")


PAIR_ROLES = (AssignmentRole.A, AssignmentRole.B)


def job_trusted_only(job: Job) -> bool:
    """Whether only registry-operated nodes may work on the job: its contract says so (the
    subnet was trusted at submit), or its subnet is trusted now (an operator made it so
    since: stricter applies at once, never looser)."""
    return bool(job.contract.get("trusted")) or job.subnet.trusted


ROLES_BY_STATE = {
    JobState.QUEUED: PAIR_ROLES,
    JobState.DISPATCHED: PAIR_ROLES,
    JobState.ADJUDICATING: (AssignmentRole.C,),
}


OPEN_ASSIGNMENT_STATES = (AssignmentState.DISPATCHED, AssignmentState.SUBMITTED)


class IllegalTransition(Exception):
    pass


def job_transition(job: Job, to_state: str, *, detail: str = "", **fields: Any) -> None:
    """Move a job (whose row the caller has locked) to `to_state`, or raise."""
    if to_state not in ALLOWED_TRANSITIONS[job.state]:
        raise IllegalTransition(f"job {job.id}: {job.state} -> {to_state} is not allowed")
    from_state = job.state
    now = timezone.now()
    job.state = to_state
    stamp = {
        JobState.DISPATCHED: "dispatched_at",
        JobState.VERIFYING: "verifying_at",
    }.get(to_state)
    if stamp and getattr(job, stamp) is None:
        fields[stamp] = now
    if to_state in TERMINAL_STATES:
        fields["finished_at"] = now
    for name, value in fields.items():
        setattr(job, name, value)
    fields_save(job, ("state", *fields))
    JobEvent.objects.create(job=job, from_state=from_state, to_state=to_state, detail=detail[:300])
    if to_state in TERMINAL_STATES and job.transport == "p2p":
        # The user's client holds data channels open for the job: it may close them now.
        message = {"type": "job_state", "job_id": str(job.id), "state": to_state}
        effects.send_to_group(f"job.{job.id}", {"type": "user.forward", "message": message})
    metrics.job_transitions.labels(to_state=to_state).inc()


# Lock the job row only (`of`), and as NO KEY UPDATE so concurrent inserts that reference
# the job (assignments, transfers) don't wait on it or deadlock with it. Prepared: four
# calls a job, and compiling it was more than half of each.
_job_locked = PreparedQuery(
    lambda job_id: Job.objects.select_for_update(no_key=True, of=("self",)).select_related("subnet", "user").filter(pk=job_id),
    (uuid.UUID,),
)


def job_locked(job_id: object) -> Job | None:
    return _job_locked.first(job_id)


def job_cancel(*, user: Any, job_id: object) -> Job:
    """The user takes back a job no node was offered yet: it fails as cancelled and its
    hold is released in full. A job already offered to nodes runs on (their work is paid)."""
    with transaction.atomic():
        job = job_locked(job_id)
        if job is None or job.user_id != user.pk:
            raise ServiceError("not_found", "no job of yours has this id", status=404)
        if job.state != JobState.QUEUED:
            raise ServiceError("job_not_queued", f"the job is {job.state}: only a queued job can be cancelled", status=409)
        job_transition(job, JobState.FAILED, detail="cancelled by its user", failure_reason="cancelled by its user")
        if job.price_micro:
            ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason="job cancelled")
    return job


def job_expire(job: Job, *, reason: str = "deadline passed") -> None:
    job_transition(job, JobState.EXPIRED, detail=reason, failure_reason=reason)
    if job.price_micro:
        ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason="job expired")
    open_assignments = list(job.assignments.filter(state=AssignmentState.DISPATCHED).values_list("id", "node_id"))
    job.assignments.filter(state=AssignmentState.DISPATCHED).update(state=AssignmentState.CANCELLED)
    for assignment_id, node_id in open_assignments:
        event = {"type": "job.cancel", "assignment_id": str(assignment_id)}
        effects.send_to_node(node_id, event)


def assignments_lose(assignments: Iterable[tuple[object, object]], reason: str) -> int:
    """Take open assignments, given as (assignment id, job id), back from their nodes: they
    are lost and each job's missing role is dispatched again on commit. Whether the node
    is to blame is the caller's decision. Returns how many were still open."""
    pairs = list(assignments)
    lost = Assignment.objects.filter(pk__in=[pk for pk, _ in pairs], state=AssignmentState.DISPATCHED).update(
        state=AssignmentState.LOST, failure_reason=reason[:200]
    )
    for job_id in {job_id for _, job_id in pairs}:
        effects.queue_task("dispatch_job", str(job_id))
    return lost


def job_step_isolated(job_id: object, step: str, work: Callable[[], T]) -> T | None:
    """Run one job's step of a batch (a sweep, placing waiting jobs) in a savepoint of its
    own. A job that cannot take the step (its hold reversed, a broken row) is logged and the
    failure recorded on it (a JobEvent, shown in admin) while the batch goes on: one bad job
    must not keep other users' jobs queued past their deadline. Returns None on failure."""
    try:
        with transaction.atomic():
            return work()
    except Exception as exc:
        log.exception("job %s: %s failed", job_id, step)
        state = Job.objects.filter(pk=job_id).values_list("state", flat=True).first()
        if state is not None:
            detail = f"{step} failed: {type(exc).__name__}: {exc}"
            JobEvent.objects.create(job_id=job_id, from_state=state, to_state=state, detail=detail[:300])
        return None

"""The job state machine: legal transitions, the job row lock, expiry.

Every state change runs in one transaction with the job row locked, writes a JobEvent,
and queues its side effects (tasks, messages to nodes) with `transaction.on_commit`, so a
task or message never sees uncommitted state and running a step twice changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from ledger import services as ledger

from . import effects, metrics
from .models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    AssignmentRole,
    AssignmentState,
    Job,
    JobEvent,
    JobState,
)

log = logging.getLogger("bim.registry")


PAIR_ROLES = (AssignmentRole.A, AssignmentRole.B)


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
    job.save(update_fields=["state", *fields])
    JobEvent.objects.create(job=job, from_state=from_state, to_state=to_state, detail=detail[:300])
    metrics.job_transitions.labels(to_state=to_state).inc()


def job_locked(job_id: object) -> Job | None:
    # Lock the job row only (`of`), and as NO KEY UPDATE so concurrent inserts that
    # reference the job (assignments, transfers) don't wait on it or deadlock with it.
    return (
        Job.objects.select_for_update(no_key=True, of=("self",))
        .select_related("subnet", "user")
        .filter(pk=job_id)
        .first()
    )


def job_expire(job: Job) -> None:
    job_transition(job, JobState.EXPIRED, detail="deadline passed", failure_reason="deadline passed")
    if job.price_micro:
        ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason="job expired")
    open_assignments = list(job.assignments.filter(state=AssignmentState.DISPATCHED).values_list("id", "node_id"))
    job.assignments.filter(state=AssignmentState.DISPATCHED).update(state=AssignmentState.CANCELLED)
    for assignment_id, node_id in open_assignments:
        event = {"type": "job.cancel", "assignment_id": str(assignment_id)}
        effects.send_to_node(node_id, event)

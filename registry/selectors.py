"""Registry reads."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db.models import QuerySet

from bim_core import families

from .models import Assignment, AssignmentState, Job, JobState, Node


def job_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Job]:
    return Job.objects.filter(user=user).select_related("subnet").order_by("-created_at")


def job_delivered_assignment(*, job: Job) -> Assignment | None:
    """The agreed result the user receives: the first agreeing role (A, or B when A lost a
    tie-break), the one the receipt's result_hash names."""
    return (
        job.assignments.filter(state=AssignmentState.AGREED).order_by("role").first()
        if job.state == "settled"
        else None
    )


def assignment_result(assignment: Assignment) -> Any:
    """A submitted result decoded by its job's task family (vectors, a generation, an image)."""
    job = assignment.job
    return families.family_for(job.contract["task_type"]).decode_result(
        bytes(assignment.result), tuple(assignment.result_shape), job.inputs
    )


def partial_key(job_id: object) -> str:
    """Where services.partial_record keeps a running job's streamed text."""
    return f"bim:job-partial:{job_id}"


def job_partial(*, job: Job) -> dict[str, Any] | None:
    """The text a node has streamed so far for a running job, unverified; None once the job
    is finished (its verified result replaces it) or when nothing was streamed."""
    if job.finished_at is not None:
        return None
    partial = cache.get(partial_key(job.id))
    return None if partial is None else {**partial, "verified": False}


def node_ids_of_owner(*, user: AbstractBaseUser) -> list[object]:
    return list(Node.objects.filter(owner=user).values_list("pk", flat=True))


def job_hold_outcomes() -> list[tuple[object, int, str]]:
    """Every priced job with its hold and how it ended, for the ledger's checks."""
    ended = {JobState.SETTLED: "settled", JobState.FAILED: "ended", JobState.EXPIRED: "ended"}
    return [
        (job_id, price, ended.get(state, "open"))
        for job_id, price, state in Job.objects.filter(price_micro__gt=0).values_list("id", "price_micro", "state")
    ]

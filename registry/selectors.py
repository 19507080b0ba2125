"""Registry reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from bim_core import families

from .models import Assignment, AssignmentState, Job, JobState, Node, NodeSubnet


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
        bytes(assignment.result), tuple(assignment.result_shape), job.inputs or job.contract.get("input_summary") or {}
    )


def partial_key(job_id: object) -> str:
    """Where services.partial_record keeps a running job's streamed text."""
    return f"bim:job-partial:{job_id}"


def job_partial(*, job: Job) -> dict[str, Any] | None:
    """The text a node has streamed so far for a running job, unverified; None once the job
    is finished (its verified result replaces it) or when nothing was streamed."""
    if job.finished_at is not None or job.state == "queued":
        return None  # finished, or no node has it yet: nothing streamed (no cache read)
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


def subnets_capacity(subnet_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per subnet, what a user deciding where to submit wants to know: connected nodes, the
    routable ones, jobs waiting for a node, and an estimate of a new job's submit-to-settle
    seconds (the median of the last hour's settled jobs, scaled by the queue ahead per pair
    of routable nodes; None without recent jobs or routable nodes)."""
    now = timezone.now()
    unbanned = Q(node__banned_until__isnull=True) | Q(node__banned_until__lt=now)
    links = NodeSubnet.objects.filter(unbanned, subnet_id__in=subnet_ids, node__is_online=True)
    online = dict(links.values("subnet_id").annotate(n=Count("node_id")).values_list("subnet_id", "n"))
    routable = dict(
        links.filter(ready_at__isnull=False, score__gt=0).values("subnet_id").annotate(n=Count("node_id")).values_list("subnet_id", "n")
    )
    waiting = dict(
        Job.objects.filter(subnet_id__in=subnet_ids, state=JobState.QUEUED)
        .values("subnet_id").annotate(n=Count("id")).values_list("subnet_id", "n")
    )
    capacity = {}
    for subnet_id in subnet_ids:
        recent = Job.objects.filter(
            subnet_id=subnet_id, state=JobState.SETTLED, finished_at__gte=now - timedelta(hours=1)
        ).order_by("-finished_at").values_list("created_at", "finished_at")[:101]
        durations = sorted((finished - created).total_seconds() for created, finished in recent)
        pairs = routable.get(subnet_id, 0) // 2
        estimate = None
        if durations and pairs:
            estimate = round(durations[len(durations) // 2] * (1 + waiting.get(subnet_id, 0) / pairs), 1)
        capacity[subnet_id] = {
            "nodes_online": online.get(subnet_id, 0),
            "nodes_routable": routable.get(subnet_id, 0),
            "jobs_waiting": waiting.get(subnet_id, 0),
            "wait_estimate_s": estimate,
        }
    return capacity


OPEN_JOB_STATES = (JobState.QUEUED, JobState.DISPATCHED, JobState.VERIFYING, JobState.ADJUDICATING)


def market_counts() -> dict[str, dict[tuple[str, ...], int]]:
    """What /metrics reports about the market at scrape time, in three grouped queries:
    online nodes by (subnet slug, backend), routable ones (model ready, benchmarked, not
    banned) by subnet, and open jobs by (subnet, state). Only groups that have any."""
    now = timezone.now()
    unbanned = Q(node__banned_until__isnull=True) | Q(node__banned_until__lt=now)
    online = NodeSubnet.objects.filter(node__is_online=True)
    by_backend = online.values("subnet__slug", "node__backend").annotate(n=Count("node_id"))
    routable = (
        online.filter(unbanned, ready_at__isnull=False, score__gt=0).values("subnet__slug").annotate(n=Count("node_id"))
    )
    # The (state, expires_at) index finds the open jobs; settled ones are never read.
    jobs = Job.objects.filter(state__in=OPEN_JOB_STATES).values("subnet__slug", "state").annotate(n=Count("id"))
    nodes_online: dict[tuple[str, ...], int] = {}
    for row in by_backend:
        key = (row["subnet__slug"], row["node__backend"] or "unknown")  # a node that has not said hello yet
        nodes_online[key] = nodes_online.get(key, 0) + row["n"]
    return {
        "nodes_online": nodes_online,
        "nodes_routable": {(r["subnet__slug"],): r["n"] for r in routable},
        "jobs_open": {(r["subnet__slug"], r["state"]): r["n"] for r in jobs},
    }

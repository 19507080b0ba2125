"""Enforcing a subnet's content policy (bim_core.content_policy, docs/content-policy.md)
where the registry holds the job: refusing inputs and rates at submit, failing a job a
node declined under its contract's policy, withholding a text output that breaks it.

Whoever is not at fault pays nothing: a refused submit holds nothing; a job failed for
its content releases the user's whole hold, pays no node and strikes none.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from bim_core import content_policy, families
from bim_core.errors import ServiceError
from ledger import services as ledger
from subnets.models import Subnet

from . import effects, rate_window
from .jobs import job_transition
from .models import AssignmentState, Job, JobState

RATE_WINDOW_S = 60


def inputs_check(
    subnet: Subnet, inputs: dict[str, Any], *, label: str, index: int, summary: dict[str, int] | None = None
) -> None:
    """Refuse (422 content_policy, naming the rule and the job's index in its batch)
    inputs that break the subnet's policy; of a peer-to-peer job, whose inputs the registry
    never sees, the limits its declared `summary` breaks (the nodes check the rest)."""
    if summary is not None:
        violation = content_policy.summary_violation(subnet.content_policy, summary)
    else:
        violation = content_policy.input_violation(subnet.content_policy, inputs)
    if violation is not None:
        raise ServiceError(
            "content_policy",
            f"{label}refused by content policy rule {violation.rule!r}: {violation.detail}",
            status=422,
            extra={"rule": violation.rule, "policy_version": subnet.content_policy["version"], "job_index": index},
        )


def rate_take(*, user: AbstractBaseUser, subnet: Subnet, count: int) -> str | None:
    """Count `count` new jobs against the policy's jobs per minute (a fixed window in the
    cache, shared by every registry process through Redis; per process in embedded mode).
    Refused (429 rate_limited_by_policy) over the limit, counting nothing; else the key to
    `rate_give_back` to if the submit then fails."""
    limit = content_policy.jobs_per_minute(subnet.content_policy)
    if limit is None or count <= 0:
        return None
    window = rate_window.window_count(f"policy:{subnet.pk}:{user.pk}", count, window_s=RATE_WINDOW_S)
    if window.count > limit:
        rate_window.window_give_back(window.key, count)  # a refused submit uses none of the allowance
        raise ServiceError(
            "rate_limited_by_policy",
            f"{subnet.slug}'s content policy allows {limit} jobs a minute per user; try again in {window.retry_after_s} s",
            status=429,
            extra={"rule": "rate_limit.jobs_per_minute", "retry_after_s": window.retry_after_s},
        )
    return window.key


def rate_give_back(key: str | None, count: int) -> None:
    if key is not None:
        rate_window.window_give_back(key, count)


def job_fail_for_content(job: Job, *, reason: str, **fields: Any) -> None:
    """Fail a job (its row locked by the caller) for its content: the user's hold is
    released in full, open assignments are cancelled, no node is paid or struck. A job's
    content is the user's doing, and whatever nodes computed was what the contract asked."""
    job_transition(job, JobState.FAILED, detail=reason, failure_reason=reason, **fields)
    if job.price_micro:
        ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason=reason)
    open_assignments = list(job.assignments.filter(state=AssignmentState.DISPATCHED).values_list("id", "node_id"))
    job.assignments.filter(state=AssignmentState.DISPATCHED).update(state=AssignmentState.CANCELLED)
    for assignment_id, node_id in open_assignments:
        effects.send_to_node(node_id, {"type": "job.cancel", "assignment_id": str(assignment_id)})


def output_violation(job: Job, result: Any) -> content_policy.Violation | None:
    """The output rule a settled text result breaks, per the job's own contract (the
    policy the user and the nodes saw, not the subnet's current one); None for other
    families, which produce no text."""
    if job.contract.get("task_type") != "text" or job.honeypot_id is not None:
        return None
    delivered = families.family_for("text").result_for_user(result)
    return content_policy.output_violation(job.contract.get("policy"), delivered["text"])

"""Honeypots: registry jobs whose answer the registry already knows (docs/honeypots.md).

A honeypot travels exactly like a user's job: same message shape, a fresh job id and
contract, real-looking inputs from a rotating pool. Each node's result is checked against
the registry's own answer; a node that fails gets a zero reputation outcome, a strike
(enough of them ban it) and part of its escrow slashed, with the job and assignment as
evidence.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from bim_core import families
from bim_core.verification import Verdict, verify_pair
from subnets.models import Subnet
from subnets.services import trusted_run

from . import reputation, selectors
from .models import Assignment, AssignmentState, Honeypot, Job
from .penalties import wrong_result_punish
from .submit import job_create

log = logging.getLogger("bim.registry.honeypots")

HONEYPOT_USERNAME = "bim-honeypots"


def honeypot_user() -> AbstractBaseUser:
    """The registry's own account that honeypot jobs belong to (it cannot log in)."""
    user, created = get_user_model().objects.get_or_create(username=HONEYPOT_USERNAME, defaults={"is_active": False})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def honeypot_pool_refresh(*, subnet: Subnet, pool: list[dict[str, Any]]) -> int:
    """Replace the subnet's pool with these job inputs and the subnet's own answers to them."""
    family = families.family_for(subnet.task_type)
    answers = [family.encode_result(trusted_run(subnet, inputs)) for inputs in pool]
    with transaction.atomic():
        subnet.honeypots.filter(jobs__isnull=True).delete()
        for inputs, (payload, shape) in zip(pool, answers, strict=True):
            Honeypot.objects.create(
                subnet=subnet, inputs=inputs, result=payload, shape=list(shape), model_checksum=subnet.model_checksum
            )
    return len(pool)


def honeypot_issue(*, subnet: Subnet) -> Job | None:
    """Send one honeypot into the subnet, the least used of its pool for the current model."""

    with transaction.atomic():
        honeypot = (
            Honeypot.objects.select_for_update(skip_locked=True)
            .filter(subnet=subnet, model_checksum=subnet.model_checksum)
            .order_by("uses", "?")
            .first()
        )
        if honeypot is None:
            return None
        Honeypot.objects.filter(pk=honeypot.pk).update(uses=honeypot.uses + 1)
        return job_create(
            user=honeypot_user(),
            subnet=subnet,
            inputs=honeypot.inputs,
            idempotency_key=f"honeypot:{uuid.uuid4()}",
            session_key_pub=None,
            honeypot=honeypot,
        )


def honeypots_issue_due(*, window_s: int = 60) -> int:
    """Beat: for each subnet, issue honeypot_rate × the user jobs of the last window (the
    fractional part as a coin toss, so low-traffic subnets are still sampled)."""
    since = timezone.now() - timedelta(seconds=window_s)
    issued = 0
    for subnet in Subnet.objects.filter(state=Subnet.State.ACTIVE, honeypot_rate_bp__gt=0):
        user_jobs = Job.objects.filter(subnet=subnet, created_at__gte=since, honeypot__isnull=True).count()
        expected = user_jobs * subnet.honeypot_rate_bp / 10_000
        count = int(expected) + (random.random() < expected - int(expected))
        for _ in range(count):
            issued += honeypot_issue(subnet=subnet) is not None
    return issued


def honeypot_judge(job: Job, results: list[Assignment], *, rescored: dict[str, dict] | None = None) -> dict:
    """Check each node's result against the registry's answer; punish each failure.
    `rescored` (text: re-scoring evidence by result hash, see verify._text_rescoring)
    clears a result that differs from the answer but whose every token is within the
    subnet's logit margin: honest nondeterminism, not a forgery. Returns the verification
    record for the job."""
    honeypot = job.honeypot
    expected = families.family_for(job.subnet.task_type).decode_result(
        bytes(honeypot.result), tuple(honeypot.shape), honeypot.inputs
    )
    outcome = {}
    for assignment in results:
        verdict = verify_pair(
            job.subnet.task_type, selectors.assignment_result(assignment), expected, job.contract["tolerances"]
        )
        outcome[assignment.role] = verdict.as_dict()
        evidence = (rescored or {}).get(assignment.result_hash)
        if not verdict.passed and evidence is not None:
            outcome[assignment.role]["rescoring"] = evidence
            if evidence["accepted"]:
                verdict = Verdict(True, verdict.metric, verdict.worst, "differs, but re-scoring accepted every token")
                outcome[assignment.role].update(verdict.as_dict())
        if verdict.passed:
            Assignment.objects.filter(pk=assignment.pk).update(state=AssignmentState.AGREED)
            reputation.reputation_record(node_ids=[assignment.node_id], outcome=1.0, subnet=job.subnet)
            continue
        Assignment.objects.filter(pk=assignment.pk).update(state=AssignmentState.DISAGREED)
        wrong_result_punish(
            job=job,
            assignment=assignment,
            strike_reason="failed a honeypot",
            evidence=f"failed honeypot {honeypot.pk}: {verdict.reason}",
        )
    return {"path": "honeypot", "honeypot": honeypot.pk, "results": outcome}


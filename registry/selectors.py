"""Registry reads."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.utils import timezone

from . import protocol
from .models import Assignment, AssignmentState, Job, NodeSubnet
from .routing import Candidate


def node_candidates(*, subnet_id: int) -> list[Candidate]:
    """Online nodes holding the subnet's verified model, not banned, heard from recently."""
    now = timezone.now()
    rows = (
        NodeSubnet.objects.filter(
            subnet_id=subnet_id,
            ready_at__isnull=False,
            node__is_online=True,
            node__last_seen__gte=now - timedelta(seconds=settings.NODE_STALE_S),
        )
        .filter(Q(node__banned_until__isnull=True) | Q(node__banned_until__lt=now))
        .values_list("node_id", "node__owner_id", "node__score", "node__reputation", "node__ip_block")
    )
    return [
        Candidate(node_id=str(node_id), owner_id=str(owner_id), weight=score * reputation, ip_block=block)
        for node_id, owner_id, score, reputation, block in rows
    ]


def job_list_for_user(*, user: AbstractBaseUser) -> QuerySet[Job]:
    return Job.objects.filter(user=user).select_related("subnet").order_by("-created_at")


def job_delivered_assignment(*, job: Job) -> Assignment | None:
    """The agreed result the user receives (role A's, which B matched)."""
    return (
        job.assignments.filter(state=AssignmentState.AGREED).order_by("role").first()
        if job.state == "settled"
        else None
    )


def assignment_vectors(assignment: Assignment) -> np.ndarray:
    return protocol.decode_vectors(bytes(assignment.result), tuple(assignment.result_shape))

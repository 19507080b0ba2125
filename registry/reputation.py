"""Reputation, strikes and bans: the outcomes of verified jobs move a node's reputation;
strikes expire; enough of them ban the node for a while. Operators' bans, unbans and
clearing of strikes are in `registry.sanctions`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from bim_core import scoring
from subnets.models import Subnet

from . import effects
from .models import (
    Node,
    NodeSubnet,
    Strike,
)
from .prepared import PreparedQuery, PreparedUpdate
from .routing_index import index_bump_for_node

log = logging.getLogger("bim.registry.reputation")


def reputation_record(*, node_ids: Sequence[object], outcome: float, subnet: Subnet) -> None:
    """Apply one job's outcome (1 consensus winner, 0 minority or failed honeypot)."""
    policy = scoring.ReputationPolicy.from_dict(subnet.reputation_policy)
    now = timezone.now()
    # In key order, as every writer of several node rows locks them.
    nodes = (
        _pair_locked.all(*node_ids)
        if len(node_ids) == 2
        else Node.objects.select_for_update().filter(pk__in=node_ids).order_by("pk")
    )
    for node in nodes:
        idle_h = (now - node.last_job_at).total_seconds() / 3600 if node.last_job_at else 0.0
        reputation = scoring.reputation_after_idle(node.reputation, idle_h=idle_h, policy=policy)
        agreed = node.jobs_agreed + (1 if outcome >= 1 else 0)
        failed = node.jobs_failed + (0 if outcome >= 1 else 1)
        after = scoring.reputation_after_job(reputation, outcome, jobs_done=agreed, policy=policy)
        _record_update.run(node.pk, after, agreed, failed, now)
    if len(node_ids) == 2:
        _pair_benchmark_count.run(*node_ids, subnet.pk)
    else:
        NodeSubnet.objects.filter(node_id__in=node_ids, subnet=subnet).update(jobs_since_benchmark=F("jobs_since_benchmark") + 1)


# Prepared (registry.prepared): a settled pair's two nodes, every job.
_pair_locked = PreparedQuery(
    lambda first, second: Node.objects.select_for_update().filter(pk__in=[first, second]).order_by("pk"),
    (uuid.UUID, uuid.UUID),
)
_pair_benchmark_count = PreparedUpdate(
    lambda first, second, subnet_id: (
        NodeSubnet.objects.filter(node_id__in=[first, second], subnet_id=subnet_id),
        {"jobs_since_benchmark": F("jobs_since_benchmark") + 1},
    ),
    (uuid.UUID, uuid.UUID, int),
)
_record_update = PreparedUpdate(
    lambda node_id, reputation, agreed, failed, at: (
        Node.objects.filter(pk=node_id),
        {"reputation": reputation, "jobs_agreed": agreed, "jobs_failed": failed, "last_job_at": at},
    ),
    (uuid.UUID, float, int, int, datetime),
)


def node_strike(*, node_id: object, reason: str, job_id: object | None = None, subnet: Subnet | None = None) -> Strike:
    """A soft strike; reaching the policy's number of active strikes bans the node for a time."""
    policy = scoring.ReputationPolicy.from_dict(subnet.reputation_policy if subnet else None)
    now = timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node_id)
        strike = Strike.objects.create(
            node=node, job_id=job_id, reason=reason[:200], expires_at=now + timedelta(hours=policy.strike_ttl_h)
        )
        node.strikes += 1
        active = Strike.objects.filter(node=node, expires_at__gt=now, lifted_at__isnull=True).count()
        if active >= policy.strikes_to_ban:
            newly_banned = node.banned_until is None or node.banned_until <= now
            node.banned_until = now + timedelta(hours=policy.ban_h)
            log.warning("node %s banned until %s after %d active strikes", node.pk, node.banned_until, active)
            if newly_banned:
                # Its socket closes (CLOSE_BANNED) and its work moves on: a banned node
                # gets no offers, and keeping it connected only lets it flood.
                effects.send_to_node(node.pk, {"type": "node.banned", "until": node.banned_until.isoformat()})
        node.save(update_fields=["strikes", "banned_until"])
        index_bump_for_node(node.pk)
    return strike


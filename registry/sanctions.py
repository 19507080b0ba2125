"""Operators' sanctions on a node's standing: a ban for a bounded time, an early unban,
clearing active strikes, and trust given or withdrawn (a registry-operated node, the only
kind a trusted subnet's jobs go to: docs/routing.md). Each is one service call that changes the node and writes a
`NodeSanction` (who, when, why, until when) in the same transaction, so nothing in admin
changes a node's standing without a record. Strikes and the bans they cause on their own
are `registry.reputation`'s.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from bim_core.errors import ServiceError

from . import effects
from .jobs import assignments_lose
from .models import Assignment, AssignmentState, Node, NodeSanction, SanctionKind, Strike
from .routing_index import index_bump_for_node

log = logging.getLogger("bim.registry.sanctions")

# What an operator may choose: a ban is a cooling-off, not a removal (a node that must go
# for good has its owner's account closed). Longer than 30 days is a typo, not a decision.
BAN_HOURS_CHOICES: tuple[tuple[int, str], ...] = (
    (1, "1 hour"),
    (6, "6 hours"),
    (24, "1 day"),
    (72, "3 days"),
    (168, "7 days"),
    (720, "30 days"),
)
BAN_HOURS_MAX = 720
REASON_MAX = 300


def _reason(reason: str) -> str:
    text = " ".join(str(reason).split())
    if not text:
        raise ServiceError("reason_required", "say why: the reason is shown to whoever reads this node's history")
    if len(text) > REASON_MAX:
        raise ServiceError("reason_too_long", f"a reason holds at most {REASON_MAX} characters")
    return text


def _locked(node_id: object) -> Node:
    try:
        return Node.objects.select_for_update().get(pk=node_id)
    except (Node.DoesNotExist, ValueError):
        raise ServiceError("no_such_node", f"no node {node_id}", status=404) from None


def _active_strikes(node: Node, now: datetime) -> QuerySet[Strike]:
    return Strike.objects.filter(node=node, expires_at__gt=now, lifted_at__isnull=True)


def node_ban(*, node_id: object, operator: AbstractBaseUser, reason: str, hours: int) -> NodeSanction:
    """Ban a node for `hours` (1 to BAN_HOURS_MAX). A longer ban already in force is kept:
    an operator shortens a ban with `node_unban`, never by accident. A connected node is
    cut off at commit (its socket closes with CLOSE_BANNED and its open work goes to
    others) and the routing index is bumped, so it gets no offer from this commit on."""
    reason = _reason(reason)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= BAN_HOURS_MAX:
        raise ServiceError("bad_duration", f"a ban lasts from 1 to {BAN_HOURS_MAX} hours")
    now = timezone.now()
    with transaction.atomic():
        node = _locked(node_id)
        until = now + timedelta(hours=hours)
        if node.banned_until is not None and node.banned_until > until:
            until = node.banned_until
        node.banned_until = until
        node.save(update_fields=["banned_until"])
        sanction = NodeSanction.objects.create(
            node=node, kind=SanctionKind.BAN, reason=reason, operator=operator, banned_until=until
        )
        index_bump_for_node(node.pk)
        # Sent whether or not the row says it is online: the flag may lag a fresh connect,
        # and a send to a group nobody is in costs nothing.
        effects.send_to_node(node.pk, {"type": "node.banned", "until": until.isoformat()})
    log.warning("node %s banned until %s by %s: %s", node.pk, until, operator, reason)
    return sanction


def node_unban(*, node_id: object, operator: AbstractBaseUser, reason: str) -> NodeSanction:
    """End a ban early. Its active strikes are lifted with it: left in place, the next
    strike would ban the node again at once."""
    reason = _reason(reason)
    now = timezone.now()
    with transaction.atomic():
        node = _locked(node_id)
        if node.banned_until is None or node.banned_until <= now:
            raise ServiceError("not_banned", f"{node.name} is not banned")
        lifted = _active_strikes(node, now).update(lifted_at=now)
        node.banned_until = None
        node.save(update_fields=["banned_until"])
        sanction = NodeSanction.objects.create(
            node=node, kind=SanctionKind.UNBAN, reason=reason, operator=operator, strikes_lifted=lifted
        )
        index_bump_for_node(node.pk)
    log.info("node %s unbanned by %s (%d strikes lifted): %s", node.pk, operator, lifted, reason)
    return sanction


def node_strikes_clear(*, node_id: object, operator: AbstractBaseUser, reason: str) -> NodeSanction:
    """Lift a node's active strikes (they divide its routing weight) without touching a
    ban in force; `strikes`, the count of strikes ever given, stays as history."""
    reason = _reason(reason)
    now = timezone.now()
    with transaction.atomic():
        node = _locked(node_id)
        lifted = _active_strikes(node, now).update(lifted_at=now)
        if not lifted:
            raise ServiceError("no_active_strikes", f"{node.name} has no active strikes")
        sanction = NodeSanction.objects.create(
            node=node, kind=SanctionKind.STRIKES_CLEARED, reason=reason, operator=operator, strikes_lifted=lifted
        )
        index_bump_for_node(node.pk)
    log.info("%d strikes of node %s cleared by %s: %s", lifted, node.pk, operator, reason)
    return sanction


def node_trust(*, node_id: object, operator: AbstractBaseUser, reason: str) -> NodeSanction:
    """Mark a node as operated by the registry: from this commit on it may be offered
    trusted subnets' jobs. Only this action sets the flag; nothing a node sends does."""
    reason = _reason(reason)
    with transaction.atomic():
        node = _locked(node_id)
        if node.trusted:
            raise ServiceError("already_trusted", f"{node.name} is already trusted")
        node.trusted = True
        node.save(update_fields=["trusted"])
        sanction = NodeSanction.objects.create(node=node, kind=SanctionKind.TRUST, reason=reason, operator=operator)
        index_bump_for_node(node.pk)
    log.warning("node %s trusted by %s: %s", node.pk, operator, reason)
    return sanction


def node_distrust(*, node_id: object, operator: AbstractBaseUser, reason: str) -> NodeSanction:
    """Withdraw a node's trust. Its unanswered offers of trusted jobs go to trusted nodes
    now, without blame (the node did nothing wrong); a result it sends for one later is
    refused (`node_not_trusted`)."""
    reason = _reason(reason)
    with transaction.atomic():
        node = _locked(node_id)
        if not node.trusted:
            raise ServiceError("not_trusted", f"{node.name} is not trusted")
        node.trusted = False
        node.save(update_fields=["trusted"])
        open_trusted = Assignment.objects.filter(node=node, state=AssignmentState.DISPATCHED).filter(
            Q(job__subnet__trusted=True) | Q(job__contract__trusted=True)
        )
        taken = assignments_lose(open_trusted.values_list("pk", "job_id"), "the node's trust was withdrawn")
        sanction = NodeSanction.objects.create(node=node, kind=SanctionKind.DISTRUST, reason=reason, operator=operator)
        index_bump_for_node(node.pk)
    log.warning("node %s no longer trusted (by %s, %d offers taken back): %s", node.pk, operator, taken, reason)
    return sanction

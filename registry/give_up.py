"""A node giving a job up before answering (a decline, a failure, work lost on a reconnect):
whether the node's record takes the failure. Its role goes to another node either way."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import transaction
from django.db.models import F

from bim_core import content_policy, protocol
from subnets.models import Subnet

from . import p2p, policy_enforcement
from .jobs import assignments_lose, job_locked
from .models import TERMINAL_STATES, Assignment, AssignmentState, Job, Node

log = logging.getLogger("bim.registry")


def assignment_give_up(*, node_id: object, assignment_id: str, reason: str, inputs: Any = None) -> None:
    """A node declines or fails a job before answering: its role goes to another node, and
    the node's record a failure, except for work of an earlier session given up as
    `lost_on_reconnect` (a node back after a disconnect it did not choose, `welcome` having
    listed work it no longer holds) and of a `content_policy:<rule>` decline the registry's
    own check of the contract's policy upholds (the job then fails, nobody charged). A node
    that refuses a peer-to-peer job's input sends that input as evidence (`inputs`, which must
    hash to the contract's): the registry then judges the refusal on it; a refusal of bytes
    that do not even hash to the contract (`bad_input_hash`) is no fault of the node."""
    try:
        assignment_uuid = uuid.UUID(str(assignment_id))
    except ValueError:
        raise protocol.ProtocolError("bad_message", "assignment_id is not a UUID") from None
    with transaction.atomic():
        job_id, offered_to = (
            Assignment.objects.filter(pk=assignment_uuid, node_id=node_id, state=AssignmentState.DISPATCHED)
            .values_list("job_id", "session_key_pub")
            .first()
        ) or (None, None)
        current_session = Node.objects.filter(pk=node_id).values_list("session_key_pub", flat=True).first()
        offered_before_this_session = offered_to != current_session
        if job_id is None or not assignments_lose([(assignment_uuid, job_id)], f"node gave up: {reason}"):
            raise protocol.ProtocolError("not_assigned", "no open assignment with that id for this node")
        if reason == protocol.LOST_ON_RECONNECT and offered_before_this_session:
            return  # work of a session that ended without the node leaving it: no failure
        if reason == protocol.SUBNET_PAUSED and not _subnet_active(job_id):
            return  # an offer that crossed the pause on the wire: the node did as told
        if inputs is not None and reason.startswith((CONTENT_POLICY_PREFIX, BAD_INPUT)):
            p2p.refusal_evidence_record(job_id, inputs)
        if reason.startswith(CONTENT_POLICY_PREFIX) and _content_refusal_upheld(job_id):
            return  # the contract's policy forbids the job: declining it is the node's right
        if reason == BAD_INPUT and p2p.input_refusal_upheld(job_id):
            return  # the user's input does not fit its own contract: the job failed, no fault
        if reason == "bad_input_hash" and Job.objects.filter(pk=job_id, transport="p2p", inputs={}).exists():
            return  # bytes from the user that are not the contract's input: nothing the node did
        if reason == p2p.INPUT_NOT_RECEIVED and Job.objects.filter(pk=job_id, transport="p2p", inputs={}).exists():
            return  # its user never brought the input (no data channel, no fallback): no fault
        Node.objects.filter(pk=node_id).update(jobs_failed=F("jobs_failed") + 1)


def _subnet_active(job_id: object) -> bool:
    return Job.objects.filter(pk=job_id, subnet__state=Subnet.State.ACTIVE).exists()


CONTENT_POLICY_PREFIX = "content_policy:"
BAD_INPUT = "bad_input"


def _content_refusal_upheld(job_id: object) -> bool:
    """A node declined a job under its contract's content policy: the registry runs the
    same check on the job it holds. Upheld (a bypass, or a job written before a stricter
    policy could not be, since contracts are immutable: a bug worth the log), the job
    fails for its content with nobody charged or paid; otherwise the decline is an ordinary
    give-up and the role moves on."""
    job = job_locked(job_id)
    if job is None or job.state in TERMINAL_STATES:
        return job is not None
    if not job.inputs:
        return False  # a peer-to-peer input the registry never saw: an ordinary give-up
    violation = content_policy.input_violation(job.contract.get("policy"), job.inputs)
    if violation is None:
        return False
    log.warning("job %s: a node declined it under content policy rule %s", job.id, violation.rule)
    policy_enforcement.job_fail_for_content(job, reason=f"content_policy_input:{violation.rule}")
    return True

"""Peer-to-peer jobs (docs/p2p.md): the registry signals between a job's user and its nodes,
holds each node's signed commit (a result's hash, not its bytes), learns from the user that
a result arrived, and asks a node for its payload only when it must judge or deliver it
itself: the pair disagrees, the user disputes or never confirms, an output rule must be
checked, or the job is drawn for audit.

Signalling (`signal_*`) parses and authorizes; the consumers forward. Everything here
refuses with protocol.ProtocolError (sockets) or ServiceError (HTTP), codes in the docs.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bim_core import content_policy, families, ice, protocol
from bim_core.errors import ServiceError
from bim_core.job_inputs import InputInvalid

from . import effects, p2p_uploads, policy_enforcement
from .jobs import PAIR_ROLES, job_locked
from .models import TERMINAL_STATES, Assignment, AssignmentState, Job, JobState, JobTransport

log = logging.getLogger("bim.registry.p2p")

MAX_SDP_BYTES = 64 * 1024
MAX_CANDIDATE_BYTES = 2 * 1024

# The `job_failed` reason of a node whose user never brought the input (no data channel and
# no fallback): the node waited in vain, which costs it nothing.
INPUT_NOT_RECEIVED = "input_not_received"


def job_is_p2p(job: Job) -> bool:
    return job.transport == JobTransport.P2P


def inputs_or_summary(job: Job) -> dict[str, Any]:
    """What the job's task family reads to price and check results: the inputs when the
    registry holds them (a relay job, or a peer-to-peer one after a fallback or an upload),
    else the contract's input summary."""
    return job.inputs or job.contract.get("input_summary") or {}


def ice_servers_for(party: str) -> list[dict[str, Any]]:
    """STUN and TURN servers for one party, TURN credentials of its own (the TURN REST
    convention: the shared secret stays here, coturn checks the HMAC). `party` is
    `job-<job id>` for a job's user and `asg-<assignment id>` for a node, so the TURN
    server's own figures name the job they are for (registry.turn_usage)."""
    return ice.ice_servers(
        stun_urls=settings.P2P_STUN_URLS,
        turn_urls=settings.P2P_TURN_URLS,
        secret=settings.P2P_TURN_SECRET,
        user=party,
        ttl_s=settings.P2P_TURN_TTL_S,
        now=time.time(),
    )


# Signalling --------------------------------------------------------------------------------


def _uuid(raw: Any, name: str) -> str:
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError:
        raise protocol.ProtocolError("bad_message", f"{name} is not a UUID") from None


def peer_entry(assignment: Assignment) -> dict[str, Any]:
    """What the user needs to reach one node of its job and check what it sends."""
    return {
        "assignment_id": str(assignment.id),
        "role": assignment.role,
        "session_key_pub": assignment.session_key_pub,
    }


def signal_watch(*, user: Any, job_id: Any) -> dict[str, Any]:
    """The user's client will bring this job's input: the nodes now holding it (more arrive
    as `peer_assigned`) and the ICE servers to reach them."""
    job = Job.objects.filter(pk=_uuid(job_id, "job_id"), user=user).first()
    if job is None:
        raise protocol.ProtocolError("not_found", "no such job of yours")
    if not job_is_p2p(job):
        raise protocol.ProtocolError("bad_message", "this job travels over the registry relay, not peer to peer")
    assignments = job.assignments.filter(state=AssignmentState.DISPATCHED).order_by("role")
    return {
        "type": "peers",
        "job_id": str(job.id),
        "state": job.state,
        "ice_servers": ice_servers_for(f"job-{job.id}"),
        "ice_transport_policy": settings.P2P_ICE_TRANSPORT_POLICY,
        "peers": [peer_entry(a) for a in assignments],
    }


def _signal_body(kind: str, message: dict[str, Any]) -> dict[str, Any]:
    if kind in ("rtc_offer", "rtc_answer"):
        sdp = message.get("sdp")
        if not isinstance(sdp, str) or not sdp or len(sdp.encode("utf-8")) > MAX_SDP_BYTES:
            raise protocol.ProtocolError("bad_message", f"sdp must be a string of at most {MAX_SDP_BYTES} bytes")
        return {"sdp": sdp}
    candidate = message.get("candidate")
    if not isinstance(candidate, dict) or len(protocol.canonical_json(candidate)) > MAX_CANDIDATE_BYTES:
        raise protocol.ProtocolError("bad_message", f"candidate must be an object of at most {MAX_CANDIDATE_BYTES} bytes")
    return {"candidate": candidate}


def signal_to_node(*, user: Any, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A user's `rtc_offer` / `rtc_ice` for one node of its job: (node id, the message the
    node gets). Only an open assignment of the user's own peer-to-peer job is reachable."""
    kind = message.get("type")
    job_id = _uuid(message.get("job_id"), "job_id")
    assignment_id = _uuid(message.get("assignment_id"), "assignment_id")
    body = _signal_body(str(kind), message)
    node_id = (
        Assignment.objects.filter(
            pk=assignment_id,
            job_id=job_id,
            job__user=user,
            job__transport=JobTransport.P2P,
            state=AssignmentState.DISPATCHED,
        )
        .values_list("node_id", flat=True)
        .first()
    )
    if node_id is None:
        raise protocol.ProtocolError("not_assigned", "no open assignment of your peer-to-peer job with that id")
    return str(node_id), {"type": kind, "job_id": job_id, "assignment_id": assignment_id, **body}


def signal_to_user(*, node_id: Any, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A node's `rtc_answer` / `rtc_ice` for the user of one of its open peer-to-peer
    assignments: (job id, the message the user gets)."""
    kind = message.get("type")
    assignment_id = _uuid(message.get("assignment_id"), "assignment_id")
    body = _signal_body(str(kind), message)
    job_id = (
        Assignment.objects.filter(
            pk=assignment_id, node_id=node_id, job__transport=JobTransport.P2P, state=AssignmentState.DISPATCHED
        )
        .values_list("job_id", flat=True)
        .first()
    )
    if job_id is None:
        raise protocol.ProtocolError("not_assigned", "no open peer-to-peer assignment of this node with that id")
    return str(job_id), {"type": kind, "job_id": str(job_id), "assignment_id": assignment_id, **body}


def job_group(job_id: Any) -> str:
    """The channel-layer group of the user sockets watching a job."""
    return f"job.{job_id}"


def peer_assigned_notify(job: Job, assignment: Assignment) -> None:
    """Tell the job's watching user (after commit) that a node now holds a role."""
    message = {"type": "peer_assigned", "job_id": str(job.id), **peer_entry(assignment)}
    effects.send_to_group(job_group(job.id), {"type": "user.forward", "message": message})


# The user's confirmations and the relay fallback ---------------------------------------------


def _users_p2p_job_locked(user: Any, job_id: Any) -> Job:
    job = job_locked(job_id)
    if job is None or job.user_id != user.pk:
        raise ServiceError("not_found", "no such job of yours", status=404)
    if not job_is_p2p(job):
        raise ServiceError("not_p2p", "this job travels over the registry relay, not peer to peer", status=409)
    return job


def delivery_confirm(*, user: Any, job_id: Any, assignment_id: Any, result_hash: str) -> bool | None:
    """The user received a result over the data channel. The committed hash: confirmed, and
    the job may settle. Another hash is the user's dispute of what that node sent: the
    registry asks the node for its bytes and judges them itself. Returns whether it matched;
    None when the node's commit is not in yet (it sends the user its bytes first): the hash
    is kept, once, and judged when the commit arrives (delivery_before_commit_apply)."""
    try:
        assignment_uuid = uuid.UUID(str(assignment_id))
    except ValueError:
        raise ServiceError("invalid", "assignment_id is not a UUID") from None
    with transaction.atomic():
        job = _users_p2p_job_locked(user, job_id)
        assignment = job.assignments.filter(pk=assignment_uuid).first()
        if assignment is None:
            raise ServiceError("not_assigned", "no assignment of this job has that id", status=404)
        if not assignment.result_hash:
            if assignment.state != AssignmentState.DISPATCHED or job.state in TERMINAL_STATES:
                raise ServiceError("not_committed", "that node committed no result and no longer holds the role", status=409)
            if assignment.delivered_hash and assignment.delivered_hash != result_hash:
                raise ServiceError("already_confirmed", "a confirmation of other bytes is kept for that node", status=409)
            assignment.delivered_hash = result_hash
            assignment.save(update_fields=["delivered_hash"])
            return None
        if result_hash == assignment.result_hash:
            if assignment.delivered_at is None:
                assignment.delivered_at = timezone.now()
                assignment.save(update_fields=["delivered_at"])
            matched = True
        else:
            log.info("job %s: the user disputes the bytes of assignment %s", job.id, assignment.id)
            if job.state not in TERMINAL_STATES:
                p2p_uploads.uploads_request(job, {assignment.pk: (p2p_uploads.UPLOAD_DISPUTE, False)})
            matched = False
        if job.state == JobState.VERIFYING:
            effects.queue_task("verify_job", str(job.id))  # after commit: it may settle now
    return matched


def delivery_before_commit_apply(job: Job, assignment: Assignment) -> None:
    """At a commit, in its transaction: the user's confirmation that came first is judged
    now, as it would have been after the commit."""
    if not assignment.delivered_hash:
        return
    if assignment.delivered_hash == assignment.result_hash:
        assignment.delivered_at = timezone.now()
        assignment.save(update_fields=["delivered_at"])
    else:
        log.info("job %s: the user disputes the bytes of assignment %s", job.id, assignment.id)
        p2p_uploads.uploads_request(job, {assignment.pk: (p2p_uploads.UPLOAD_DISPUTE, False)})


def inputs_fallback(*, user: Any, job_id: Any, inputs: Any, reason: str) -> Job:
    """No data channel opened: the user sends the input through the registry after all. It
    must be the contract's input (hash and summary), and meet the subnet's content policy as
    a relay job's must; the nodes still waiting get it over their sockets."""
    with transaction.atomic():
        job = _users_p2p_job_locked(user, job_id)
        family = families.family_for(job.contract["task_type"])
        if not isinstance(inputs, dict):
            raise ServiceError("invalid_input", "inputs must be an object")
        try:
            inputs = family.validate_inputs(inputs, job.subnet.limits())
        except InputInvalid as exc:
            raise ServiceError("invalid_input", str(exc)) from None
        if protocol.input_hash(inputs) != job.contract["input_hash"]:
            raise ServiceError("input_hash_mismatch", "these inputs do not hash to the job's input_hash", status=409)
        if family.input_summary(inputs) != job.contract["input_summary"]:
            raise ServiceError("input_summary_mismatch", "these inputs do not match the job's input_summary", status=409)
        if job.inputs:
            return job  # sent before: nothing more to do
        if job.state in TERMINAL_STATES:
            raise ServiceError("job_finished", f"the job is {job.state}", status=409)
        violation = content_policy.input_violation(job.contract.get("policy"), inputs)
        if violation is None:
            job.inputs = inputs
            job.fallback_reason = (str(reason) or "no_peer_connection")[:100]
            job.relay_bytes += len(protocol.canonical_json(inputs))
            job.save(update_fields=["inputs", "fallback_reason", "relay_bytes"])
            for assignment_id, node_id in job.assignments.filter(state=AssignmentState.DISPATCHED).values_list(
                "id", "node_id"
            ):
                effects.send_to_node(
                    node_id,
                    {
                        "type": "job.offer",
                        "message": {"type": "job_inputs", "job_id": str(job.id), "assignment_id": str(assignment_id), "inputs": inputs},
                    },
                )
            return job
        # The contract's policy forbids this input: the job fails, nobody charged or paid,
        # as at submit (where the registry could not see it).
        policy_enforcement.job_fail_for_content(job, reason=f"content_policy_input:{violation.rule}")
    raise ServiceError(
        "content_policy", f"input breaks the subnet's content policy rule {violation.rule}: {violation.detail}",
        status=422, extra={"rule": violation.rule},
    )


# Refused inputs ----------------------------------------------------------------------------


def refusal_evidence_record(job_id: Any, raw: Any) -> None:
    """The input a node refused, sent as evidence: kept (once) if it is the contract's input,
    so the refusal can be judged on it; anything else is ignored (the refusal is then an
    ordinary give-up)."""
    job = job_locked(job_id)
    if job is None or not job_is_p2p(job) or job.inputs or job.state in TERMINAL_STATES:
        return
    try:
        p2p_uploads.upload_inputs_record(job, raw)
    except (protocol.ProtocolError, TypeError, ValueError):
        log.info("job %s: a node's refusal came with inputs that are not the contract's", job_id)


def input_refusal_upheld(job_id: Any) -> bool:
    """A node refused a peer-to-peer job's input as not fitting its contract (form, limits or
    input summary). On the input the registry now holds, it checks the same: upheld, the job
    fails (the user's input broke its own contract) and its hold is released; not upheld, or
    no input held, the refusal is an ordinary give-up."""
    job = job_locked(job_id)
    if job is None or job.state in TERMINAL_STATES or not job_is_p2p(job) or not job.inputs:
        return job is not None and job.state in TERMINAL_STATES
    family = families.family_for(job.contract["task_type"])
    try:
        inputs = family.validate_inputs(job.inputs, job.subnet.limits())
        fits = family.input_summary(inputs) == job.contract["input_summary"]
    except InputInvalid:
        fits = False
    if fits:
        return False
    log.warning("job %s: a node refused its input and the input does not fit the contract", job.id)
    policy_enforcement.job_fail_for_content(job, reason="input_does_not_fit_contract")
    return True


def pair_of(job: Job) -> list[Assignment]:
    return list(job.assignments.filter(role__in=PAIR_ROLES, state=AssignmentState.SUBMITTED).select_related("node"))

"""Peer-to-peer jobs (docs/p2p.md): the registry signals between a job's user and its nodes,
holds each node's signed commit (a result's hash, not its bytes), learns from the user that
a result arrived, and asks a node for its payload only when it must judge or deliver it
itself: the pair disagrees, the user disputes or never confirms, an output rule must be
checked, or the job is drawn for audit.

Signalling (`signal_*`) parses and authorizes; the consumers forward. Everything here
refuses with protocol.ProtocolError (sockets) or ServiceError (HTTP), codes in the docs.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bim_core import content_policy, families, ice, protocol
from bim_core.errors import ServiceError
from ledger import services as ledger

from . import effects, policy_enforcement
from .jobs import PAIR_ROLES, job_locked, job_transition
from .models import TERMINAL_STATES, Assignment, AssignmentState, Job, JobState, JobTransport

log = logging.getLogger("bim.registry.p2p")

MAX_SDP_BYTES = 64 * 1024
MAX_CANDIDATE_BYTES = 2 * 1024

# Why the registry asks a node for a committed result's bytes.
UPLOAD_MISMATCH = "mismatch"  # the pair's hashes differ: compared as a relay job
UPLOAD_UNDELIVERED = "undelivered"  # the user did not confirm receiving it in time
UPLOAD_DISPUTE = "dispute"  # the user says the bytes it got are not the committed ones
UPLOAD_POLICY = "policy"  # the contract's output rules must be checked before delivery
UPLOAD_AUDIT = "audit"  # drawn for audit: sentinels re-run it like a relay job
UPLOAD_PARTNER_SILENT = "partner_silent"  # the other node did not upload: a tie-breaker decides

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
                uploads_request(job, {assignment.pk: (UPLOAD_DISPUTE, False)})
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
        uploads_request(job, {assignment.pk: (UPLOAD_DISPUTE, False)})


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
        except families.InputInvalid as exc:
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


# Commits and uploads -------------------------------------------------------------------------


def audit_drawn(job: Job) -> bool:
    """Whether the job is one of the P2P_AUDIT_BP in 10,000 whose payload and input are
    uploaded for sentinel re-runs: drawn from its id, so the same job always draws the same."""
    draw = int.from_bytes(hashlib.sha256(f"audit:{job.id}".encode()).digest()[:4], "big") % 10_000
    return draw < settings.P2P_AUDIT_BP


def _output_rules(job: Job) -> bool:
    return job.contract.get("task_type") == "text" and content_policy.has_output_rules(job.contract.get("policy"))


def uploads_needed(job: Job, pair: list[Assignment]) -> dict[Any, tuple[str, bool]]:
    """For a peer-to-peer job whose pair has committed, the payloads the registry must hold
    before it can settle: assignment id -> (reason, with the input). Empty: the commits
    alone settle it (once the user confirms delivery)."""
    a, b = sorted(pair, key=lambda x: x.role)
    if a.result_hash != b.result_hash:
        # Either node may be the one that cannot upload: both bring the input.
        return {a.pk: (UPLOAD_MISMATCH, True), b.pk: (UPLOAD_MISMATCH, True)}
    if _output_rules(job):
        return {a.pk: (UPLOAD_POLICY, False)}
    if audit_drawn(job) or job.honeypot_id is not None:
        # A honeypot is judged on its bytes: asked for exactly as an audit draw is, after
        # both nodes committed, so the request tells a node nothing it could still use.
        return {a.pk: (UPLOAD_AUDIT, True)}
    if not any(x.delivered_at for x in pair):
        due = (job.verifying_at or timezone.now()) + timedelta(seconds=settings.P2P_DELIVERY_S)
        if timezone.now() >= due:
            return {a.pk: (UPLOAD_UNDELIVERED, False)}
    return {}


def uploads_request(job: Job, wanted: dict[Any, tuple[str, bool]]) -> int:
    """Ask nodes for committed payloads (once each): their `upload_request` goes out after
    commit; past `upload_due` the sweeper gives up on a node. Returns how many were asked."""
    asked = 0
    due = timezone.now() + timedelta(seconds=settings.P2P_UPLOAD_S)
    for assignment in job.assignments.filter(pk__in=list(wanted), result__isnull=True).exclude(result_hash=""):
        if assignment.upload_reason:
            continue
        reason, with_inputs = wanted[assignment.pk]
        assignment.upload_reason, assignment.upload_due = reason, due
        assignment.save(update_fields=["upload_reason", "upload_due"])
        message = upload_request_message(job.id, assignment.id, reason, with_inputs=with_inputs and not job.inputs)
        effects.send_to_node(assignment.node_id, {"type": "job.offer", "message": message})
        asked += 1
    return asked


# Reasons whose upload brings the input too (uploads_needed): the registry must compare or
# re-run, not only hold the bytes.
_WITH_INPUTS = frozenset({UPLOAD_MISMATCH, UPLOAD_AUDIT, UPLOAD_PARTNER_SILENT})


def upload_request_message(job_id: Any, assignment_id: Any, reason: str, *, with_inputs: bool) -> dict[str, Any]:
    return {
        "type": "upload_request",
        "job_id": str(job_id),
        "assignment_id": str(assignment_id),
        "reason": reason,
        "with_inputs": with_inputs,
    }


def uploads_outstanding(node_ids: Any) -> dict[Any, list[dict[str, Any]]]:
    """The upload requests each node has not answered, for a node that comes back: the first
    went to a socket that may be gone (asked again after `welcome`, registry.hello)."""
    rows = (
        Assignment.objects.filter(node_id__in=list(node_ids), result__isnull=True, job__state__in=[JobState.VERIFYING, JobState.ADJUDICATING])
        .exclude(upload_reason="")
        .values_list("node_id", "job_id", "pk", "upload_reason", "job__inputs")
    )
    asked: dict[Any, list[dict[str, Any]]] = {}
    for node_id, job_id, pk, reason, inputs in rows:
        message = upload_request_message(job_id, pk, reason, with_inputs=reason in _WITH_INPUTS and not inputs)
        asked.setdefault(node_id, []).append(message)
    return asked


def payload_wait(job: Job, pair: list[Assignment]) -> bool:
    """At verification of a peer-to-peer job: ask for what is needed and say whether the
    verdict must wait (an upload outstanding, or the user's confirmation not yet due)."""
    wanted = uploads_needed(job, pair)
    uploads_request(job, wanted)
    if any(x.result is None for x in pair if x.pk in wanted):
        return True
    if wanted or any(x.result is not None for x in pair):
        return False  # what had to come came: verify as the payloads say
    return not any(x.delivered_at for x in pair)


def upload_inputs_record(job: Job, raw: Any) -> None:
    """The input a node uploaded with its payload: the contract's, or refused."""
    if job.inputs:
        return
    if not isinstance(raw, dict) or protocol.input_hash(raw) != job.contract["input_hash"]:
        raise protocol.ProtocolError("bad_input_hash", "uploaded inputs do not hash to the contract's input_hash")
    job.inputs = raw
    job.relay_bytes += len(protocol.canonical_json(raw))
    job.save(update_fields=["inputs", "relay_bytes"])


def refusal_evidence_record(job_id: Any, raw: Any) -> None:
    """The input a node refused, sent as evidence: kept (once) if it is the contract's input,
    so the refusal can be judged on it; anything else is ignored (the refusal is then an
    ordinary give-up)."""
    job = job_locked(job_id)
    if job is None or not job_is_p2p(job) or job.inputs or job.state in TERMINAL_STATES:
        return
    try:
        upload_inputs_record(job, raw)
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
    except families.InputInvalid:
        fits = False
    if fits:
        return False
    log.warning("job %s: a node refused its input and the input does not fit the contract", job.id)
    policy_enforcement.job_fail_for_content(job, reason="input_does_not_fit_contract")
    return True


def uploads_overdue_handle() -> int:
    """Verifying peer-to-peer jobs whose node did not upload a payload in time: that node
    signed for bytes it would not show; it is struck and loses its role. Its partner, who
    committed in time, does not pay for it: the job goes on to a tie-breaker
    (`tie_breaker_without_silent`), and fails, the user's hold released, only when neither
    node shows its bytes. Returns how many jobs had a silent node."""
    from .reputation import node_strike, reputation_record

    overdue = (
        Assignment.objects.filter(
            upload_due__lt=timezone.now(), result__isnull=True, job__state=JobState.VERIFYING
        )
        .exclude(upload_reason="")
        .values_list("job_id", flat=True)
        .distinct()[:200]
    )
    handled = 0
    for job_id in overdue:
        with transaction.atomic():
            job = job_locked(job_id)
            if job is None or job.state != JobState.VERIFYING:
                continue
            silent = list(
                job.assignments.filter(upload_due__lt=timezone.now(), result__isnull=True, state=AssignmentState.SUBMITTED)
                .exclude(upload_reason="")
            )
            if not silent:
                continue
            for assignment in silent:
                Assignment.objects.filter(pk=assignment.pk).update(state=AssignmentState.DISAGREED)
                reputation_record(node_ids=[assignment.node_id], outcome=0.0, subnet=job.subnet)
                node_strike(node_id=assignment.node_id, reason="did not upload a committed result", job_id=job.pk, subnet=job.subnet)
            effects.queue_task("verify_job", str(job.pk))  # its partner goes on (verify.job_verify)
            handled += 1
    return handled


def tie_breaker_without_silent(job: Job) -> None:
    """A pair member was struck for not showing its committed bytes (the job is verifying,
    locked, and no honeypot whose partner's bytes are in: verify.job_verify judges that). The partner's payload and the input go to a tie-breaker, which gets the input
    over the relay: asked for first where the registry lacks them (`partner_silent`), then
    the job adjudicates 2-of-3 without the silent node (verify.job_adjudicate)."""
    partner = job.assignments.filter(role__in=PAIR_ROLES, state=AssignmentState.SUBMITTED).first()
    if partner is None or (partner.result is not None and not job.inputs):
        # Nobody shows bytes to compare (or the input, to re-run, is nowhere): no verdict.
        reason = "a node did not upload its committed result"
        job_transition(job, JobState.FAILED, detail=reason, failure_reason=reason)
        if job.price_micro:
            ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason=reason)
        return
    if partner.result is None:
        if not partner.upload_reason:
            uploads_request(job, {partner.pk: (UPLOAD_PARTNER_SILENT, True)})
        return  # its upload verifies the job again, which comes back here
    detail = "the other node did not upload its committed result: a tie-breaker decides"
    job_transition(job, JobState.ADJUDICATING, detail=detail)
    effects.queue_task("dispatch_job", str(job.id))


def pair_of(job: Job) -> list[Assignment]:
    return list(job.assignments.filter(role__in=PAIR_ROLES, state=AssignmentState.SUBMITTED).select_related("node"))

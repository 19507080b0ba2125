"""What nodes send back about a job: signed results and streamed partial text (giving a job
up is `registry.give_up`).
Every check refuses with a protocol error code the node is told.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from bim_core import families, protocol

from . import effects, metrics, p2p, p2p_uploads, routing_index, selectors, verify
from .jobs import PAIR_ROLES, assignments_lose, job_locked, job_transition, job_trusted_only
from .models import (
    TERMINAL_STATES,
    Assignment,
    AssignmentRole,
    AssignmentState,
    Job,
    JobState,
    Node,
)
from .prepared import PreparedQuery, fields_save
from .reputation import node_strike, reputation_record

log = logging.getLogger("bim.registry")


def result_record(*, node_id: object, message: dict[str, Any]) -> Assignment:
    """Check and store a node's signed result; raises protocol.ProtocolError with a code
    the node is told. When the job's results are all in, it is verified and settled here
    if that needs no model pass (`verify.verification_is_quick`) and settings.VERIFY_IN_PLACE,
    else queued for a worker. A result for a peer-to-peer assignment the registry asked
    to see (docs/p2p.md) is that commit's upload."""
    fields = _result_fields(message)
    with transaction.atomic():
        assignment, job = _assignment_and_job_locked(node_id, fields)
        if assignment.state == AssignmentState.SUBMITTED and assignment.result is None and assignment.upload_reason:
            return _upload_record(job, assignment, fields, message)
        _check_open(job, assignment, node_id)
        _check_result(job, assignment, fields)
        assignment.result = fields["payload"]
        if p2p.job_is_p2p(job):
            job.relay_bytes += len(fields["payload"])
            job.save(update_fields=["relay_bytes"])
        _submitted(job, assignment, fields, also=("result",))
        verify_here = _job_complete(job, assignment)
    metrics.results_received.inc()
    if verify_here:
        # Comparing and settling costs less than a task's round trip through the broker:
        # done here, in a transaction of its own, right after the result is stored.
        verify.job_verify_now(job_id=job.id)
    _speed_observe(job, assignment)
    return assignment


def commit_record(*, node_id: object, message: dict[str, Any]) -> Assignment:
    """A peer-to-peer result's commit (docs/p2p.md §4): the signed result message without
    its bytes, which went to the user. Checked as far as the contract allows without them:
    the assignment, the deadline, the input hash, a shape and size that fit the input
    summary, and the signature; then the job goes on as when a result arrives."""
    fields = _result_fields({**message, "data": ""})
    fields["size"] = protocol.parse_int(message.get("size"), "size", low=0, high=MAX_COMMITTED_BYTES)
    stats = _transport_stats(message.get("transport"))
    with transaction.atomic():
        assignment, job = _assignment_and_job_locked(node_id, fields)
        if not p2p.job_is_p2p(job):
            raise protocol.ProtocolError("bad_message", "a relay job's result carries its data: send result")
        _check_open(job, assignment, node_id)
        family = families.family_for(job.contract["task_type"])
        _check_encoding_and_input(job, family, fields)
        family.check_output_dim(fields["shape"], job.subnet.output_dim)
        size = family.committed_size(fields["shape"], p2p.inputs_or_summary(job))
        if size is not None and size != fields["size"]:
            raise protocol.ProtocolError("bad_shape", f"a result of shape {list(fields['shape'])} is {size} bytes")
        _check_signature(job, assignment, fields)
        assignment.result = None
        assignment.result_size = fields["size"]
        assignment.transport_stats = stats
        if stats.get("relayed"):
            job.turn_bytes += stats["bytes_sent"] + stats["bytes_received"]
            job.save(update_fields=["turn_bytes"])
        _submitted(job, assignment, fields, also=("result", "result_size", "transport_stats"))
        p2p.delivery_before_commit_apply(job, assignment)
        verify_here = _job_complete(job, assignment)
    metrics.results_received.inc()
    if verify_here:
        verify.job_verify_now(job_id=job.id)
    _speed_observe(job, assignment)
    return assignment


def _speed_observe(job: Job, assignment: Assignment) -> None:
    routing_index.speed_observe(
        node_id=assignment.node_id,
        subnet_id=job.subnet_id,
        items=job.item_count,
        dispatched_at=assignment.dispatched_at,
        submitted_at=assignment.submitted_at,
    )


# The largest result a node may commit to: what the data channel carries (bim_core.peer).
MAX_COMMITTED_BYTES = 64 * 2**20


def _transport_stats(raw: Any) -> dict[str, Any]:
    """The node's data channel figures, as it reports them (bounded, never trusted for pay)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise protocol.ProtocolError("bad_message", "transport must be an object")
    relayed = raw.get("relayed", False)
    if not isinstance(relayed, bool):
        raise protocol.ProtocolError("bad_message", "transport.relayed must be a boolean")
    stats: dict[str, Any] = {"relayed": relayed}
    for key in ("bytes_sent", "bytes_received"):
        stats[key] = protocol.parse_int(raw.get(key, 0), f"transport.{key}", low=0, high=2 * MAX_COMMITTED_BYTES)
    return stats


# The job found through this node's assignment (ids that do not belong together lock
# nothing), then the assignment: prepared (registry.prepared), two for every result.
_job_of_assignment_locked = PreparedQuery(
    lambda job_id, assignment_id, node_id: Job.objects.select_for_update(no_key=True, of=("self",))
    .select_related("subnet", "user")
    .filter(pk=job_id, assignments__pk=assignment_id, assignments__node_id=node_id),
    (uuid.UUID, uuid.UUID, uuid.UUID),
)
# With how many of its pair partners have submitted (`partner_results`, for `_job_complete`):
# an assignment becomes submitted only under its job's lock, so the count holds while we
# hold it.
_assignment_locked = PreparedQuery(
    lambda assignment_id: Assignment.objects.select_for_update(of=("self",))
    .annotate(
        partner_results=Coalesce(
            Subquery(
                Assignment.objects.filter(
                    job_id=OuterRef("job_id"), role__in=PAIR_ROLES, state=AssignmentState.SUBMITTED
                )
                .exclude(pk=OuterRef("pk"))
                .values("job_id")
                .annotate(count=Count("pk"))
                .values("count")
            ),
            0,
        )
    )
    .filter(pk=assignment_id),
    (uuid.UUID,),
)
# Whether the subnet has jobs waiting for a free offer slot (`_submitted`).
_one_queued_job = PreparedQuery(
    lambda subnet_id: Job.objects.filter(subnet_id=subnet_id, state=JobState.QUEUED).only("pk")[:1], (int,)
)


def _assignment_and_job_locked(node_id: object, fields: dict[str, Any]) -> tuple[Assignment, Job]:
    """The job's row, then the assignment's: the order of every other writer of a job and
    its assignments (the user's delivery confirmation, verification, dispatch, the sweeper).
    Assignment first, an upload racing the user's confirmation of the same result deadlocked
    with it (bench/bandwidth.py, an audited P2P job)."""
    job = _job_of_assignment_locked.first(fields["job_id"], fields["assignment_id"], node_id)
    if job is None:
        raise protocol.ProtocolError("not_assigned", "this job is not assigned to this node")
    return _assignment_locked.all(fields["assignment_id"])[0], job


def _check_open(job: Job, assignment: Assignment, node_id: object) -> None:
    if assignment.state != AssignmentState.DISPATCHED:
        code = "already_submitted" if assignment.result_hash else "not_assigned"
        raise protocol.ProtocolError(code, f"assignment is {assignment.state}")
    accepting = JobState.ADJUDICATING if assignment.role == AssignmentRole.C else JobState.DISPATCHED
    if job.state != accepting or job.expires_at <= timezone.now():
        raise protocol.ProtocolError("deadline_passed", f"job is {job.state}")
    if job_trusted_only(job) and not Node.objects.filter(pk=node_id, trusted=True).exists():
        # Dispatch never offers such a job to this node; an offer made before its trust
        # was withdrawn, or a forged assignment, still gets no result in.
        raise protocol.ProtocolError(NOT_TRUSTED, "this job runs on a trusted subnet: registry-operated nodes only")


def _submitted(job: Job, assignment: Assignment, fields: dict[str, Any], *, also: tuple[str, ...]) -> None:
    """Store the assignment as submitted: these fields, and those the caller set (`also`)."""
    assignment.state = AssignmentState.SUBMITTED
    assignment.result_shape = list(fields["shape"])
    assignment.result_hash = fields["result_hash"]
    assignment.signature = fields["signature"]
    assignment.elapsed_ms = fields["elapsed_ms"]
    assignment.submitted_at = timezone.now()
    fields_save(assignment, ("state", "result_shape", "result_hash", "signature", "elapsed_ms", "submitted_at", *also))
    if _one_queued_job.all(job.subnet_id):
        # This answer frees a slot in the node's queue: place jobs that wait for one.
        effects.queue_task_coalesced("dispatch_waiting", str(job.subnet_id))


def _job_complete(job: Job, assignment: Assignment) -> bool:
    """After a result or commit: when the job's results are all in, move it to verifying and
    queue the verification; returns whether to verify in place instead (after commit)."""
    complete = (
        assignment.role == AssignmentRole.C  # the tie-breaker is in: adjudicate
        or job.solo
        or (assignment.role in PAIR_ROLES and assignment.partner_results + 1 == len(PAIR_ROLES))
    )
    if complete and assignment.role != AssignmentRole.C:
        job_transition(job, JobState.VERIFYING, detail="solo result in" if job.solo else "both results in")
    verify_here = complete and settings.VERIFY_IN_PLACE and verify.verification_is_quick(job)
    if complete and not verify_here:
        effects.queue_task("verify_job", str(job.id))
    return verify_here


def _upload_record(job: Job, assignment: Assignment, fields: dict[str, Any], message: dict[str, Any]) -> Assignment:
    """The bytes of a committed peer-to-peer result, which the registry asked for: they must
    be what the node signed for (a node that cannot show them is struck, result_refused),
    with the input when asked. Then the job is verified as a relay job would be."""
    if job.state in TERMINAL_STATES:
        raise protocol.ProtocolError("deadline_passed", f"job is {job.state}")
    if fields["result_hash"] != assignment.result_hash or list(fields["shape"]) != assignment.result_shape:
        raise protocol.ProtocolError("bad_result_hash", "an upload must be the committed result")
    if "inputs" in message:
        p2p_uploads.upload_inputs_record(job, message["inputs"])
    _check_result(job, assignment, fields)
    assignment.result = fields["payload"]
    assignment.upload_reason, assignment.upload_due = "", None
    assignment.save(update_fields=["result", "upload_reason", "upload_due"])
    job.relay_bytes += len(fields["payload"])
    job.save(update_fields=["relay_bytes"])
    if job.state in (JobState.VERIFYING, JobState.ADJUDICATING) and not job.assignments.filter(
        result__isnull=True, state=AssignmentState.SUBMITTED
    ).exclude(upload_reason="").exists():
        effects.queue_task("verify_job", str(job.id))
    return assignment


def _result_fields(message: dict[str, Any]) -> dict[str, Any]:
    try:
        fields = {
            "assignment_id": str(uuid.UUID(str(message["assignment_id"]))),
            "job_id": str(uuid.UUID(str(message["job_id"]))),
            "input_hash": str(message["input_hash"]),
            "result_hash": str(message["result_hash"]),
            "encoding": str(message.get("encoding", "")),
            "signature": str(message["signature"]),
            "elapsed_ms": max(0, int(message.get("elapsed_ms") or 0)),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise protocol.ProtocolError("bad_message", f"malformed result: {exc}") from None
    fields["shape"] = protocol.parse_shape(message.get("shape"))
    fields["payload"] = protocol.b64decode(str(message.get("data", "")))
    return fields


def _check_encoding_and_input(job: Job, family: families.TaskFamily, fields: dict[str, Any]) -> None:
    if fields["encoding"] != family.encoding:
        raise protocol.ProtocolError("bad_message", f"a {family.task_type} result is encoded {family.encoding}")
    if fields["input_hash"] != job.contract["input_hash"]:
        raise protocol.ProtocolError("bad_input_hash", "input_hash does not match the job contract")


def _check_signature(job: Job, assignment: Assignment, fields: dict[str, Any]) -> None:
    signed = protocol.result_message(
        job_id=str(job.id),
        assignment_id=str(assignment.id),
        contract_hash=job.contract_hash,
        input_hash=fields["input_hash"],
        result_hash=fields["result_hash"],
        shape=fields["shape"],
    )
    if not protocol.signature_valid(assignment.session_key_pub, fields["signature"], signed):
        raise protocol.ProtocolError("bad_signature", "result signature does not verify with the session key")


def _check_result(job: Job, assignment: Assignment, fields: dict[str, Any]) -> None:
    family = families.family_for(job.contract["task_type"])
    _check_encoding_and_input(job, family, fields)
    if protocol.sha256_hex(fields["payload"]) != fields["result_hash"]:
        raise protocol.ProtocolError("bad_result_hash", "result_hash is not the SHA-256 of data")
    family.check_output_dim(fields["shape"], job.subnet.output_dim)
    family.decode_result(fields["payload"], fields["shape"], p2p.inputs_or_summary(job))
    _check_signature(job, assignment, fields)


# Refusals that prove the node sent a wrong answer to its own open assignment. The others
# (a late result, a repeat, an assignment already taken back, contention) can happen to an
# honest node and cost it nothing.
MISBEHAVIOUR_CODES = frozenset({"bad_message", "bad_signature", "bad_input_hash", "bad_result_hash", "bad_shape"})
# A result from a node not (or no longer) trusted for a trusted subnet's job: refused, and
# the role taken back so a trusted node runs it, without blame.
NOT_TRUSTED = "node_not_trusted"


def result_refused(*, node_id: object, message: dict[str, Any], code: str) -> bool:
    """After `result_record` refused a result (its transaction rolled back, so this is a
    transaction of its own): a refusal that proves misbehaviour scores the job 0 for the
    node, strikes it, and gives its role to another node now. The partner's submitted
    result stays, so the job settles when the replacement answers instead of waiting for
    its deadline. Returns whether the node was penalised."""
    if code not in MISBEHAVIOUR_CODES and code != NOT_TRUSTED:
        return False
    try:
        assignment_id = uuid.UUID(str(message.get("assignment_id")))
    except ValueError:
        return False  # no assignment of this node named: nothing to take back
    with transaction.atomic():
        # Locked in result_record's order (job, then assignment): no deadlock with it.
        open_assignment = Assignment.objects.filter(pk=assignment_id, node_id=node_id, state=AssignmentState.DISPATCHED)
        job_id = open_assignment.values_list("job_id", flat=True).first()
        job = job_locked(job_id) if job_id is not None else None
        assignment = open_assignment.select_for_update().first() if job is not None else None
        if assignment is None:
            return _upload_refused(node_id, assignment_id, code)
        if job is None or job.state in TERMINAL_STATES:
            return False
        assignments_lose([(assignment.pk, job.pk)], f"result refused: {code}")
        if code == NOT_TRUSTED:
            return False  # its trust was withdrawn: the role goes to a trusted node, no blame
        current_session = Node.objects.values_list("session_key_pub", flat=True).get(pk=node_id)
        if code == "bad_signature" and current_session != assignment.session_key_pub:
            # Reconnected since the offer: signed with its new session key, perhaps honestly.
            # It cannot answer this offer any more, but it proved no cheating.
            return False
        reputation_record(node_ids=[node_id], outcome=0.0, subnet=job.subnet)
        node_strike(node_id=node_id, reason=f"result refused: {code}", job_id=job.pk, subnet=job.subnet)
    return True


def _upload_refused(node_id: object, assignment_id: uuid.UUID, code: str) -> bool:
    """A committed result's upload that proves misbehaviour (bytes that are not the
    committed ones): its deadline is brought forward, so the sweeper strikes the node once
    and fails the job it will not let be judged (p2p_uploads.uploads_overdue_handle)."""
    if code not in MISBEHAVIOUR_CODES:
        return False
    return bool(
        Assignment.objects.filter(
            pk=assignment_id, node_id=node_id, state=AssignmentState.SUBMITTED, result__isnull=True
        )
        .exclude(upload_reason="")
        .update(upload_due=timezone.now())
    )


PARTIAL_TTL_S = 600


PARTIAL_MAX_CHARS = 64_000


def partial_record(*, node_id: object, message: dict[str, Any]) -> None:
    """Keep the latest text a node streams while it generates (the cache, never the
    database: one write per few tokens). Unsigned and unverified: the user sees it marked
    so, and only the settled result carries a receipt. Of two nodes streaming the same job
    the one further ahead is shown; a partial for an assignment no longer open is dropped."""
    try:
        assignment_id = uuid.UUID(str(message["assignment_id"]))
        text, tokens = message["text"], message["tokens"]
        if not isinstance(text, str) or not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ValueError("text must be a string and tokens a count")
    except (KeyError, ValueError) as exc:
        raise protocol.ProtocolError("bad_message", f"malformed partial: {exc}") from None
    if len(text) > PARTIAL_MAX_CHARS:
        raise protocol.ProtocolError("bad_message", f"a partial holds at most {PARTIAL_MAX_CHARS} characters")
    open_assignment = (
        Assignment.objects.filter(pk=assignment_id, node_id=node_id, state=AssignmentState.DISPATCHED)
        .values("job_id", "role")
        .first()
    )
    if open_assignment is None:
        return
    key = selectors.partial_key(open_assignment["job_id"])
    current = cache.get(key)
    if current is None or tokens >= current["tokens"]:
        # Read then write without a lock: two nodes racing can only swap which one is shown.
        cache.set(key, {"text": text, "tokens": tokens, "role": open_assignment["role"]}, PARTIAL_TTL_S)

"""Registry writes: nodes, presence, the job state machine, results, verification.

Every state change runs in one transaction with the job row locked, writes a JobEvent,
and queues its side effects (tasks, messages to nodes) with `transaction.on_commit`, so a
task or message never sees uncommitted state and running a step twice changes nothing.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Coalesce, Least
from django.utils import timezone

from bim_site.errors import ServiceError
from ledger import services as ledger
from subnets.models import Subnet
from subnets.services import input_coverage_warnings, trusted_rescore

from . import effects, families, honeypots, metrics, nodes, protocol, selectors
from .contracts import build_contract
from .keys import registry_private_key, registry_public_key
from .models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    AgreementStat,
    Assignment,
    AssignmentRole,
    AssignmentState,
    Honeypot,
    Job,
    JobEvent,
    JobState,
    Node,
)
from .routing import DIVERSITY_ATTRIBUTES
from .verification import Verdict, judge_rescored, verify_pair

log = logging.getLogger("bim.registry")

PAIR_ROLES = (AssignmentRole.A, AssignmentRole.B)
ROLES_BY_STATE = {
    JobState.QUEUED: PAIR_ROLES,
    JobState.DISPATCHED: PAIR_ROLES,
    JobState.ADJUDICATING: (AssignmentRole.C,),
}
OPEN_ASSIGNMENT_STATES = (AssignmentState.DISPATCHED, AssignmentState.SUBMITTED)


class IllegalTransition(Exception):
    pass


# ---------------------------------------------------------------- state machine


def job_transition(job: Job, to_state: str, *, detail: str = "", **fields: Any) -> None:
    """Move a job (whose row the caller has locked) to `to_state`, or raise."""
    if to_state not in ALLOWED_TRANSITIONS[job.state]:
        raise IllegalTransition(f"job {job.id}: {job.state} -> {to_state} is not allowed")
    from_state = job.state
    now = timezone.now()
    job.state = to_state
    stamp = {
        JobState.DISPATCHED: "dispatched_at",
        JobState.VERIFYING: "verifying_at",
    }.get(to_state)
    if stamp and getattr(job, stamp) is None:
        fields[stamp] = now
    if to_state in TERMINAL_STATES:
        fields["finished_at"] = now
    for name, value in fields.items():
        setattr(job, name, value)
    job.save(update_fields=["state", *fields])
    JobEvent.objects.create(job=job, from_state=from_state, to_state=to_state, detail=detail[:300])
    metrics.job_transitions.labels(to_state=to_state).inc()


def _job_locked(job_id: object) -> Job | None:
    # Lock the job row only (`of`), and as NO KEY UPDATE so concurrent inserts that
    # reference the job (assignments, transfers) don't wait on it or deadlock with it.
    return (
        Job.objects.select_for_update(no_key=True, of=("self",))
        .select_related("subnet", "user")
        .filter(pk=job_id)
        .first()
    )


# ---------------------------------------------------------------- submit


def job_submit(
    *,
    user: AbstractBaseUser,
    subnet_slug: str,
    inputs: dict[str, Any],
    idempotency_key: str,
    session_key_pub: str | None = None,
) -> tuple[Job, bool]:
    """Create a job of the subnet's task family and hold its price. A repeated idempotency
    key returns the first job (created=False); the same key with different inputs is refused."""
    subnet = Subnet.objects.filter(slug=subnet_slug, is_active=True).select_related("license").first()
    if subnet is None:
        raise ServiceError("unknown_subnet", f"no active subnet {subnet_slug!r}", status=404)
    inputs = _validated_inputs(subnet, inputs)
    input_hash = protocol.input_hash(inputs)
    if session_key_pub is not None:
        try:
            protocol.parse_public_key(session_key_pub)
        except protocol.ProtocolError as exc:
            raise ServiceError("invalid_session_key", exc.detail) from None
    existing = Job.objects.filter(user=user, idempotency_key=idempotency_key).first()
    if existing is not None:
        return _same_job_or_conflict(existing, subnet, input_hash), False
    try:
        with transaction.atomic():
            job = job_create(
                user=user, subnet=subnet, inputs=inputs, idempotency_key=idempotency_key, session_key_pub=session_key_pub
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert.
        existing = Job.objects.get(user=user, idempotency_key=idempotency_key)
        return _same_job_or_conflict(existing, subnet, input_hash), False
    metrics.jobs_submitted.labels(subnet=subnet.slug).inc()
    return job, True


def _validated_inputs(subnet: Subnet, inputs: dict[str, Any]) -> dict[str, Any]:
    try:
        return families.family_for(subnet.task_type).validate_inputs(inputs, subnet.limits())
    except families.InputInvalid as exc:
        raise ServiceError("invalid_input", str(exc)) from None


def _same_job_or_conflict(job: Job, subnet: Subnet, input_hash: str) -> Job:
    if job.subnet_id != subnet.pk or job.contract["input_hash"] != input_hash:
        raise ServiceError(
            "idempotency_conflict", "this idempotency key was used for a different job", status=409
        )
    return job


def job_create(
    *,
    user: AbstractBaseUser,
    subnet: Subnet,
    inputs: dict[str, Any],
    idempotency_key: str,
    session_key_pub: str | None,
    honeypot: Honeypot | None = None,
) -> Job:
    """Write a queued job with its contract, hold its price and queue its dispatch. A
    honeypot is the registry's own job: free, and otherwise the same in every byte."""
    job_id = uuid.uuid4()
    input_hash = protocol.input_hash(inputs)
    # The user's session key binds later peer-to-peer delivery to this job; a client that
    # brings none gets a fresh one so every contract names a session key.
    session_key = session_key_pub or protocol.public_key_b64(protocol.new_private_key())
    contract = build_contract(
        job_id=str(job_id),
        subnet=subnet.slug,
        task_type=subnet.task_type,
        model_id=subnet.model_id,
        model_checksum=subnet.model_checksum,
        runtime_id=subnet.runtime_id,
        tokenizer_checksum=subnet.tokenizer_checksum,
        determinism=subnet.determinism,
        tolerances=subnet.tolerances,
        preprocessing=subnet.preprocessing,
        input_hash=input_hash,
        limits={"max_items": subnet.max_items_per_job, "latency_ms": subnet.latency_ms},
        session_key_pub=session_key,
    )
    family = families.family_for(subnet.task_type)
    item_count = family.item_count(inputs)
    price = 0 if honeypot is not None else subnet.price_for(family.price_units(inputs))
    job = Job.objects.create(
        id=job_id,
        user=user,
        subnet=subnet,
        idempotency_key=idempotency_key,
        contract=contract,
        contract_hash=protocol.contract_hash(contract),
        inputs=inputs,
        item_count=item_count,
        price_micro=price,
        honeypot=honeypot,
        warnings=input_coverage_warnings(subnet, inputs) if honeypot is None else [],
        expires_at=timezone.now() + timedelta(milliseconds=subnet.latency_ms),
    )
    JobEvent.objects.create(job=job, from_state="", to_state=JobState.QUEUED, detail="submitted")
    if price:
        try:
            ledger.job_hold(job_id=job.id, user=user, amount=price)
        except ledger.InsufficientFunds as exc:
            raise ServiceError(
                "insufficient_credits",
                f"this job costs {price} micro-credits; your balance is {exc.account.balance}",
                status=402,
            ) from None
    effects.queue_task("dispatch_job", str(job.id))
    return job


# ---------------------------------------------------------------- dispatch


def job_dispatch(*, job_id: object) -> list[Assignment]:
    """Give every missing role of a job to a node. A queued job waits until two nodes its
    subnet's diversity policy allows together are online; a dispatched job whose node
    vanished gets a replacement that is no node it had before and shares no policy
    attribute with its remaining node; a job in adjudication gets its tie-breaker C, which
    shares no policy attribute with A or B."""
    with transaction.atomic():
        job = _job_locked(job_id)
        if job is None or job.state not in ROLES_BY_STATE:
            return []
        if job.expires_at <= timezone.now():
            _job_expire(job)
            return []
        assignments = list(job.assignments.select_related("node"))
        active = [a for a in assignments if a.state in OPEN_ASSIGNMENT_STATES]
        if job.solo and job.state == JobState.DISPATCHED:
            # Its trusted node vanished: a replacement is not trusted, so back to a pair.
            job.solo = False
            job.save(update_fields=["solo"])
        missing = [role for role in ROLES_BY_STATE[job.state] if role not in {a.role for a in active}]
        if not missing:
            return []
        picks = _pick_nodes(job, assignments, active, len(missing))
        if job.state == JobState.QUEUED and picks and _runs_solo(job, picks[0]):
            job.solo = True
            job.save(update_fields=["solo"])
            missing, picks = missing[:1], picks[:1]
        if len(picks) < len(missing) and job.state == JobState.QUEUED:
            return []  # wait for a full pair
        created = []
        for role, node in zip(missing, picks):
            created.append(
                Assignment.objects.create(
                    job=job,
                    node=node,
                    role=role,
                    session_key_pub=node.session_key_pub,
                    session_nonce=node.session_nonce,
                    session_cert=node.session_cert,
                )
            )
        Node.objects.filter(pk__in=[n.pk for n in picks]).update(jobs_assigned=F("jobs_assigned") + 1)
        if created and job.state == JobState.QUEUED:
            job_transition(job, JobState.DISPATCHED, detail=f"nodes {[str(n.pk) for n in picks]}")
        for assignment in created:
            event = {"type": "job.offer", "message": _job_message(job, assignment)}
            node_id = assignment.node_id
            effects.send_to_node(node_id, event)
        return created


def _runs_solo(job: Job, node: Node) -> bool:
    """Adaptive replication: a node with a long clean record runs the job alone unless the
    job's check coin (p = adaptive_check_bp, fixed per job id) sends it a second node."""
    subnet = job.subnet
    if not subnet.adaptive_replication:
        return False
    trusted = (
        node.jobs_agreed >= subnet.adaptive_min_jobs
        and node.reputation >= subnet.adaptive_min_reputation
        and (node.banned_until is None or node.banned_until < timezone.now())
        and not node.strike_records.filter(expires_at__gt=timezone.now(), lifted_at__isnull=True).exists()
    )
    return trusted and random.Random(job.id.int).random() * 10_000 >= subnet.adaptive_check_bp


def _pick_nodes(job: Job, assignments: list[Assignment], active: list[Assignment], count: int) -> list[Node]:
    """Nodes for the missing roles, by weighted rendezvous hashing over the subnet's routing
    index under its diversity policy: never a node the job had, and nothing the policy
    names (owner, IP block, ASN, OS, GPU family) shared with the job's other nodes."""
    distinct = [a for a in job.subnet.routing_policy.get("distinct", []) if a in DIVERSITY_ATTRIBUTES]
    partners = [nodes.candidate_for(a.node) for a in active]
    # Nodes with a full queue get no more offers now; the job waits for them or others.
    excluded = [str(a.node_id) for a in assignments] + nodes.saturated_node_ids(job.subnet_id)
    live: list[Node] = []
    for _ in range(2):
        picks = nodes.routable_index(job.subnet_id).select(
            str(job.id), count, exclude_node_ids=excluded, distinct=distinct, avoid=partners
        )
        found = Node.objects.filter(is_online=True).in_bulk([uuid.UUID(p.node_id) for p in picks])
        live = [found[uuid.UUID(p.node_id)] for p in picks if uuid.UUID(p.node_id) in found]
        if len(live) == len(picks):
            return live
        nodes.index_forget(job.subnet_id)  # the index was stale: rebuild it once
    return live


def _job_message(job: Job, assignment: Assignment) -> dict[str, Any]:
    return {
        "type": "job",
        "assignment_id": str(assignment.id),
        "job_id": str(job.id),
        "role": assignment.role,
        "contract": job.contract,
        "contract_hash": job.contract_hash,
        "inputs": job.inputs,
        "deadline": job.expires_at.isoformat(),
    }


def jobs_dispatch_waiting(*, subnet_id: int | None = None) -> int:
    """Place jobs that wait for nodes: queued ones, and dispatched ones missing a role
    (after a node vanished). Called when a node becomes routable and by the sweeper."""
    waiting = (
        Job.objects.filter(state__in=ROLES_BY_STATE.keys())
        .annotate(open_roles=Count("assignments", filter=Q(assignments__state__in=OPEN_ASSIGNMENT_STATES)))
        .filter(
            Q(state=JobState.QUEUED)
            | Q(state=JobState.DISPATCHED, open_roles__lt=len(PAIR_ROLES))
            | Q(state=JobState.ADJUDICATING, open_roles__lt=len(PAIR_ROLES) + 1)
        )
    )
    if subnet_id is not None:
        waiting = waiting.filter(subnet_id=subnet_id)
    placed = misses = 0
    for job_id in waiting.order_by("created_at").values_list("id", flat=True)[:500]:
        made = len(job_dispatch(job_id=job_id))
        placed += made
        # Oldest first; once a few in a row find no capacity, the rest will not either.
        misses = 0 if made else misses + 1
        if misses == 3:
            break
    return placed


# ---------------------------------------------------------------- results


def result_record(*, node_id: object, message: dict[str, Any]) -> Assignment:
    """Check and store a node's signed result; raises protocol.ProtocolError with a code
    the node is told. When the pair is complete, verification is queued."""
    fields = _result_fields(message)
    with transaction.atomic():
        assignment = (
            Assignment.objects.select_for_update().filter(pk=fields["assignment_id"], node_id=node_id).first()
        )
        if assignment is None or str(assignment.job_id) != fields["job_id"]:
            raise protocol.ProtocolError("not_assigned", "this job is not assigned to this node")
        job = _job_locked(assignment.job_id)
        if assignment.state != AssignmentState.DISPATCHED:
            code = "already_submitted" if assignment.result_hash else "not_assigned"
            raise protocol.ProtocolError(code, f"assignment is {assignment.state}")
        accepting = JobState.ADJUDICATING if assignment.role == AssignmentRole.C else JobState.DISPATCHED
        if job.state != accepting or job.expires_at <= timezone.now():
            raise protocol.ProtocolError("deadline_passed", f"job is {job.state}")
        _check_result(job, assignment, fields)
        assignment.state = AssignmentState.SUBMITTED
        assignment.result = fields["payload"]
        assignment.result_shape = list(fields["shape"])
        assignment.result_hash = fields["result_hash"]
        assignment.signature = fields["signature"]
        assignment.elapsed_ms = fields["elapsed_ms"]
        assignment.submitted_at = timezone.now()
        assignment.save()
        if Job.objects.filter(subnet_id=job.subnet_id, state=JobState.QUEUED).exists():
            # This answer frees a slot in the node's queue: place jobs that wait for one.
            effects.queue_task("dispatch_waiting", str(job.subnet_id))
        if assignment.role == AssignmentRole.C:
            effects.queue_task("verify_job", str(job.id))  # the tie-breaker is in: adjudicate
        elif job.solo:
            job_transition(job, JobState.VERIFYING, detail="solo result in")
            effects.queue_task("verify_job", str(job.id))
        elif job.assignments.filter(role__in=PAIR_ROLES, state=AssignmentState.SUBMITTED).count() == len(PAIR_ROLES):
            job_transition(job, JobState.VERIFYING, detail="both results in")
            effects.queue_task("verify_job", str(job.id))
    metrics.results_received.inc()
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


def _check_result(job: Job, assignment: Assignment, fields: dict[str, Any]) -> None:
    family = families.family_for(job.contract["task_type"])
    if fields["encoding"] != family.encoding:
        raise protocol.ProtocolError("bad_message", f"a {family.task_type} result is encoded {family.encoding}")
    if fields["input_hash"] != job.contract["input_hash"]:
        raise protocol.ProtocolError("bad_input_hash", "input_hash does not match the job contract")
    if protocol.sha256_hex(fields["payload"]) != fields["result_hash"]:
        raise protocol.ProtocolError("bad_result_hash", "result_hash is not the SHA-256 of data")
    family.decode_result(fields["payload"], fields["shape"], job.inputs)
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


def assignment_give_up(*, node_id: object, assignment_id: str, reason: str) -> None:
    """A node declines or fails a job before answering: its role goes to another node."""
    try:
        assignment_uuid = uuid.UUID(str(assignment_id))
    except ValueError:
        raise protocol.ProtocolError("bad_message", "assignment_id is not a UUID") from None
    with transaction.atomic():
        updated = Assignment.objects.filter(
            pk=assignment_uuid, node_id=node_id, state=AssignmentState.DISPATCHED
        ).update(state=AssignmentState.LOST, failure_reason=f"node gave up: {reason}"[:200])
        if not updated:
            raise protocol.ProtocolError("not_assigned", "no open assignment with that id for this node")
        Node.objects.filter(pk=node_id).update(jobs_failed=F("jobs_failed") + 1)
        job_id = Assignment.objects.values_list("job_id", flat=True).get(pk=assignment_uuid)
        effects.queue_task("dispatch_job", str(job_id))


# ---------------------------------------------------------------- verification and settlement


def job_verify(*, job_id: object) -> Job | None:
    """Compare the pair and settle on agreement; on a mismatch send the contract to a
    tie-breaker (nothing is paid yet). With the tie-breaker's result in, adjudicate. A text
    pair that differs is re-scored instead, on the registry's own runner, before the job
    row is locked (a model pass takes a second or more) and settled on that evidence."""
    rescored = _text_rescoring(job_id)
    with transaction.atomic():
        job = _job_locked(job_id)
        if job is None:
            return None
        results = {
            a.role: a for a in job.assignments.filter(state=AssignmentState.SUBMITTED).select_related("node")
        }
        if job.state == JobState.ADJUDICATING and AssignmentRole.C in results:
            return _job_adjudicate(job, results)
        if job.state != JobState.VERIFYING:
            return job
        if job.solo:
            _job_settle_solo(job, results[AssignmentRole.A])
            return job
        a, b = results[AssignmentRole.A], results[AssignmentRole.B]
        if job.honeypot_id is not None:
            verification = honeypots.honeypot_judge(job, [a, b], rescored=rescored or {})
            job_transition(job, JobState.SETTLED, detail="honeypot checked", verification=verification)
            return job
        verdict = _compare(job, a, b)
        verification = {"path": "2-of-2", **verdict.as_dict(), "threshold": job.contract["tolerances"]}
        if not verdict.passed and rescored is not None and {a.result_hash, b.result_hash} <= rescored.keys():
            _job_settle_rescored(job, (a, b), verdict, verification, rescored)
            return job
        if not verdict.passed:
            job_transition(job, JobState.ADJUDICATING, detail=verdict.reason, verification=verification)
            effects.queue_task("dispatch_job", str(job.id))
            return job
        _job_settle(job, (a, b), (), verdict, verification, detail="2-of-2 agreement")
    return job


def _text_rescoring(job_id: object) -> dict[str, dict[str, Any]] | None:
    """The evidence that settles a text pair that differs, keyed by result hash: each
    claimed sequence re-scored in one teacher-forced pass on the registry's trusted runner
    (no third node to find and wait for, and a forged token is caught, where a third node's
    vote could only outnumber it). For a honeypot, each result that is not the registry's
    own answer is re-scored, so an honest node whose CPU flipped a near-tie is not punished.
    None when there is nothing to re-score, or no runner here (the job then goes to a third
    node). Reads without locks: job_verify re-checks the hashes."""
    job = (
        Job.objects.select_related("subnet", "honeypot")
        .filter(pk=job_id, state=JobState.VERIFYING, solo=False)
        .first()
    )
    if job is None or job.subnet.task_type != Subnet.TaskType.TEXT:
        return None
    pair = list(job.assignments.filter(state=AssignmentState.SUBMITTED, role__in=PAIR_ROLES))
    if job.honeypot is not None:
        known = protocol.sha256_hex(bytes(job.honeypot.result))
        pair = [x for x in pair if x.result_hash != known]
    elif len(pair) != 2 or pair[0].result_hash == pair[1].result_hash:
        return None
    if not pair:
        return None
    margin = float(job.contract["tolerances"]["logit_margin"])
    evidence = {}
    for assignment in pair:
        try:
            rescoring = trusted_rescore(job.subnet, job.inputs, selectors.assignment_result(assignment))
        except ServiceError as exc:
            log.warning("job %s: cannot re-score here (%s); a third node will break the tie", job.id, exc.detail)
            return None
        within, failing = judge_rescored(rescoring.positions, margin)
        gaps = [top - claimed for claimed, top in rescoring.positions]
        worst_gap = max(gaps, default=0.0)
        evidence[assignment.result_hash] = {
            "accepted": within and not rescoring.problems,
            "tokens": len(rescoring.positions),
            "max_gap": round(worst_gap, 4) if math.isfinite(worst_gap) else None,
            "failing_positions": failing[:20],
            "problems": rescoring.problems,
        }
    return evidence


def _job_settle_rescored(
    job: Job,
    pair: tuple[Assignment, Assignment],
    verdict: Verdict,
    verification: dict[str, Any],
    evidence: dict[str, dict[str, Any]],
) -> None:
    """Settle a text pair on re-scoring: both sequences within the margin is honest
    nondeterminism (a near-tie flipped): both are paid, nobody is struck. One within it:
    its node is paid as the majority (the registry, which did the tie-breaker's work, takes
    the tie-breaker's share) and the other gets nothing and a strike. Neither: the job
    fails, the user is refunded and both nodes are struck."""
    verification = {
        **verification,
        "path": "rescored",
        "rescoring": {x.role: evidence[x.result_hash] for x in pair},
    }
    accepted = tuple(x for x in pair if evidence[x.result_hash]["accepted"])
    rejected = tuple(x for x in pair if not evidence[x.result_hash]["accepted"])
    verification["majority"] = [x.role for x in accepted]
    if not accepted:
        Assignment.objects.filter(pk__in=[x.pk for x in pair]).update(state=AssignmentState.DISAGREED)
        why = "re-scoring accepted neither sequence"
        job_transition(job, JobState.FAILED, detail=why, failure_reason=why, verification=verification)
        if job.price_micro:
            ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason=why)
        nodes.reputation_record(node_ids=[x.node_id for x in pair], outcome=0.0, subnet=job.subnet)
        for loser in pair:
            nodes.node_strike(node_id=loser.node_id, reason="re-scoring rejected its tokens", job_id=job.id, subnet=job.subnet)
        return
    detail = "rescored: both within the margin" if not rejected else f"rescored: {rejected[0].role} rejected"
    reason = "" if not rejected else f"re-scoring rejected {rejected[0].role}"
    settled = Verdict(True, "tokens", verdict.worst, reason)
    _job_settle(job, accepted, rejected, settled, verification, detail=detail, strike_reason="re-scoring rejected its tokens")


def _compare(job: Job, first: Assignment, second: Assignment) -> Verdict:
    verdict = verify_pair(
        job.subnet.task_type,
        selectors.assignment_result(first),
        selectors.assignment_result(second),
        job.contract["tolerances"],
    )
    metrics.verifications.labels(passed=str(verdict.passed).lower()).inc()
    agreement_record(subnet=job.subnet, nodes=(first.node, second.node), verdict=verdict)
    return verdict


def node_environment(node: Node) -> str:
    return f"{node.runtime or '?'}/{node.backend or '?'}/{node.gpu_family or '?'}"


def agreement_record(*, subnet: Subnet, nodes: tuple[Node, Node], verdict: Verdict) -> None:
    """Add one compared pair to its environments' agreement statistics."""
    if verdict.worst is None:
        return
    env_a, env_b = sorted(node_environment(n) for n in nodes)
    stat, _ = AgreementStat.objects.get_or_create(subnet=subnet, env_a=env_a, env_b=env_b)
    AgreementStat.objects.filter(pk=stat.pk).update(
        samples=F("samples") + 1,
        passed=F("passed") + int(verdict.passed),
        sum_similarity=F("sum_similarity") + verdict.worst,
        min_similarity=Coalesce(Least("min_similarity", Value(verdict.worst)), Value(verdict.worst)),
    )


def _job_adjudicate(job: Job, results: dict[str, Assignment]) -> Job:
    """2-of-3: the tie-breaker sides with A or B. The majority pair is paid as a normal
    settlement; the minority gets nothing, a strike and a zero reputation outcome. If C
    agrees with neither, there is no majority: the job fails and the user is refunded."""
    a, b, c = results[AssignmentRole.A], results[AssignmentRole.B], results[AssignmentRole.C]
    with_a, with_b = _compare(job, a, c), _compare(job, b, c)
    verification = {
        **job.verification,
        "path": "2-of-3",
        "tie_break": {"a_c": with_a.as_dict(), "b_c": with_b.as_dict()},
    }
    if not with_a.passed and not with_b.passed:
        Assignment.objects.filter(pk__in=[a.pk, b.pk, c.pk]).update(state=AssignmentState.DISAGREED)
        job_transition(job, JobState.FAILED, detail="no majority", failure_reason="no majority", verification=verification)
        if job.price_micro:
            ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason="no majority in tie-break")
        nodes.reputation_record(node_ids=[a.node_id, b.node_id, c.node_id], outcome=0.0, subnet=job.subnet)
        return job
    # When C agrees with both, A and B differ only at the edge of tolerance: C sides with
    # the closer one and nobody is struck.
    sides_with_a = with_a.passed and (not with_b.passed or (with_a.worst or 0) >= (with_b.worst or 0))
    majority, minority, verdict = ((a, c), b, with_a) if sides_with_a else ((b, c), a, with_b)
    struck = () if with_a.passed and with_b.passed else (minority,)
    verification["majority"] = [x.role for x in majority]
    _job_settle(job, majority, struck, verdict, verification, detail=f"2-of-3, minority {minority.role}")
    return job


def _job_settle_solo(job: Job, solo: Assignment) -> None:
    """A trusted node's unchecked result: the user pays solo_price_bp of the pair price (the
    rest of the hold is released), the node earns what it would in a pair, the registry the
    remainder. No reputation is earned by unchecked work."""
    subnet = job.subnet
    amount = _price_captured(job, solo) * subnet.solo_price_bp // 10_000
    node_bp = min(10_000, subnet.split_node_a_bp * 10_000 // max(1, subnet.solo_price_bp))
    transfers = (
        ledger.job_settle(
            job_id=job.id,
            user=job.user,
            amount=amount,
            held=job.price_micro,
            node_ids=(solo.node_id,),
            split_bp=(node_bp, 0, 10_000 - node_bp),
            escrow=ledger.NodeEscrowRule(share_bp=subnet.escrow_share_bp, required=subnet.escrow_required_micro),
        )
        if amount
        else []
    )
    Assignment.objects.filter(pk=solo.pk).update(state=AssignmentState.AGREED)
    verdict = Verdict(True, "unchecked", None, "trusted node, not replicated")
    verification = {"path": "solo", **verdict.as_dict(), "price_micro": amount}
    receipt = _receipt_build(job, [solo], verdict, transfers, "solo")
    job_transition(job, JobState.SETTLED, detail="solo (adaptive replication)", verification=verification, receipt=receipt)
    metrics.jobs_settled.labels(subnet=subnet.slug).inc()


def _job_settle(
    job: Job,
    majority: tuple[Assignment, ...],
    struck: tuple[Assignment, ...],
    verdict: Verdict,
    verification: dict[str, Any],
    *,
    detail: str,
    strike_reason: str = "minority in a tie-break",
) -> None:
    """Pay the agreeing pair, update reputations, sign the receipt, mark the job settled.
    A majority of one (a text pair settled by re-scoring) is paid node A's share; the
    registry, which re-scored, keeps the rest."""
    subnet = job.subnet
    split_bp = subnet.split_bp if len(majority) == 2 else (subnet.split_node_a_bp, 0, 10_000 - subnet.split_node_a_bp)
    amount = _price_captured(job, majority[0])
    transfers = (
        ledger.job_settle(
            job_id=job.id,
            user=job.user,
            amount=amount,
            held=job.price_micro,
            node_ids=tuple(x.node_id for x in majority),
            split_bp=split_bp,
            escrow=ledger.NodeEscrowRule(share_bp=subnet.escrow_share_bp, required=subnet.escrow_required_micro),
        )
        if amount
        else []
    )
    Assignment.objects.filter(pk__in=[x.pk for x in majority]).update(state=AssignmentState.AGREED)
    nodes.reputation_record(node_ids=[x.node_id for x in majority], outcome=1.0, subnet=job.subnet)
    for loser in struck:
        Assignment.objects.filter(pk=loser.pk).update(state=AssignmentState.DISAGREED)
        nodes.reputation_record(node_ids=[loser.node_id], outcome=0.0, subnet=job.subnet)
        nodes.node_strike(node_id=loser.node_id, reason=strike_reason, job_id=job.id, subnet=job.subnet)
    receipt = _receipt_build(
        job, list(majority), verdict, transfers, verification["path"], verification.get("rescoring")
    )
    job_transition(job, JobState.SETTLED, detail=detail, verification=verification, receipt=receipt)
    metrics.jobs_settled.labels(subnet=job.subnet.slug).inc()


def _price_captured(job: Job, delivered: Assignment) -> int:
    """What the user pays: the held price, or less when the delivered result used fewer
    units than the hold covers (a text job holds max_tokens and pays for the tokens
    generated); settlement releases the rest. Never more than the hold."""
    family = families.family_for(job.subnet.task_type)
    used = family.used_units(job.inputs, selectors.assignment_result(delivered))
    if not job.price_micro or used >= family.price_units(job.inputs):
        return job.price_micro
    return min(job.price_micro, job.subnet.price_for(used))


def _receipt_build(
    job: Job,
    pair: list[Assignment],
    verdict: Verdict,
    transfers: list[Any],
    path: str,
    rescoring: dict[str, Any] | None = None,
) -> dict[str, Any]:
    tolerances = job.contract["tolerances"]
    measured = (
        {"min_cosine": verdict.worst, "cosine_min": tolerances.get("cosine_min")}
        if job.subnet.task_type == Subnet.TaskType.EMBEDDING
        else {"worst": verdict.worst, "tolerances": tolerances}
    )
    body = {
        "version": "bim-receipt/1",
        "job_id": str(job.id),
        "subnet": job.subnet.slug,
        "contract_hash": job.contract_hash,
        "input_hash": job.contract["input_hash"],
        "model_checksum": job.contract["model_checksum"],
        "result_hash": pair[0].result_hash,
        "verification": {
            "path": path,
            "metric": verdict.metric,
            **measured,
            # A text pair settled by re-scoring: per role, accepted or not and the worst gap.
            **({"rescoring": rescoring} if rescoring else {}),
        },
        "nodes": [
            {
                "role": a.role,
                "node_id": str(a.node_id),
                "public_key": a.node.public_key,
                "assignment_id": str(a.id),
                "session_key_pub": a.session_key_pub,
                "session_nonce": a.session_nonce,
                "session_cert": a.session_cert,
                "result_hash": a.result_hash,
                "shape": a.result_shape,
                "signature": a.signature,
            }
            for a in pair
        ],
        "settlement": {
            "price_micro": next((t.amount for t in transfers if t.kind == "capture"), 0),
            "transfers": [
                {"id": t.pk, "kind": t.kind, "amount": t.amount, "credit_account": t.credit_id} for t in transfers
            ],
        },
        "settled_at": timezone.now().isoformat(),
        "registry_key": registry_public_key(),
    }
    return {**body, "registry_signature": protocol.sign(registry_private_key(), protocol.receipt_message(body))}


# ---------------------------------------------------------------- expiry and the sweeper


def _job_expire(job: Job) -> None:
    job_transition(job, JobState.EXPIRED, detail="deadline passed", failure_reason="deadline passed")
    if job.price_micro:
        ledger.job_release(job_id=job.id, user=job.user, amount=job.price_micro, reason="job expired")
    open_assignments = list(job.assignments.filter(state=AssignmentState.DISPATCHED).values_list("id", "node_id"))
    job.assignments.filter(state=AssignmentState.DISPATCHED).update(state=AssignmentState.CANCELLED)
    for assignment_id, node_id in open_assignments:
        event = {"type": "job.cancel", "assignment_id": str(assignment_id)}
        effects.send_to_node(node_id, event)


def jobs_expire_overdue() -> int:
    overdue = Job.objects.filter(state__in=ALLOWED_TRANSITIONS.keys() - TERMINAL_STATES, expires_at__lte=timezone.now())
    expired = 0
    for job_id in overdue.values_list("id", flat=True)[:1000]:
        with transaction.atomic():
            job = _job_locked(job_id)
            if job is not None and job.state not in TERMINAL_STATES and job.expires_at <= timezone.now():
                if JobState.EXPIRED in ALLOWED_TRANSITIONS[job.state]:
                    _job_expire(job)
                    expired += 1
                # A verifying job has both results: let verification finish it.
    return expired


def sweep() -> dict[str, int]:
    """The registry's clock: drop silent nodes, expire overdue jobs, place waiting jobs."""
    stale_before = timezone.now() - timedelta(seconds=settings.NODE_STALE_S)
    dropped = 0
    for node_id, channel in Node.objects.filter(is_online=True, last_seen__lt=stale_before).values_list(
        "id", "channel_name"
    ):
        dropped += nodes.node_disconnect(node_id=node_id, channel_name=channel)
    return {
        "nodes_dropped": dropped,
        "jobs_expired": jobs_expire_overdue(),
        "assignments_made": jobs_dispatch_waiting(),
        "verifications_retried": jobs_verify_stalled(),
    }


def jobs_verify_stalled(*, older_than_s: float = 10.0) -> int:
    """Verify jobs whose verification task was lost (a worker died between the results
    and the verdict): both results are in, so the verdict can still be reached."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    stalled = Job.objects.filter(
        Q(state=JobState.VERIFYING, verifying_at__lt=cutoff)
        | Q(
            state=JobState.ADJUDICATING,
            assignments__role=AssignmentRole.C,
            assignments__state=AssignmentState.SUBMITTED,
            assignments__submitted_at__lt=cutoff,
        )
    ).values_list("id", flat=True)[:500]
    for job_id in stalled:
        job_verify(job_id=job_id)
    return len(stalled)


_last_sweep = 0.0


def sweep_if_due(*, interval_s: float = 2.0) -> None:
    """Embedded mode has no Celery beat: node heartbeats drive the sweeper instead, at most
    once per interval per process. With a real worker, beat runs `tasks.sweep`."""
    global _last_sweep
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        return
    now = time.monotonic()
    if now - _last_sweep < interval_s:
        return
    _last_sweep = now
    sweep()

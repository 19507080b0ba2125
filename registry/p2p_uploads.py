"""Peer-to-peer results the registry must see (docs/p2p.md §4): which committed payloads it
asks for and why (a mismatch, an unconfirmed delivery, a dispute, output rules, an audit draw,
a honeypot, a silent partner), the requests themselves (sent again to a node that comes
back), the wait at verification, and what follows when a node does not upload: a strike, and
its partner's bytes to a tie-breaker.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bim_core import content_policy, protocol
from ledger import services as ledger

from . import effects
from .jobs import PAIR_ROLES, job_locked, job_transition
from .models import Assignment, AssignmentState, Job, JobState

# Why the registry asks a node for a committed result's bytes.
UPLOAD_MISMATCH = "mismatch"  # the pair's hashes differ: compared as a relay job
UPLOAD_UNDELIVERED = "undelivered"  # the user did not confirm receiving it in time
UPLOAD_DISPUTE = "dispute"  # the user says the bytes it got are not the committed ones
UPLOAD_POLICY = "policy"  # the contract's output rules must be checked before delivery
UPLOAD_AUDIT = "audit"  # drawn for audit: sentinels re-run it like a relay job
UPLOAD_PARTNER_SILENT = "partner_silent"  # the other node did not upload: a tie-breaker decides

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



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
from .models import Assignment, AssignmentState, Honeypot, Job, JobState, JobTransport, ServiceHeartbeat
from .penalties import wrong_result_punish
from .submit import job_create

log = logging.getLogger("bim.registry.honeypots")

HONEYPOT_USERNAME = "bim-honeypots"


def honeypot_user() -> AbstractBaseUser:
    """The registry's own account that honeypot jobs belong to. It has no password (nobody
    logs in as it); it is active because the honeypot peer brings peer-to-peer honeypots'
    inputs as this user, through the user socket and API a user's client uses."""
    user, created = get_user_model().objects.get_or_create(username=HONEYPOT_USERNAME)
    if created or not user.is_active or user.has_usable_password():
        user.set_unusable_password()
        user.is_active = True
        user.save(update_fields=["password", "is_active"])
    return user


# The honeypot peer (registry.honeypot_peer) says it runs every PEER_HEARTBEAT_S; honeypots
# go peer to peer only while its word is fresher than PEER_STALE_S.
PEER_NAME = "honeypot-peer"
PEER_HEARTBEAT_S = 5
PEER_STALE_S = 30


def peer_heartbeat() -> None:
    ServiceHeartbeat.objects.update_or_create(name=PEER_NAME, defaults={"seen_at": timezone.now()})


def peer_alive() -> bool:
    since = timezone.now() - timedelta(seconds=PEER_STALE_S)
    return ServiceHeartbeat.objects.filter(name=PEER_NAME, seen_at__gte=since).exists()


def peer_token() -> str:
    """The honeypot account's API token, for the peer's user socket and API calls."""
    from rest_framework.authtoken.models import Token

    return Token.objects.get_or_create(user=honeypot_user())[0].key


def peer_jobs_waiting() -> list[tuple[str, dict[str, Any], float]]:
    """Peer-to-peer honeypots whose nodes wait for the input: (job id, inputs, seconds left)."""
    now = timezone.now()
    rows = Job.objects.filter(
        honeypot__isnull=False, transport=JobTransport.P2P, state__in=[JobState.QUEUED, JobState.DISPATCHED]
    ).values_list("id", "honeypot__inputs", "expires_at")
    return [(str(job_id), inputs, (expires_at - now).total_seconds()) for job_id, inputs, expires_at in rows]


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


def honeypot_issue(*, subnet: Subnet, peer_to_peer: bool = False) -> Job | None:
    """Send one honeypot into the subnet, the least used of its pool for the current model;
    `peer_to_peer`: as a P2P job whose inputs the honeypot peer brings over data channels."""

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
            peer_to_peer=peer_to_peer,
        )


def honeypots_issue_due(*, window_s: int = 60) -> int:
    """Beat: for each subnet, issue honeypot_rate × the user jobs of the last window (the
    fractional part as a coin toss, so low-traffic subnets are still sampled). Each travels
    as the users' jobs of the window do: peer to peer in the share theirs did (while the
    honeypot peer runs), so a node cannot be honest on one transport and cheat on the other."""
    since = timezone.now() - timedelta(seconds=window_s)
    peer_runs = peer_alive()
    issued = 0
    for subnet in Subnet.objects.filter(state=Subnet.State.ACTIVE, honeypot_rate_bp__gt=0):
        window = Job.objects.filter(subnet=subnet, created_at__gte=since, honeypot__isnull=True)
        user_jobs = window.count()
        p2p_share = window.filter(transport=JobTransport.P2P).count() / user_jobs if user_jobs else 0.0
        expected = user_jobs * subnet.honeypot_rate_bp / 10_000
        count = int(expected) + (random.random() < expected - int(expected))
        for _ in range(count):
            peer_to_peer = peer_runs and random.random() < p2p_share
            issued += honeypot_issue(subnet=subnet, peer_to_peer=peer_to_peer) is not None
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
    # By result hash: of a peer-to-peer pair that committed the same hash the registry holds
    # one payload (uploaded as for an audit), which is both nodes' result.
    payloads = {a.result_hash: selectors.assignment_result(a) for a in results if a.result is not None}
    outcome = {}
    verdicts = {}
    for assignment in results:
        verdict = verify_pair(job.subnet.task_type, payloads[assignment.result_hash], expected, job.contract["tolerances"])
        outcome[assignment.role] = verdict.as_dict()
        evidence = (rescored or {}).get(assignment.result_hash)
        if not verdict.passed and evidence is not None:
            outcome[assignment.role]["rescoring"] = evidence
            if evidence["accepted"]:
                verdict = Verdict(True, verdict.metric, verdict.worst, "differs, but re-scoring accepted every token")
                outcome[assignment.role].update(verdict.as_dict())
        verdicts[assignment.pk] = verdict
    # Node rows are locked in the order of their keys, as every other writer does
    # (reputation_record): two honeypots sharing two nodes in opposite roles deadlocked.
    for assignment in sorted(results, key=lambda a: str(a.node_id)):
        verdict = verdicts[assignment.pk]
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


"""Job submission: validate the inputs by task family, write the contract, hold the price,
queue the dispatch. Idempotent per (user, idempotency key).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from bim_core import families, protocol
from bim_core.contracts import build_contract
from bim_core.errors import ServiceError
from ledger import errors as ledger_errors
from ledger import services as ledger
from subnets import data_terms
from subnets.licensing import license_terms
from subnets.models import Subnet
from subnets.tokenizing import input_coverage_warnings

from . import effects, metrics, policy_enforcement, routing_index
from .models import (
    Honeypot,
    Job,
    JobEvent,
    JobState,
    JobTransport,
)
from .prepared import PreparedQuery, PreparedRows
from .terms import JobTerms

log = logging.getLogger("bim.registry")

BATCH_MAX = protocol.JOBS_PER_BATCH_MAX


@dataclass(frozen=True)
class JobRequest:
    """One job as a user asks for it."""

    subnet_slug: str
    inputs: dict[str, Any] | None
    idempotency_key: str
    session_key_pub: str | None = None
    # A peer-to-peer job (docs/p2p.md): no inputs, their hash and summary instead.
    transport: str = JobTransport.RELAY
    input_hash: str | None = None
    input_summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Prepared:
    """A request checked against its subnet: the inputs (relay) or nothing but their hash
    and summary (peer to peer)."""

    subnet: Subnet
    inputs: dict[str, Any]
    input_hash: str
    input_summary: dict[str, int] | None  # set for a peer-to-peer job only


def job_submit(
    *,
    user: AbstractBaseUser,
    subnet_slug: str,
    inputs: dict[str, Any] | None,
    idempotency_key: str,
    session_key_pub: str | None = None,
    transport: str = JobTransport.RELAY,
    input_hash: str | None = None,
    input_summary: dict[str, Any] | None = None,
) -> tuple[Job, bool]:
    """Create a job of the subnet's task family and hold its price. A repeated idempotency
    key returns the first job (created=False); the same key with different inputs is refused."""
    request = JobRequest(subnet_slug, inputs, idempotency_key, session_key_pub, transport, input_hash, input_summary)
    return jobs_submit(user=user, requests=[request], label=lambda _: "")[0]


def jobs_submit(
    *,
    user: AbstractBaseUser,
    requests: list[JobRequest],
    label: Callable[[int], str] = lambda i: f"jobs[{i}]: ",
    retry_on_race: bool = True,
) -> list[tuple[Job, bool]]:
    """Submit jobs together, all or none: every new one is written and held in one
    transaction (multi-row inserts, one ledger posting), or a refusal names the first
    request at fault (`label(index)` prefixes its message). Each request is idempotent as a
    single submission is; a key repeated within the batch is refused."""
    if not requests or len(requests) > BATCH_MAX:
        raise ServiceError("invalid_batch", f"a batch holds 1 to {BATCH_MAX} jobs, not {len(requests)}")
    keys = [r.idempotency_key for r in requests]
    if len(set(keys)) != len(keys):
        repeated = next(i for i, key in enumerate(keys) if keys.index(key) != i)
        raise ServiceError("idempotency_conflict", f"{label(repeated)}this idempotency key is used twice in the batch", status=409)
    subnets = _public_subnets({r.subnet_slug for r in requests})
    prepared = []
    for index, request in enumerate(requests):
        subnet = _subnet_taking_jobs(subnets.get(request.subnet_slug), request.subnet_slug, label(index))
        prepared.append(_prepared(subnet, request, label(index)))
    existing = _jobs_already_taken(user, keys)
    outcome: list[tuple[Job, bool] | None] = []
    new: list[tuple[int, JobRequest, _Prepared]] = []
    for index, (request, ready) in enumerate(zip(requests, prepared)):
        job = existing.get(request.idempotency_key)
        if job is not None:
            outcome.append((_same_job_or_conflict(job, ready.subnet, ready.input_hash, label(index)), False))
            continue
        # A repeat returns its job as it was accepted; only new jobs meet today's policy.
        # A peer-to-peer job's inputs are the nodes' to check (its contract binds them to the
        # policy); its summary is checked here.
        policy_enforcement.inputs_check(
            ready.subnet, ready.inputs, label=label(index), index=index, summary=ready.input_summary
        )
        outcome.append(None)
        new.append((index, request, ready))
    _data_terms_check(user, [(index, ready.subnet) for index, _, ready in new], label)
    for subnet in {ready.subnet.pk: ready.subnet for _, _, ready in new}.values():
        if not routing_index.subnet_has_nodes_online(subnet):
            # Accepted, it would only wait for its deadline: say so now, with when to try again.
            raise ServiceError("no_capacity", f"no node serves {subnet.slug} now; try again later", status=503)
    if not new:
        return [o for o in outcome if o is not None]
    rate_keys = _rate_take(user, [ready.subnet for _, _, ready in new])
    try:
        with transaction.atomic():
            jobs = jobs_create(
                user=user,
                jobs=[
                    _job_build(
                        user, ready.subnet, ready.inputs, r.idempotency_key, r.session_key_pub,
                        input_summary=ready.input_summary, input_hash=ready.input_hash,
                    )
                    for _, r, ready in new
                ],
            )
    except IntegrityError:
        _rate_give_back(rate_keys)
        if not retry_on_race:
            raise
        # A concurrent request with one of these keys won the insert: now they exist.
        return jobs_submit(user=user, requests=requests, label=label, retry_on_race=False)
    except ServiceError:
        _rate_give_back(rate_keys)
        raise
    for (index, _, ready), job in zip(new, jobs):
        outcome[index] = (job, True)
        metrics.jobs_submitted.labels(subnet=ready.subnet.slug).inc()
        if ready.input_summary is not None:
            # All the registry ever knows of a peer-to-peer job's input (docs/p2p.md).
            log.info("job %s: peer to peer, input_hash %s, summary %s", job.id, ready.input_hash, ready.input_summary)
    return [o for o in outcome if o is not None]


# A single submission's repeat check, compiled once (registry.prepared).
_job_already_taken = PreparedQuery(
    lambda user_id, key: Job.objects.filter(user_id=user_id, idempotency_key=key), (int, str)
)


def _jobs_already_taken(user: AbstractBaseUser, keys: list[str]) -> dict[str, Job]:
    """The user's jobs submitted before under these idempotency keys, by key."""
    if len(keys) == 1:
        found = _job_already_taken.all(user.pk, keys[0])
    else:
        found = list(Job.objects.filter(user=user, idempotency_key__in=keys))
    return {job.idempotency_key: job for job in found}


_public_subnet = PreparedQuery(
    lambda slug: Subnet.objects.filter(slug=slug).exclude(state=Subnet.State.DRAFT).select_related("license"), (str,)
)


def _public_subnets(slugs: set[str]) -> dict[str, Subnet]:
    """Subnets by slug, drafts left out: a draft is not public until it is activated. A
    single submit's one slug through a compiled statement (registry.prepared); a batch's
    slugs, up to one per job, in one query."""
    if len(slugs) != 1:
        found = Subnet.objects.filter(slug__in=slugs).exclude(state=Subnet.State.DRAFT).select_related("license")
        return {s.slug: s for s in found}
    [slug] = slugs
    try:
        subnet = _public_subnet.first(slug)
    except ValidationError:  # a slug PostgreSQL cannot hold names no subnet
        return {}
    return {} if subnet is None else {slug: subnet}


def _subnet_taking_jobs(subnet: Subnet | None, slug: str, label: str) -> Subnet:
    """The subnet if it takes new jobs; a paused or retired one is refused with its own
    code, so a client can tell "try later" from "gone" from "no such subnet"."""
    if subnet is None:
        raise ServiceError("unknown_subnet", f"{label}no active subnet {slug!r}", status=404)
    if subnet.state == Subnet.State.PAUSED:
        raise ServiceError("subnet_paused", f"{label}subnet {slug!r} is paused by its operator; try again later", status=409)
    if subnet.state == Subnet.State.RETIRED:
        raise ServiceError("subnet_retired", f"{label}subnet {slug!r} is retired and takes no new jobs", status=410)
    return subnet


def _rate_take(user: AbstractBaseUser, subnets: list[Subnet]) -> list[tuple[str | None, int]]:
    """Count the new jobs against each subnet's policy rate, all or none."""
    counts: dict[int, tuple[Subnet, int]] = {}
    for subnet in subnets:
        counts[subnet.pk] = (subnet, counts.get(subnet.pk, (subnet, 0))[1] + 1)
    taken: list[tuple[str | None, int]] = []
    try:
        for subnet, count in counts.values():
            taken.append((policy_enforcement.rate_take(user=user, subnet=subnet, count=count), count))
    except ServiceError:
        _rate_give_back(taken)
        raise
    return taken


def _rate_give_back(taken: list[tuple[str | None, int]]) -> None:
    for key, count in taken:
        policy_enforcement.rate_give_back(key, count)


def _data_terms_check(user: AbstractBaseUser, jobs: list[tuple[int, Subnet]], label: Callable[[int], str]) -> None:
    """Refuse, before anything is written or held, a new job on a subnet whose data-handling
    terms the user has not acknowledged (contributors see its inputs and outputs), naming
    the first job at fault. A repeat of a job already taken is not asked again."""
    subnets = {subnet.pk: subnet for _, subnet in jobs}
    if len(subnets) == 1:
        [subnet_id] = subnets
        rows = _acknowledged_versions.all(user.pk, subnet_id)
        acknowledged = data_terms.data_terms_acknowledged_among(subnets.values(), rows)
    else:
        acknowledged = data_terms.data_terms_acknowledged_many(user=user, subnets=subnets.values())
    for index, subnet in jobs:
        if subnet.pk not in acknowledged:
            raise data_terms.data_terms_refusal(subnet, label(index))


# A single subnet's data-terms check (every single submission's), compiled once; which
# acknowledgements stand is subnets.data_terms' rule.
_acknowledged_versions = PreparedRows(
    lambda user_id, subnet_id: data_terms.acknowledged_versions(user_id=user_id, subnet_ids=[subnet_id]), (int, int)
)


def _prepared(subnet: Subnet, request: JobRequest, label: str) -> _Prepared:
    if request.session_key_pub is not None:
        try:
            protocol.parse_public_key(request.session_key_pub)
        except protocol.ProtocolError as exc:
            raise ServiceError("invalid_session_key", f"{label}{exc.detail}") from None
    family = families.family_for(subnet.task_type)
    if request.transport == JobTransport.P2P:
        if request.inputs is not None:
            raise ServiceError("invalid_input", f"{label}a peer-to-peer job sends input_hash and input_summary, never inputs")
        if not isinstance(request.input_hash, str) or not HEX64.fullmatch(request.input_hash):
            raise ServiceError("invalid_input", f"{label}input_hash must be 64 lowercase hex digits")
        try:
            summary = family.validate_summary(request.input_summary, subnet.limits())
        except families.InputInvalid as exc:
            raise ServiceError("invalid_input", f"{label}{exc}") from None
        return _Prepared(subnet, {}, request.input_hash, summary)
    if request.transport != JobTransport.RELAY:
        raise ServiceError("invalid_transport", f"{label}transport is relay or p2p, not {request.transport!r}")
    if request.inputs is None or request.input_hash is not None or request.input_summary is not None:
        raise ServiceError("invalid_input", f"{label}a relay job sends inputs (input_hash and input_summary are for p2p)")
    try:
        inputs = family.validate_inputs(request.inputs, subnet.limits())
    except families.InputInvalid as exc:
        raise ServiceError("invalid_input", f"{label}{exc}") from None
    return _Prepared(subnet, inputs, protocol.input_hash(inputs), None)


HEX64 = re.compile(r"[0-9a-f]{64}")


def _same_job_or_conflict(job: Job, subnet: Subnet, input_hash: str, label: str) -> Job:
    if job.subnet_id != subnet.pk or job.contract["input_hash"] != input_hash:
        raise ServiceError(
            "idempotency_conflict", f"{label}this idempotency key was used for a different job", status=409
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
    peer_to_peer: bool = False,
) -> Job:
    """Write a queued job with its contract, hold its price and queue its dispatch. A
    honeypot is the registry's own job: free, and otherwise the same in every byte.
    `peer_to_peer`: the job keeps only the inputs' hash and summary, as a user's P2P submit
    does (the registry's own honeypot peer brings the inputs, registry.honeypot_peer)."""
    if peer_to_peer:
        family = families.family_for(subnet.task_type)
        job = _job_build(
            user, subnet, {}, idempotency_key, session_key_pub, honeypot,
            input_summary=family.input_summary(inputs), input_hash=protocol.input_hash(inputs),
        )
    else:
        job = _job_build(user, subnet, inputs, idempotency_key, session_key_pub, honeypot)
    return jobs_create(user=user, jobs=[job])[0]


def _job_build(
    user: AbstractBaseUser,
    subnet: Subnet,
    inputs: dict[str, Any],
    idempotency_key: str,
    session_key_pub: str | None,
    honeypot: Honeypot | None = None,
    *,
    input_summary: dict[str, int] | None = None,
    input_hash: str | None = None,
) -> Job:
    """A queued job with its contract, not yet written: a relay job from its inputs, a
    peer-to-peer one from their hash and summary (`inputs` then {})."""
    job_id = uuid.uuid4()
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
        input_hash=input_hash or protocol.input_hash(inputs),
        limits={
            "max_items": subnet.max_items_per_job,
            "latency_ms": subnet.latency_ms,
            # The nodes check a peer-to-peer input's sizes: the registry never sees it.
            **({"max_chars": subnet.max_chars_per_item} if input_summary is not None else {}),
        },
        session_key_pub=session_key,
        trusted=subnet.trusted,
        policy=subnet.content_policy or None,
        license=license_terms(subnet),
        input_summary=input_summary,
    )
    family = families.family_for(subnet.task_type)
    sized = input_summary if input_summary is not None else inputs
    terms = JobTerms.of_subnet(subnet)
    return Job(
        id=job_id,
        user=user,
        subnet=subnet,
        idempotency_key=idempotency_key,
        contract=contract,
        contract_hash=protocol.contract_hash(contract),
        inputs=inputs,
        transport=JobTransport.RELAY if input_summary is None else JobTransport.P2P,
        item_count=family.item_count(sized),
        price_micro=0
        if honeypot is not None
        else terms.price_for(family.price_units(sized)) + (terms.relay_reserve_micro if input_summary is not None else 0),
        terms=terms.as_dict(),
        honeypot=honeypot,
        warnings=input_coverage_warnings(subnet, inputs) if honeypot is None and inputs else [],
        expires_at=timezone.now() + timedelta(milliseconds=subnet.latency_ms),
    )


def jobs_create(*, user: AbstractBaseUser, jobs: list[Job]) -> list[Job]:
    """Write built jobs of one user (multi-row inserts), hold their prices in one posting,
    and queue one dispatcher run per subnet, which places a burst of submissions together."""
    Job.objects.bulk_create(jobs)
    JobEvent.objects.bulk_create(
        JobEvent(job=job, from_state="", to_state=JobState.QUEUED, detail="submitted") for job in jobs
    )
    holds = [(job.id, job.price_micro) for job in jobs if job.price_micro]
    if holds:
        try:
            ledger.jobs_hold(user=user, holds=holds)
        except ledger_errors.InsufficientFunds as exc:
            what = "this job costs" if len(jobs) == 1 else f"these {len(jobs)} jobs cost"
            raise ServiceError(
                "insufficient_credits",
                f"{what} {sum(price for _, price in holds)} micro-credits; your balance is {exc.account.balance}",
                status=402,
            ) from None
    for subnet_id in sorted({job.subnet_id for job in jobs}):
        effects.queue_task_coalesced("dispatch_waiting", str(subnet_id))
    return jobs

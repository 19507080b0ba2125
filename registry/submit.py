"""Job submission: validate the inputs by task family, write the contract, hold the price,
queue the dispatch. Idempotent per (user, idempotency key).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from bim_core import families, protocol
from bim_core.contracts import build_contract
from bim_core.errors import ServiceError
from ledger import errors as ledger_errors
from ledger import services as ledger
from subnets.models import Subnet
from subnets.services import input_coverage_warnings

from . import effects, metrics, routing_index
from .models import (
    Honeypot,
    Job,
    JobEvent,
    JobState,
)


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
    if not routing_index.subnet_has_nodes_online(subnet.pk):
        # Accepted, it would only wait for its deadline: say so now, with when to try again.
        raise ServiceError("no_capacity", f"no node serves {subnet.slug} now; try again later", status=503)
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
        except ledger_errors.InsufficientFunds as exc:
            raise ServiceError(
                "insufficient_credits",
                f"this job costs {price} micro-credits; your balance is {exc.account.balance}",
                status=402,
            ) from None
    effects.queue_task("dispatch_job", str(job.id))
    return job

"""What the registry does about a subnet's lifecycle: creating one from a model package
(packaged, benchmark reference and honeypot pool computed, then activated if asked),
and every state change, which connected nodes are told about.

The state machine and the change log are `subnets.lifecycle`'s; this module adds the
parts only the registry has: node sockets, routing, jobs and honeypots.

- pause: routing offers none of the subnet's jobs (routing_index), connected nodes get
  `subnet_state` and stop taking its work. Queued jobs lose nothing: they wait, and one
  whose deadline passes during the pause expires through the sweeper with its hold
  released. Work already offered finishes and settles.
- resume: nodes are told, waiting jobs are dispatched.
- retire (final): nodes are told, every job not yet verifying expires now with its hold
  released, its nodes told to cancel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from bim_core.errors import ServiceError
from subnets import catalog, licensing
from subnets import selectors as subnet_selectors
from subnets import services as subnet_services
from subnets.lifecycle import subnet_created_log, subnet_state_change
from subnets.models import License, Subnet

from . import effects
from .honeypots import honeypot_pool_refresh
from .jobs import job_expire
from .models import Job, JobState, NodeSubnet
from .routing_index import index_bump

log = logging.getLogger("bim.registry.lifecycle")

# Jobs a retirement ends: not yet verifying (those are about to settle on results in hand).
RETIRED_ENDS = (JobState.QUEUED, JobState.DISPATCHED, JobState.ADJUDICATING)


def subnet_state_message(subnet: Subnet) -> dict[str, Any]:
    """The `subnet_state` message (docs/protocol.md §4.2)."""
    return {
        "type": "subnet_state",
        "subnet": subnet.slug,
        "state": subnet.state,
        "model_checksum": subnet.model_checksum,
        "manifest_url": subnet_selectors.manifest_url(subnet),
    }


def subnet_state_set(*, subnet_id: int, to: str, operator: AbstractBaseUser | None, reason: str) -> Subnet:
    """Change the subnet's state (subnets.lifecycle checks the transition and logs it) and,
    on commit, tell every connected node of the subnet and re-route."""
    with transaction.atomic():
        subnet, _before = subnet_state_change(subnet_id=subnet_id, to=to, operator=operator, reason=reason)
        index_bump(subnet.pk)
        message = subnet_state_message(subnet)
        online = NodeSubnet.objects.filter(subnet=subnet, node__is_online=True).values_list("node_id", flat=True)
        for node_id in online:
            effects.send_to_node(node_id, {"type": "subnet.state", "message": message})
        if to == Subnet.State.ACTIVE:
            effects.queue_task("dispatch_waiting", str(subnet.pk))
        elif to == Subnet.State.RETIRED:
            ended = Job.objects.select_for_update(of=("self",)).select_related("user").filter(
                subnet=subnet, state__in=RETIRED_ENDS
            )
            for job in ended.order_by("pk"):
                job_expire(job, reason=f"subnet {subnet.slug} retired")
    return subnet


def subnet_create_from_package(
    *,
    operator: AbstractBaseUser,
    package_key: str,
    slug: str,
    name: str = "",
    license_: License | None = None,
    settings: dict[str, Any] | None = None,
    activate: bool = False,
    upload: Path | None = None,
    upload_name: str = "",
) -> Subnet:
    """Create a draft subnet for one of the catalog's model packages, with the family's
    settings (overridden by `settings`), and queue its preparation: packaging, the benchmark
    reference and the honeypot pool (`subnet_prepare`). It stays a draft until the
    reference exists; with `activate` it is then activated. With `upload` (the operator's
    own build of the family's model, on disk) that file is chunked here, in the request,
    since a worker may not see the request's temporary file; it stands in for the package's
    model, the family's tokenizer and settings apply."""
    package = catalog.PACKAGES.get(package_key)
    if package is None:
        raise ServiceError("unknown_package", f"{package_key!r} is not an installed model package of this registry")
    overrides = dict(settings or {})
    unknown = set(overrides) - {f.name for f in Subnet._meta.concrete_fields}
    if unknown:
        raise ServiceError("unknown_field", f"subnets have no field {sorted(unknown)}")
    fields = {**package.settings(), **overrides}
    if name:
        fields["name"] = name
    with transaction.atomic():
        if license_ is None:
            terms = package.license_terms
            license_, _ = License.objects.get_or_create(slug=terms["slug"], version=terms["version"], defaults=terms)
        try:
            with transaction.atomic():
                subnet = Subnet.objects.create(
                    slug=slug,
                    license=license_,
                    state=Subnet.State.DRAFT,
                    setup_status=Subnet.Setup.PENDING,
                    setup_detail=f"queued: packaging {package.model.package}:{package.model.path}",
                    **fields,
                )
        except IntegrityError:
            raise ServiceError("slug_taken", f"a subnet {slug!r} exists already", status=409) from None
        if activate:
            # Refused now, on the form, rather than after minutes of preparation.
            licensing.paid_hosting_check(subnet, state=Subnet.State.ACTIVE)
        source = f"package {package.key}"
        if upload is not None:
            subnet_services.subnet_model_upload(subnet=subnet, source=upload, name=upload_name, tokenizer=package.tokenizer)
            source = f"upload {upload_name} ({subnet.model_checksum[:12]}…) with package {package.key}'s settings"
        subnet_created_log(subnet=subnet, operator=operator, source=source)
        effects.queue_task("subnet_prepare", str(subnet.pk), package.key, str(operator.pk), "1" if activate else "")
    return subnet


def subnet_prepare(*, subnet_id: int, package_key: str, operator_id: int | None, activate: bool) -> Subnet:
    """Package the subnet's model, compute its benchmark reference and honeypot pool, and
    activate it if asked. Safe to run twice: only a run that moves the status from pending
    (or failed) to running does the work. A failure is recorded on the subnet, where the
    operator sees it, and leaves it a draft."""
    claimed = Subnet.objects.filter(
        pk=subnet_id, state=Subnet.State.DRAFT, setup_status__in=(Subnet.Setup.PENDING, Subnet.Setup.FAILED)
    ).update(setup_status=Subnet.Setup.RUNNING, setup_detail="packaging the model")
    subnet = Subnet.objects.get(pk=subnet_id)
    if not claimed:
        return subnet  # another run has it, or it is done
    operator = get_user_model().objects.filter(pk=operator_id).first() if operator_id else None
    try:
        package = catalog.PACKAGES[package_key]
        uploaded = subnet.artifacts.filter(role="model", source__startswith=subnet_services.UPLOAD_SOURCE).exists()
        if not uploaded:
            subnet = subnet_services.subnet_package(slug=subnet.slug, model=package.model, tokenizer=package.tokenizer)
        _setup_note(subnet, Subnet.Setup.RUNNING, "computing the benchmark reference")
        reference = subnet_services.benchmark_reference_compute(
            subnet=subnet, inputs=package.benchmark_inputs(), pool=package.benchmark_pool()
        )
        honeypots = honeypot_pool_refresh(subnet=subnet, pool=package.honeypots())
        detail = (
            f"packaged model {subnet.model_checksum[:16]}…; benchmark reference with "
            f"{1 + reference.pool.count()} suites; {honeypots} honeypots"
        )
        _setup_note(subnet, Subnet.Setup.READY, detail)
    except Exception as exc:  # noqa: BLE001 - any failure must reach the operator's page, not only a log
        log.exception("preparing subnet %s failed", subnet.slug)
        why = exc.detail if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        _setup_note(subnet, Subnet.Setup.FAILED, f"failed: {why}")
        return Subnet.objects.get(pk=subnet_id)
    if activate:
        try:
            subnet = subnet_state_set(
                subnet_id=subnet.pk, to=Subnet.State.ACTIVE, operator=operator, reason=f"created from package {package_key}"
            )
        except ServiceError as exc:
            _setup_note(subnet, Subnet.Setup.READY, f"{detail}; not activated: {exc.detail}")
    return Subnet.objects.get(pk=subnet_id)


def _setup_note(subnet: Subnet, status: str, detail: str) -> None:
    Subnet.objects.filter(pk=subnet.pk).update(setup_status=status, setup_detail=detail[:2000])

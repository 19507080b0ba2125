"""A subnet's lifecycle and its change log.

Every change an operator makes to a subnet (its state, a price, a tolerance, a policy)
goes through `subnet_state_change` or `subnet_update`, which write the change and one
`SubnetChange` row per field (who, when, before, after) in one transaction. What the
registry does about a state change (telling connected nodes, routing) is
`registry.lifecycle`'s, on top of this.

States: draft → active ↔ paused; active or paused → retired, which is final. A subnet
becomes active only with a benchmark reference computed for its current model checksum:
without one no node can pass a benchmark, so the subnet would take jobs nobody serves.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from bim_core.errors import ServiceError

from .data_terms import data_terms_text
from .models import BenchmarkReference, Subnet, SubnetChange

State = Subnet.State

TRANSITIONS: dict[str, frozenset[str]] = {
    State.DRAFT: frozenset({State.ACTIVE, State.RETIRED}),
    State.ACTIVE: frozenset({State.PAUSED, State.RETIRED}),
    State.PAUSED: frozenset({State.ACTIVE, State.RETIRED}),
    State.RETIRED: frozenset(),
}

# Fields no operator edits by hand: checksums name the packaged files (re-package to change
# them), the state moves through subnet_state_change, the rest is bookkeeping.
NOT_EDITABLE = frozenset(
    {
        "id",
        "slug",
        "model_checksum",
        "tokenizer_checksum",
        "state",
        "setup_status",
        "setup_detail",
        "data_terms_version",  # moves with the terms' text (subnet_update)
        "created_at",
        "updated_at",
    }
)


def subnet_state_change(
    *, subnet_id: int, to: str, operator: AbstractBaseUser | None, reason: str
) -> tuple[Subnet, str]:
    """Move the subnet to state `to` and log it; returns (subnet, the state it left). A
    transition the lifecycle does not allow, or activation without a benchmark reference
    for the current model, is refused with a clear message and changes nothing."""
    if to not in State.values:
        raise ServiceError("invalid_state", f"{to!r} is not a subnet state ({', '.join(State.values)})")
    reason = reason.strip()
    if not reason:
        raise ServiceError("reason_required", "say why the subnet's state changes")
    with transaction.atomic():
        # Locked: two operators pausing and retiring at once must not both read "active".
        subnet = Subnet.objects.select_for_update().get(pk=subnet_id)
        before = subnet.state
        if to == before:
            raise ServiceError("invalid_transition", f"subnet {subnet.slug} is already {before}", status=409)
        if to not in TRANSITIONS[before]:
            allowed = ", ".join(sorted(TRANSITIONS[before])) or "none: retired is final"
            raise ServiceError(
                "invalid_transition", f"subnet {subnet.slug} cannot go from {before} to {to} (allowed: {allowed})", status=409
            )
        if to == State.ACTIVE:
            _reference_required(subnet)
        subnet.state = to
        subnet.save(update_fields=["state", "updated_at"])
        SubnetChange.objects.create(subnet=subnet, operator=operator, field="state", before=before, after=to, reason=reason)
    return subnet, before


def _reference_required(subnet: Subnet) -> None:
    reference = BenchmarkReference.objects.filter(subnet=subnet).values_list("model_checksum", flat=True).first()
    if reference is None:
        raise ServiceError(
            "benchmark_reference_missing",
            f"subnet {subnet.slug} has no benchmark reference: no node could pass its benchmark. "
            "Compute it (creation from a package does) before activating.",
            status=409,
        )
    if reference != subnet.model_checksum:
        raise ServiceError(
            "benchmark_reference_stale",
            f"subnet {subnet.slug}'s benchmark reference was computed for model {reference[:12]}…, "
            f"not its current model {subnet.model_checksum[:12]}…; recompute it before activating.",
            status=409,
        )


def subnet_update(
    *, subnet_id: int, changes: dict[str, Any], operator: AbstractBaseUser | None, reason: str = ""
) -> tuple[Subnet, list[SubnetChange]]:
    """Set the given fields (a foreign key by its `<name>_id`) and log each one that really
    changed. The whole subnet is validated first (a split that does not add up, a negative
    price): nothing is written unless all of it holds. Running jobs keep the terms they
    were submitted under (their contract and `Job.terms`)."""
    names = {f.attname: f for f in Subnet._meta.concrete_fields}
    unknown = set(changes) - set(names)
    if unknown:
        raise ServiceError("unknown_field", f"subnets have no field {sorted(unknown)}")
    fixed = set(changes) & NOT_EDITABLE
    if fixed:
        raise ServiceError("field_not_editable", f"{sorted(fixed)} cannot be edited here")
    with transaction.atomic():
        subnet = Subnet.objects.select_for_update().get(pk=subnet_id)
        terms_before = data_terms_text(subnet)
        logged = []
        for name, value in changes.items():
            field = names[name]
            before = field.value_from_object(subnet)
            if before == value:
                continue
            setattr(subnet, name, value)
            logged.append(
                SubnetChange(
                    subnet=subnet,
                    operator=operator,
                    field=field.name,
                    before=_jsonable(before),
                    after=_jsonable(value),
                    reason=reason.strip()[:500],
                )
            )
        if not logged:
            return subnet, []
        if data_terms_text(subnet) != terms_before:
            # What users read changed: a new version, which every user acknowledges again
            # before their next job (subnets.data_terms).
            version = subnet.data_terms_version
            subnet.data_terms_version = version + 1
            logged.append(
                SubnetChange(
                    subnet=subnet,
                    operator=operator,
                    field="data_terms_version",
                    before=version,
                    after=version + 1,
                    reason=reason.strip()[:500],
                )
            )
        try:
            subnet.full_clean(validate_unique=False)
        except ValidationError as exc:
            raise ServiceError("invalid_subnet", "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        subnet.save()
        SubnetChange.objects.bulk_create(logged)
    return subnet, logged


def subnet_data_terms_set(*, subnet: Subnet, text: str, operator: AbstractBaseUser | None = None) -> Subnet:
    """Change a subnet's data-handling terms (blank: its family's default), recorded in its
    history like any edit. A change of what users read bumps the version (subnet_update),
    so every user acknowledges the new terms before their next job; the same text again
    changes nothing."""
    subnet_update(subnet_id=subnet.pk, changes={"data_terms": text}, operator=operator, reason="data-handling terms")
    subnet.refresh_from_db(fields=["data_terms", "data_terms_version"])
    return subnet


def subnet_created_log(*, subnet: Subnet, operator: AbstractBaseUser | None, source: str) -> SubnetChange:
    """The first line of a subnet's history: who created it, from what."""
    return SubnetChange.objects.create(
        subnet=subnet, operator=operator, field="created", before=None, after={"state": subnet.state, "source": source}
    )


def subnet_files_changed_log(*, subnet: Subnet, operator: AbstractBaseUser | None, before: str, reason: str) -> SubnetChange:
    """A re-packaged model: new jobs name the new checksum (and need a reference for it)."""
    return SubnetChange.objects.create(
        subnet=subnet, operator=operator, field="model_checksum", before=before, after=subnet.model_checksum, reason=reason
    )


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return str(value)

"""License enforcement (paper §9: "the registry enforces incompatible licenses").

Two flags of a `License` are rules, not labels:

- `allows_paid_hosting = False`: no subnet under the license is active with a price (per
  call or per item). `subnets.lifecycle` refuses the activation, a price or license change
  of an active subnet, and a license edit that would leave one in violation; a database
  trigger (migration 0033) holds the same line under every writer. We refuse rather than
  pause: an edit that silently stopped a serving subnet would surprise its users, and the
  operator has two clear ways out (price it at zero, or pause it first).
- `allows_redistribution = False`: the subnet's chunks are served only to a user (a node's
  owner, a contributor's session) who accepted that subnet's license at its current
  version, and privately (no shared cache stores them). A chunk that a freely
  redistributable subnet also uses is public: its bytes are redistributable through it.

Contracts and receipts name the license in force (`license_terms`).
"""

from __future__ import annotations

from typing import Any, Literal

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q

from bim_core.errors import ServiceError

from .models import EulaAcceptance, License, Subnet

PUBLIC: Literal["public"] = "public"
PRIVATE: Literal["private"] = "private"


def license_terms(subnet: Subnet) -> dict[str, str]:
    """What a job's contract and receipt name: the license in force at submit."""
    return {"slug": subnet.license.slug, "version": subnet.license.version}


def is_priced(subnet: Subnet) -> bool:
    return subnet.price_per_call_micro > 0 or subnet.price_per_item_micro > 0


def paid_hosting_check(subnet: Subnet, *, state: str | None = None) -> None:
    """Refuse `subnet` (as it would be saved, in `state` or its own) when it is active and
    priced under a license that forbids paid hosting."""
    if (state or subnet.state) != Subnet.State.ACTIVE or not is_priced(subnet):
        return
    license_: License = subnet.license
    if not license_.allows_paid_hosting:
        raise ServiceError(
            "license_forbids_paid_hosting",
            f"subnet {subnet.slug}'s license {license_.slug} {license_.version} forbids paid hosting: "
            f"an active subnet under it must be free (price per call {subnet.price_per_call_micro}, "
            f"per item {subnet.price_per_item_micro} micro-credits). Set both prices to 0, or choose "
            "another license.",
            status=409,
        )


def license_flags_check(license_: License, *, allows_paid_hosting: bool) -> None:
    """Refuse turning paid hosting off on a license that active priced subnets use: they
    would violate it at once. Pause them or make them free first."""
    if allows_paid_hosting or license_.pk is None:
        return
    priced = (
        Subnet.objects.filter(license=license_, state=Subnet.State.ACTIVE)
        .filter(Q(price_per_call_micro__gt=0) | Q(price_per_item_micro__gt=0))
        .order_by("slug")
        .values_list("slug", flat=True)
    )
    slugs = list(priced[:20])
    if slugs:
        raise ServiceError(
            "license_forbids_paid_hosting",
            f"active priced subnets use license {license_.slug} {license_.version}: {', '.join(slugs)}. "
            "Pause them or set their prices to 0 before forbidding paid hosting.",
            status=409,
        )


def chunk_subnets(sha256: str) -> list[Subnet]:
    """Every subnet whose artifacts include the chunk, with its license."""
    return list(
        Subnet.objects.filter(artifacts__chunk_links__chunk_id=sha256).select_related("license").distinct().order_by("pk")
    )


def chunk_access(*, sha256: str, user: AbstractBaseUser | None) -> Literal["public", "private"]:
    """How the chunk may be served to `user` (None: unauthenticated): "public" (anyone,
    shared caches too) or "private" (this user only). A chunk no artifact names is served to
    nobody: it is left over from a previous build, whose terms are no longer on record.

    Raises ServiceError: `chunk_unknown` (404), `authentication_required` (401) or
    `license_not_accepted` (403)."""
    subnets = chunk_subnets(sha256)
    if not subnets:
        raise ServiceError("chunk_unknown", "chunk not available", status=404)
    if any(s.license.allows_redistribution for s in subnets):
        return PUBLIC
    if user is None or not user.is_authenticated:
        raise ServiceError(
            "authentication_required",
            "this chunk belongs to a model whose license forbids redistribution: "
            "authenticate (a node's token or a signed-in session) as a user who accepted it",
            status=401,
        )
    accepted = Q()
    for subnet in subnets:
        accepted |= Q(subnet_id=subnet.pk, license_id=subnet.license_id, license_version=subnet.license.version)
    if EulaAcceptance.objects.filter(accepted, user=user, withdrawn_at__isnull=True).exists():
        return PRIVATE
    names = ", ".join(f"{s.slug} ({s.license.slug} {s.license.version})" for s in subnets)
    raise ServiceError(
        "license_not_accepted",
        f"this chunk belongs to a model whose license forbids redistribution; accept the license of {names} first",
        status=403,
    )


def license_fields_changed(changes: dict[str, Any]) -> bool:
    """Whether a subnet edit touches what paid_hosting_check reads."""
    return bool({"price_per_call_micro", "price_per_item_micro", "license_id"} & set(changes))

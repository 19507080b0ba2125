"""Changing a subnet's content policy: a new document takes a new, higher version, so a
contract's (and a receipt's) version always names one text of the policy."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from bim_core.content_policy import PolicyInvalid, validate_policy
from bim_core.errors import ServiceError

from .models import Subnet


def policy_change_refusal(current: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why `new` may not replace `current` (the admin form asks too), or None."""
    if new == current or not current or not new:
        return None
    if int(new["version"]) <= int(current["version"]):
        return f"a changed policy needs a version above {current['version']}, not {new['version']}"
    return None


def subnet_policy_set(*, subnet: Subnet, policy: dict[str, Any]) -> Subnet:
    """Store `policy` as the subnet's content policy, copied into every job submitted from
    now on (jobs already written keep theirs: contracts are immutable). Refused when it is
    malformed, or differs from the current one without a higher version."""
    try:
        validate_policy(policy)
    except PolicyInvalid as exc:
        raise ServiceError("invalid_policy", str(exc)) from None
    with transaction.atomic():
        subnet = Subnet.objects.select_for_update().get(pk=subnet.pk)
        refusal = policy_change_refusal(subnet.content_policy or {}, policy)
        if refusal is not None:
            raise ServiceError("policy_version_not_raised", refusal, status=409)
        if policy == subnet.content_policy:
            return subnet
        subnet.content_policy = policy
        subnet.save(update_fields=["content_policy", "updated_at"])
    return subnet

from __future__ import annotations

from django.db.models import QuerySet
from django.urls import reverse

from bim_core.errors import ServiceError

from .models import Subnet


def subnet_list_active() -> QuerySet[Subnet]:
    return Subnet.objects.filter(state=Subnet.State.ACTIVE).select_related("license").order_by("slug")


def subnet_get_active(*, slug: str) -> Subnet:
    subnet = subnet_list_active().filter(slug=slug).first()
    if subnet is None:
        raise ServiceError("unknown_subnet", f"no active subnet {slug!r}", status=404)
    return subnet


def manifest_url(subnet: Subnet) -> str:
    """Where nodes and browsers read the subnet's manifest (its URL route, `subnet-manifest`)."""
    return reverse("subnet-manifest", args=[subnet.slug])

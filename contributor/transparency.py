"""What the dashboard tells contributors about their work (issue 15, transparency): compute
time and an energy estimate per day, and the data-handling terms of each subnet they serve
(what its users were told contributors see).

The energy figure is an estimate, not a measurement: a browser cannot read a device's power
draw. It is the compute time the node reported for each result (Assignment.elapsed_ms, the
model's own run time, not the wait in a queue) times a typical draw for the node's backend
(BACKEND_WATTS: a laptop-class device, whole-device extra power while computing). A node
with an unknown backend counts at DEFAULT_WATTS."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from registry.models import Assignment, NodeSubnet
from subnets import data_terms
from subnets import selectors as subnet_selectors

DAYS = 7

# Typical extra draw while computing, in watts, by Node.backend (what a node reports).
BACKEND_WATTS = {
    "webgpu": 40.0,  # an integrated or mid-range GPU busy in a browser
    "wasm": 15.0,  # a few CPU cores in a browser
    "cpu": 35.0,  # the headless node on a desktop CPU (onnxruntime)
    "cuda": 150.0,  # a discrete GPU
}
DEFAULT_WATTS = 30.0


def backend_watts(backend: str) -> float:
    return BACKEND_WATTS.get(backend.lower(), DEFAULT_WATTS)


def compute_by_day(*, user: AbstractBaseUser, days: int = DAYS, now: datetime | None = None) -> list[dict[str, Any]]:
    """The last `days` days (UTC, oldest first, today last, days without work included):
    the results the owner's nodes computed, their compute time (s) and an energy estimate
    (Wh). A result counts on the day it was submitted, whatever became of it: the device
    worked either way."""
    today = (now or timezone.now()).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, time.min, tzinfo=UTC)
    rows = (
        Assignment.objects.filter(
            node__owner=user,
            elapsed_ms__isnull=False,
            submitted_at__gte=start,
            submitted_at__lt=start + timedelta(days=days),
        )
        .annotate(day=TruncDate("submitted_at", tzinfo=UTC))
        .values("day", "node__backend")
        .annotate(ms=Sum("elapsed_ms"), results=Count("pk"))
    )
    totals: dict[date, dict[str, float]] = {}
    for row in rows:
        day = totals.setdefault(row["day"], {"ms": 0, "results": 0, "wh": 0.0})
        day["ms"] += row["ms"]
        day["results"] += row["results"]
        day["wh"] += row["ms"] / 1000 / 3600 * backend_watts(row["node__backend"])
    out = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        found = totals.get(day, {"ms": 0, "results": 0, "wh": 0.0})
        out.append(
            {
                "day": day,
                "results": int(found["results"]),
                "compute_s": round(found["ms"] / 1000, 1),
                "energy_wh": round(found["wh"], 2),
            }
        )
    return out


def served_subnets_terms(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """The subnets the owner's nodes are registered for, each with the data-handling terms
    its users acknowledged (text and version): what those users expect of contributors."""
    served = subnet_selectors.subnet_list_active().filter(
        pk__in=NodeSubnet.objects.filter(node__owner=user).values("subnet_id")
    )
    return [
        {
            "subnet": subnet,
            "version": subnet.data_terms_version,
            "summary": data_terms.data_terms_summary(subnet),
            "text": data_terms.data_terms_text(subnet),
        }
        for subnet in served
    ]

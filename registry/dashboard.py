"""The market's health as operators see it on the admin index: what the registry's tables
say about the last hour and day, in a few aggregate queries.

Every figure carries the admin list behind it (`Figure.model` and `Figure.filters`, a
changelist query), so a number that draws attention opens the rows that make it up. The
queries are aggregates over indexed columns and bounded windows: the page stays cheap on
a registry with millions of jobs."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, F
from django.db.models.functions import TruncHour
from django.utils import timezone

from .models import AgreementStat, Dispute, Job, JobState, NodeSubnet, Strike

WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# The settle-latency percentiles read at most this many of the window's settled jobs (the
# newest): enough for a stable p95, bounded however busy the day was.
LATENCY_SAMPLE_MAX = 20_000
FALSE_REJECT_PAIRS_SHOWN = 8
HONEYPOT_STRIKE_REASON = "failed a honeypot"  # registry.honeypots.honeypot_judge's strike

# The paths of a settled job's verification record (registry.verify, registry.settlement).
VERIFICATION_PATHS = [
    ("2-of-2", "agreed 2-of-2"),
    ("2-of-3", "settled 2-of-3"),
    ("rescored", "settled on re-scoring"),
    ("solo", "solo (adaptive replication)"),
    ("honeypot", "honeypots checked"),
]

# Where an expired job stood when its deadline passed says why it expired, and the job's
# own timestamps tell it (so the admin list can filter on them).
EXPIRY_CAUSES = [
    ("never dispatched: no eligible node was free", {"dispatched_at__isnull": "True"}),
    ("dispatched, but its nodes did not answer", {"dispatched_at__isnull": "False", "verifying_at__isnull": "True"}),
    ("results in, but no tie-breaker answered", {"verifying_at__isnull": "False"}),
]


def _iso(at: datetime) -> str:
    return at.isoformat()


@dataclass(frozen=True)
class Figure:
    """A number and the admin list of the rows it counts."""

    label: str
    value: float
    model: str  # "app_label.model_name" of the admin list
    filters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HourColumn:
    """Jobs that ended in one hour of the last day, by how they ended."""

    start: datetime
    settled: int
    failed: int
    expired: int

    @property
    def total(self) -> int:
        return self.settled + self.failed + self.expired


@dataclass(frozen=True)
class Latency:
    window: str
    p50_s: float | None
    p95_s: float | None
    samples: int


@dataclass(frozen=True)
class PairDrift:
    """Two runtimes whose honest results disagreed: each disagreement is a false reject
    unless one of them cheated, so a pair that fails often calls for a looser τ."""

    subnet: str
    env_a: str
    env_b: str
    samples: int
    failed: int
    min_similarity: float | None
    filters: dict[str, str]

    @property
    def failed_share(self) -> float:
        return self.failed / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class MarketHealth:
    at: datetime
    online_nodes: list[Figure]
    jobs_by_state: dict[str, list[Figure]]
    hours: list[HourColumn]
    latency: list[Latency]
    verification: list[Figure]
    false_rejects: list[PairDrift]
    expiries: list[Figure]
    honeypot_catches: Figure
    disputes_waiting: Figure
    attention: list[str]


def online_nodes() -> list[Figure]:
    """Online nodes per subnet and backend (a node serving two subnets counts in both)."""
    rows = (
        NodeSubnet.objects.filter(node__is_online=True)
        .values("subnet_id", "subnet__slug", "node__backend")
        .annotate(n=Count("node_id"))
        .order_by("subnet__slug", "node__backend")
    )
    return [
        Figure(
            f"{row['subnet__slug']} · {row['node__backend'] or 'unknown backend'}",
            row["n"],
            "registry.node",
            {"is_online__exact": "1", "subnets__id__exact": str(row["subnet_id"]), "backend__exact": row["node__backend"]},
        )
        for row in rows
    ]


def jobs_by_state(since: datetime) -> list[Figure]:
    """Jobs submitted since `since`, by the state they are in now, in the machine's order."""
    counts = dict(Job.objects.filter(created_at__gte=since).values_list("state").annotate(n=Count("id")))
    return [
        Figure(state.label, counts.get(state.value, 0), "registry.job", {"state__exact": state.value, "created_at__gte": _iso(since)})
        for state in JobState
    ]


def hours_of_day(now: datetime) -> list[HourColumn]:
    """The last 24 hours (oldest first), each with the jobs that ended in it."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    rows = (
        Job.objects.filter(finished_at__gte=first)
        .annotate(hour=TruncHour("finished_at"))
        .values_list("hour", "state")
        .annotate(n=Count("id"))
    )
    counts: Counter[tuple[datetime, str]] = Counter()
    for hour, state, n in rows:
        counts[(hour, state)] += n
    columns = []
    for i in range(24):
        start = first + timedelta(hours=i)
        columns.append(
            HourColumn(
                start,
                counts[(start, JobState.SETTLED)],
                counts[(start, JobState.FAILED)],
                counts[(start, JobState.EXPIRED)],
            )
        )
    return columns


def settle_latency(since: datetime, window: str) -> Latency:
    """Submit-to-settle time of the jobs settled since `since` (the newest of them, bounded)."""
    durations = (
        Job.objects.filter(state=JobState.SETTLED, finished_at__gte=since)
        .order_by("-finished_at")
        .annotate(took=F("finished_at") - F("created_at"))
        .values_list("took", flat=True)[:LATENCY_SAMPLE_MAX]
    )
    seconds = sorted(d.total_seconds() for d in durations if d is not None)
    if not seconds:
        return Latency(window, None, None, 0)
    if len(seconds) == 1:
        return Latency(window, seconds[0], seconds[0], 1)
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return Latency(window, cuts[49], cuts[94], len(seconds))


def verification_outcomes(since: datetime) -> list[Figure]:
    """How the jobs that ended since `since` were decided: agreed 2-of-2, settled by a
    third node (2-of-3), settled on re-scoring evidence, run solo under adaptive
    replication, honeypots checked against the registry's answer, or failed."""
    ended = Job.objects.filter(finished_at__gte=since)
    paths = Counter(
        dict(
            ended.filter(state=JobState.SETTLED)
            .values_list("verification__path")
            .annotate(n=Count("id"))
            .values_list("verification__path", "n")
        )
    )
    since_filter = {"finished_at__gte": _iso(since)}
    figures = [
        Figure(label, paths.get(path, 0), "registry.job", {"state__exact": JobState.SETTLED, "path": path, **since_filter})
        for path, label in VERIFICATION_PATHS
    ]
    failed = ended.filter(state=JobState.FAILED).count()
    figures.append(Figure("failed verification", failed, "registry.job", {"state__exact": JobState.FAILED, **since_filter}))
    return figures


def false_rejects() -> list[PairDrift]:
    """The runtime pairs whose honest results most often failed the tolerance, worst first."""
    stats = (
        AgreementStat.objects.filter(samples__gt=F("passed"))
        .select_related("subnet")
        .annotate(failed=F("samples") - F("passed"))
        .order_by("-failed")[: FALSE_REJECT_PAIRS_SHOWN * 4]
    )
    pairs = [
        PairDrift(
            stat.subnet.slug,
            stat.env_a,
            stat.env_b,
            stat.samples,
            stat.failed,
            stat.min_similarity,
            {"subnet__id__exact": str(stat.subnet_id), "env_a__exact": stat.env_a, "env_b__exact": stat.env_b},
        )
        for stat in stats
    ]
    return sorted(pairs, key=lambda p: (-p.failed_share, -p.samples))[:FALSE_REJECT_PAIRS_SHOWN]


def expiries(since: datetime) -> list[Figure]:
    """Jobs that expired since `since`, by where they stood when their deadline passed."""
    expired = Job.objects.filter(state=JobState.EXPIRED, finished_at__gte=since)
    figures = []
    for label, filters in EXPIRY_CAUSES:
        lookups = {key: value == "True" for key, value in filters.items()}
        figures.append(
            Figure(label, expired.filter(**lookups).count(), "registry.job", {"state__exact": JobState.EXPIRED, "finished_at__gte": _iso(since), **filters})
        )
    return figures


def honeypot_catches(since: datetime) -> Figure:
    count = Strike.objects.filter(reason=HONEYPOT_STRIKE_REASON, created_at__gte=since).count()
    return Figure(
        "nodes caught by honeypots", count, "registry.strike", {"reason__exact": HONEYPOT_STRIKE_REASON, "created_at__gte": _iso(since)}
    )


def disputes_waiting() -> Figure:
    count = Dispute.objects.filter(resolved_at__isnull=True).count()
    return Figure("disputes waiting", count, "registry.dispute", {"resolved_at__isnull": "True"})


def _attention(health: dict[str, Any]) -> list[str]:
    """The lines an operator should read first: what is wrong now."""
    lines = []
    day = {f.filters["state__exact"]: f.value for f in health["jobs_by_state"]["day"]}
    ended = day.get(JobState.SETTLED, 0) + day.get(JobState.FAILED, 0) + day.get(JobState.EXPIRED, 0)
    if ended and day.get(JobState.EXPIRED, 0) / ended >= 0.05:
        lines.append(f"{day[JobState.EXPIRED]} of {ended} jobs that ended today expired")
    if health["disputes_waiting"].value:
        lines.append(f"{health['disputes_waiting'].value} dispute(s) wait for an operator")
    if not health["online_nodes"]:
        lines.append("no node is online")
    return lines


def market_health(now: datetime | None = None) -> MarketHealth:
    now = now or timezone.now()
    since = {name: now - span for name, span in WINDOWS.items()}
    health: dict[str, Any] = {
        "at": now,
        "online_nodes": online_nodes(),
        "jobs_by_state": {name: jobs_by_state(at) for name, at in since.items()},
        "hours": hours_of_day(now),
        "latency": [settle_latency(at, name) for name, at in since.items()],
        "verification": verification_outcomes(since["day"]),
        "false_rejects": false_rejects(),
        "expiries": expiries(since["day"]),
        "honeypot_catches": honeypot_catches(since["day"]),
        "disputes_waiting": disputes_waiting(),
    }
    return MarketHealth(**health, attention=_attention(health))


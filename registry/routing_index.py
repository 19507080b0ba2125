"""The routing index every dispatch reads: a subnet's routable nodes with their weights,
built in memory and rebuilt when presence changes (a version counter in Redis, or in
process memory in embedded mode) or when it is older than INDEX_MAX_AGE_S.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Case, Count, F, FloatField, Q, QuerySet, Value, When
from django.utils import timezone

from bim_core import scoring
from bim_core.selection import Candidate, NodeIndex
from ledger import selectors as ledger_selectors
from subnets.models import Subnet

from .models import (
    Assignment,
    AssignmentState,
    Node,
    NodeSubnet,
)
from .prepared import PreparedQuery, PreparedRows, PreparedUpdate
from .redis_client import redis_client


def index_bump_for_node(node_id: object) -> None:
    for subnet_id in NodeSubnet.objects.filter(node_id=node_id).values_list("subnet_id", flat=True):
        index_bump(subnet_id)


# Per process: index versions when there is no Redis (embedded mode: one process; with
# Redis the versions are shared between processes there), and the built indexes.
_local_versions: dict[int, int] = {}


_indexes: dict[int, tuple[int, float, NodeIndex]] = {}


def index_version(subnet_id: int) -> int:
    client = redis_client()
    if client is None:
        return _local_versions.get(subnet_id, 0)
    return int(client.get(f"{settings.INDEX_KEY_PREFIX}:{subnet_id}") or 0)


def index_bump(subnet_id: int) -> None:
    """After commit, tell every dispatcher that the subnet's routable set changed."""

    def bump() -> None:
        client = redis_client()
        if client is None:
            _local_versions[subnet_id] = _local_versions.get(subnet_id, 0) + 1
        else:
            client.incr(f"{settings.INDEX_KEY_PREFIX}:{subnet_id}")

    transaction.on_commit(bump)


# Liveness (registry.presence writes it): heartbeats update a cache entry per node, and the
# row's last_seen only now and then, so whoever asks whether a node is alive takes the later.
def presence_key(node_id: object) -> str:
    return f"bim:presence:{node_id}"


def presence_set(node_id: object, *, channel: str, seen: datetime, written: datetime) -> None:
    # Outlives the stale limit many times over: an entry that expired reads as "ask the row".
    cache.set(
        presence_key(node_id),
        {"channel": channel, "seen": seen.timestamp(), "written": written.timestamp()},
        timeout=max(3600, settings.NODE_STALE_S * 10),
    )


def presence_set_many(entries: dict[Any, tuple[str, datetime]], *, seen: datetime) -> None:
    """`presence_set` for many nodes ({node_id: (channel, written)}) in one round trip."""
    cache.set_many(
        {
            presence_key(node_id): {"channel": channel, "seen": seen.timestamp(), "written": written.timestamp()}
            for node_id, (channel, written) in entries.items()
        },
        timeout=max(3600, settings.NODE_STALE_S * 10),
    )


def timestamp_utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def nodes_last_seen(rows: dict[Any, datetime | None]) -> dict[Any, datetime | None]:
    """For {node_id: the row's last_seen}: the later of that and the cache's, per node."""
    cached = cache.get_many([presence_key(node_id) for node_id in rows])
    seen = {}
    for node_id, row_seen in rows.items():
        entry = cached.get(presence_key(node_id))
        candidates = [t for t in (row_seen, timestamp_utc(entry["seen"]) if entry else None) if t is not None]
        seen[node_id] = max(candidates) if candidates else None
    return seen


PRESENCE_STARTED_KEY = "bim:presence:started"


def presence_cache_started(when: datetime | None = None) -> datetime:
    """Since when the cache has kept presence. A cache restarted empty (Redis restarted,
    flushed) knows nothing of live nodes until they next heartbeat, and their rows may be
    NODE_LAST_SEEN_DB_INTERVAL_S old: until NODE_STALE_S has passed since it started,
    the cache's silence about a node says nothing. `when` sets it (tests, operators)."""
    if when is not None:
        cache.set(PRESENCE_STARTED_KEY, when.timestamp(), timeout=None)
    else:
        cache.add(PRESENCE_STARTED_KEY, timezone.now().timestamp(), timeout=None)
    started = cache.get(PRESENCE_STARTED_KEY)
    return timestamp_utc(started) if started is not None else timezone.now()


def nodes_fresh(rows: dict[Any, datetime | None]) -> set[Any]:
    """Of {node_id: the row's last_seen}, the nodes heard from within NODE_STALE_S, or all
    of them while the cache is younger than that (it cannot tell silent from unheard yet)."""
    cutoff = timezone.now() - timedelta(seconds=settings.NODE_STALE_S)
    if presence_cache_started() > cutoff:
        return set(rows)
    seen = nodes_last_seen(rows)
    return {node_id for node_id, seen_at in seen.items() if seen_at is not None and seen_at >= cutoff}


def routable_index(subnet_id: int) -> NodeIndex:
    """The subnet's routable nodes as an in-memory index: rebuilt when presence changed
    (version bump) or when older than INDEX_MAX_AGE_S (reputations drift job by job)."""
    version = index_version(subnet_id)
    cached = _indexes.get(subnet_id)
    if cached is not None and cached[0] == version and time.monotonic() - cached[1] < settings.INDEX_MAX_AGE_S:
        return cached[2]
    index = NodeIndex(_routable_records(subnet_id))
    _indexes[subnet_id] = (version, time.monotonic(), index)
    return index


def index_forget(subnet_id: int | None = None) -> None:
    """Drop a cached index (or all): the next selection rebuilds it from the database."""
    if subnet_id is None:
        _indexes.clear()
    else:
        _indexes.pop(subnet_id, None)


def _nodes_online(*, trusted: bool) -> PreparedQuery[NodeSubnet]:
    def build(subnet_id: int, now: datetime) -> QuerySet[NodeSubnet]:
        links = NodeSubnet.objects.filter(subnet_id=subnet_id, node__is_online=True).filter(
            Q(node__banned_until__isnull=True) | Q(node__banned_until__lt=now)
        )
        return (links.filter(node__trusted=True) if trusted else links).only("pk")[:1]

    return PreparedQuery(build, (int, datetime))


# Asked at every submit: compiled once (registry.prepared).
_any_node_online = {False: _nodes_online(trusted=False), True: _nodes_online(trusted=True)}


def subnet_has_nodes_online(subnet: Subnet) -> bool:
    """Whether any unbanned node registered for the subnet is connected (a trusted one for
    a trusted subnet): one that is, even while it fetches the model or runs its benchmark,
    will take the job within seconds; with none, a job would only wait for its deadline."""
    return bool(_any_node_online[bool(subnet.trusted)].all(subnet.pk, timezone.now()))


@dataclass
class OfferSlots:
    """A node's unanswered offers in a subnet against what its queue allows, and what its
    deadline is computed from; a dispatch batch counts its own offers in `open`."""

    open: int
    limit: int
    items_per_s: float | None
    max_concurrent: int

    @property
    def full(self) -> bool:
        return self.open >= self.limit


def offer_slots(subnet_id: int) -> dict[str, OfferSlots]:
    """Every online node of the subnet with its offer queue: NODE_QUEUE_DEPTH per job it
    runs at once, never more than its probation allows (`probation_offers`). Where the
    subnet's policy says so (`queue_depth_below_escrow` > 0), a node whose escrow is still
    below the requirement gets that shorter queue: until it has something to lose, it
    carries less work. Two queries (three with that policy), whatever the backlog."""
    links = _offer_links.all(subnet_id)
    if not links:
        return {}
    open_offers = dict(_open_offers.all(subnet_id))
    required, short_depth = links[0][4:6]
    escrowed = (
        ledger_selectors.nodes_with_escrow(node_ids=[link[0] for link in links], required=required)
        if short_depth and required
        else set()
    )
    slots = {}
    for node_id, max_concurrent, items_per_s, jobs_agreed, *_ in links:
        restricted = short_depth and required and node_id not in escrowed
        depth = short_depth if restricted else settings.NODE_QUEUE_DEPTH
        slots[str(node_id)] = OfferSlots(
            open=open_offers.get(node_id, 0),
            limit=min(depth * max_concurrent, probation_offers(jobs_agreed)),
            items_per_s=items_per_s,
            max_concurrent=max(1, max_concurrent or 1),
        )
    return slots


# Both read by every dispatcher pass: compiled once (registry.prepared).
_offer_links = PreparedRows(
    lambda subnet_id: NodeSubnet.objects.filter(subnet_id=subnet_id, node__is_online=True).values_list(
        "node_id", "max_concurrent", "items_per_s", "node__jobs_agreed",
        "subnet__escrow_required_micro", "subnet__queue_depth_below_escrow",
    ),
    (int,),
)
_open_offers = PreparedRows(
    lambda subnet_id: Assignment.objects.filter(state=AssignmentState.DISPATCHED, job__subnet_id=subnet_id)
    .values("node_id")
    .annotate(open=Count("pk"))
    .values_list("node_id", "open"),
    (int,),
)


def saturated_node_ids(subnet_id: int) -> list[str]:
    """Nodes of the subnet holding as many unanswered offers as their queue allows:
    offering more would only age in a queue."""
    return [node_id for node_id, slots in offer_slots(subnet_id).items() if slots.full]


def probation_offers(jobs_agreed: int) -> int:
    """Unanswered offers a node may hold by its record: NODE_PROBATION_OFFERS doubled per
    job it has got verified. `max_concurrent` is the node's own word, so a new node that
    claims 1,024 slots and then stays silent holds two offers, not thousands, until its
    first deadline strikes it; an honest one reaches its full queue within a few jobs."""
    return settings.NODE_PROBATION_OFFERS * 2 ** min(jobs_agreed, 30)


def candidate_for(node: Node, weight: float = 0.0) -> Candidate:
    """A node as routing sees it; an unknown ASN stands in as the node's IP block."""
    return Candidate(
        node_id=str(node.pk),
        owner_id=str(node.owner_id),
        weight=weight,
        ip_block=node.ip_block,
        asn=f"AS{node.asn}" if node.asn else node.ip_block,
        os=node.os,
        gpu_family=node.gpu_family,
        vouched=node.jobs_agreed >= settings.NODE_VOUCHED_JOBS,
        trusted=node.trusted,
        webrtc=node.capabilities.get("webrtc") is not False,
    )


def _routable_records(subnet_id: int) -> list[Candidate]:
    now = timezone.now()
    subnet = Subnet.objects.get(pk=subnet_id)
    if subnet.state != Subnet.State.ACTIVE:
        # Paused or retired: nobody is offered its jobs (queued ones wait, or expire with
        # their holds released, through the sweeper's ordinary path).
        return []
    policy = scoring.ReputationPolicy.from_dict(subnet.reputation_policy)
    # A trusted subnet's index holds its trusted nodes only: the others never become a
    # candidate, so no selection over it can offer them its jobs (dispatch checks again).
    # Trust given or withdrawn bumps the index (registry.sanctions).
    trust = {"node__trusted": True} if subnet.trusted else {}
    links = (
        NodeSubnet.objects.filter(
            subnet_id=subnet_id,
            ready_at__isnull=False,
            score__gt=0,
            node__is_online=True,
            **trust,
        )
        .filter(Q(node__banned_until__isnull=True) | Q(node__banned_until__lt=now))
        .select_related("node")
        .annotate(
            active_strikes=Count(
                "node__strike_records",
                filter=Q(node__strike_records__expires_at__gt=now, node__strike_records__lifted_at__isnull=True),
            )
        )
    )
    links = [link for link in links if link.items_per_s and link.latency_p50_ms]
    fresh = nodes_fresh({link.node_id: link.node.last_seen for link in links})
    score_policy = scoring.ScorePolicy.from_dict(subnet.score_policy)
    return [
        candidate_for(link.node, _routing_weight(link, now, score_policy, policy))
        for link in links
        if link.node_id in fresh
    ]


def _routing_weight(
    link: NodeSubnet, now: Any, score_policy: scoring.ScorePolicy, policy: scoring.ReputationPolicy
) -> float:
    """w = base · R at this moment: benchmark figures decay with their age, reputation
    with the node's idle time, and each active strike softens the weight."""
    node = link.node
    if link.observed_items_per_s and link.observed_latency_ms:
        # Real jobs timed on the registry's clock outrank the benchmark, and do not age.
        figures = scoring.BenchmarkFigures(link.observed_items_per_s, link.observed_latency_ms, link.observed_latency_ms)
        age_h = 0.0
    else:
        figures = scoring.BenchmarkFigures(
            link.items_per_s, link.latency_p50_ms, link.latency_p95_ms or link.latency_p50_ms
        )
        age_h = (now - link.benchmarked_at).total_seconds() / 3600
    base = scoring.node_score(
        figures,
        uptime=node.uptime(now),
        fail_rate=node.jobs_failed / max(1, node.jobs_assigned),
        age_h=age_h,
        policy=score_policy,
    )
    idle_h = (now - node.last_job_at).total_seconds() / 3600 if node.last_job_at else 0.0
    reputation = scoring.reputation_after_idle(node.reputation, idle_h=idle_h, policy=policy)
    return scoring.routing_weight(base, reputation, active_strikes=link.active_strikes, policy=policy)


def speed_observe(*, node_id: object, subnet_id: int, items: int, dispatched_at: datetime, submitted_at: datetime) -> None:
    """An accepted result (`registry.results`, once it is stored): fold the time from offer
    to result, on the registry's clock, into the node's exponentially weighted speed for the
    subnet (NODE_SPEED_EWMA_ALPHA). What a node reports about its own speed never enters
    routing once it has done real jobs. One UPDATE computes scoring.ewma in SQL, the same
    floating-point steps: a node's results, which arrive together, never wait on one
    another for a row lock held across round trips."""
    elapsed_ms = max(1.0, (submitted_at - dispatched_at).total_seconds() * 1000)
    alpha = settings.NODE_SPEED_EWMA_ALPHA
    speed = items * 1000.0 / elapsed_ms
    _speeds_update.run(node_id, subnet_id, speed, alpha * speed, elapsed_ms, alpha * elapsed_ms, 1 - alpha)


def _ewma_sql(field: str, sample: float, alpha_sample: float, keep: float) -> Case:
    """scoring.ewma(field, sample, alpha) as an expression of the row's current value, with
    alpha_sample = alpha * sample and keep = 1 - alpha formed in Python: two literals
    multiplied in SQL would be PostgreSQL numerics, exact, then rounded once, not Python's
    two roundings."""
    return Case(
        When(**{f"{field}__isnull": True}, then=Value(sample)),
        default=Value(keep) * F(field) + Value(alpha_sample),
        output_field=FloatField(),
    )


# Prepared (registry.prepared): once per result, and compiling the CASEs cost more than
# running them.
_speeds_update = PreparedUpdate(
    lambda node_id, subnet_id, speed, alpha_speed, latency, alpha_latency, keep: (
        NodeSubnet.objects.filter(node_id=node_id, subnet_id=subnet_id),
        {
            "observed_items_per_s": _ewma_sql("observed_items_per_s", speed, alpha_speed, keep),
            "observed_latency_ms": _ewma_sql("observed_latency_ms", latency, alpha_latency, keep),
        },
    ),
    (uuid.UUID, int, float, float, float, float, float),
)

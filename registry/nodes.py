"""Registry writes about nodes: registration, presence, benchmarks, strikes and bans,
reputation, and the routing index every dispatch reads.

A node becomes routable for a subnet when it is online, holds the subnet's verified model
(`ready`) and has passed the subnet's benchmark (its score > 0). Presence changes bump the
subnet's index version, so dispatchers rebuild their in-memory index instead of scanning
the node table for every job.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from bim_site.errors import ServiceError
from ledger.models import Account, AccountKind
from subnets.models import BenchmarkReference, Subnet
from subnets.services import eula_accepted

from . import effects, families, protocol, scoring
from .asn import asn_or_block, ip_block
from .models import (
    Assignment,
    AssignmentState,
    Benchmark,
    BenchmarkState,
    Node,
    NodeSubnet,
    Strike,
)
from .routing import Candidate, NodeIndex
from .verification import verify_pair

log = logging.getLogger("bim.registry.nodes")


# ---------------------------------------------------------------- registration


def node_register(
    *,
    owner: AbstractBaseUser,
    public_key: str,
    name: str,
    env: dict[str, Any],
    subnet_slugs: Sequence[str],
    ip: str | None,
) -> tuple[Node, bool]:
    """Register a node by its long-term public key (idempotent per owner) and opt it into
    subnets whose license the owner has accepted."""
    try:
        protocol.parse_public_key(public_key)
    except protocol.ProtocolError as exc:
        raise ServiceError("invalid_public_key", exc.detail) from None
    subnets = list(Subnet.objects.filter(slug__in=subnet_slugs, is_active=True).select_related("license"))
    unknown = set(subnet_slugs) - {s.slug for s in subnets}
    if unknown:
        raise ServiceError("unknown_subnet", f"no active subnet {sorted(unknown)}", status=404)
    for subnet in subnets:
        if not eula_accepted(user=owner, subnet=subnet):
            raise ServiceError(
                "license_not_accepted",
                f"accept the license {subnet.license.slug} {subnet.license.version} of subnet {subnet.slug} first",
                status=403,
            )
    fingerprint = {
        "os": str(env.get("os", ""))[:50],
        "runtime": str(env.get("runtime", ""))[:50],
        "backend": str(env.get("backend", ""))[:30],
        "gpu_family": str(env.get("gpu_family", ""))[:50],
    }
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(public_key=public_key).first()
        created = node is None
        if node is None:
            node = Node(owner=owner, public_key=public_key)
        elif node.owner_id != owner.pk:
            raise ServiceError("public_key_taken", "this public key belongs to another account", status=409)
        node.name = name[:100] or f"node-{public_key[:8]}"
        for field, value in fingerprint.items():
            setattr(node, field, value)
        node.capabilities = {k: v for k, v in env.items() if k not in fingerprint}
        node.ip = ip
        node.ip_block = ip_block(ip)
        node.save()
        for subnet in subnets:
            NodeSubnet.objects.get_or_create(node=node, subnet=subnet)
    return node, created


# ---------------------------------------------------------------- presence


def node_connect(
    *, node: Node, channel_name: str, session_key_pub: str, nonce: str, session_cert: str, ip: str | None
) -> str:
    """Start a node's websocket session; returns the channel of a session it replaces ("" if none).
    Work given to the replaced session goes back to the pool: its session key is gone."""
    now = timezone.now()
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        previous = locked.channel_name if locked.is_online else ""
        if previous:
            _session_close(locked, now)
        _assignments_lose(locked.pk, "node reconnected")
        asn = asn_or_block(ip)
        Node.objects.filter(pk=node.pk).update(
            is_online=True,
            channel_name=channel_name,
            session_key_pub=session_key_pub,
            session_nonce=nonce,
            session_cert=session_cert,
            connected_at=now,
            last_seen=now,
            ip=ip,
            ip_block=ip_block(ip),
            asn=int(asn[2:]) if asn.startswith("AS") else None,
        )
    return previous if previous != channel_name else ""


def node_ready(*, node_id: object, subnet_slug: str, model_checksum: str, max_concurrent: int) -> None:
    """The node holds the subnet's verified model. It receives jobs once its benchmark
    passed; a node without a fresh benchmark is sent one now."""
    link = NodeSubnet.objects.filter(node_id=node_id, subnet__slug=subnet_slug).select_related("subnet", "node").first()
    if link is None:
        raise protocol.ProtocolError("unknown_subnet", f"node is not registered for subnet {subnet_slug!r}")
    if model_checksum != link.subnet.model_checksum:
        raise protocol.ProtocolError("model_mismatch", "model_checksum differs from the subnet's model")
    if not eula_accepted(user=link.node.owner, subnet=link.subnet):
        raise protocol.ProtocolError("license_not_accepted", "the node's owner has not accepted the license")
    with transaction.atomic():
        NodeSubnet.objects.filter(pk=link.pk).update(ready_at=timezone.now(), max_concurrent=max(1, max_concurrent))
        link.refresh_from_db()
        if _benchmark_due(link):
            benchmark_issue(link=link)
        if link.score > 0:
            # Routable now (a node due for a re-benchmark keeps serving while it runs it).
            index_bump(link.subnet_id)
            effects.queue_task("dispatch_waiting", str(link.subnet_id))


def node_heartbeat(*, node_id: object, channel_name: str) -> bool:
    """Record that the node is alive; False when this socket's session was replaced."""
    return bool(
        Node.objects.filter(pk=node_id, channel_name=channel_name, is_online=True).update(last_seen=timezone.now())
    )


def node_disconnect(*, node_id: object, channel_name: str) -> int:
    """End a node's session (socket closed or silent too long); its open work is re-dispatched."""
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=node_id, channel_name=channel_name, is_online=True).first()
        if node is None:
            return 0  # a newer session owns the node
        _session_close(node, timezone.now())
        Node.objects.filter(pk=node_id).update(is_online=False, channel_name="", online_seconds=node.online_seconds)
        _assignments_lose(node_id, "node disconnected")
    return 1


def _session_close(node: Node, now: Any) -> None:
    if node.connected_at is not None:
        node.online_seconds += max(0.0, ((node.last_seen or now) - node.connected_at).total_seconds())
    for subnet_id in NodeSubnet.objects.filter(node=node, ready_at__isnull=False).values_list("subnet_id", flat=True):
        index_bump(subnet_id)
    NodeSubnet.objects.filter(node=node).update(ready_at=None)
    Benchmark.objects.filter(node=node, state=BenchmarkState.ISSUED).update(
        state=BenchmarkState.EXPIRED, reason="session ended", completed_at=now
    )


def _assignments_lose(node_id: object, reason: str) -> None:
    lost = list(
        Assignment.objects.filter(node_id=node_id, state=AssignmentState.DISPATCHED).values_list("pk", "job_id")
    )
    if not lost:
        return
    Assignment.objects.filter(pk__in=[pk for pk, _ in lost]).update(state=AssignmentState.LOST, failure_reason=reason)
    Node.objects.filter(pk=node_id).update(jobs_failed=F("jobs_failed") + len(lost))
    for job_id in {job_id for _, job_id in lost}:
        effects.queue_task("dispatch_job", str(job_id))


def node_uptime(node: Node, now: Any) -> float:
    """Share of the node's life it has spent connected."""
    online = node.online_seconds
    if node.is_online and node.connected_at is not None:
        online += (now - node.connected_at).total_seconds()
    lifetime = max((now - node.created_at).total_seconds(), online)
    return 1.0 if lifetime <= 0 else min(1.0, online / lifetime)


# ---------------------------------------------------------------- benchmarks


def _benchmark_due(link: NodeSubnet) -> bool:
    if link.benchmarked_at is None or link.score <= 0:
        return True
    too_old = timezone.now() - link.benchmarked_at > timedelta(hours=link.subnet.benchmark_max_age_h)
    return too_old or link.jobs_since_benchmark >= link.subnet.benchmark_every_jobs


def benchmark_issue(*, link: NodeSubnet) -> Benchmark | None:
    """Send the subnet's benchmark suite to an online node (one open benchmark at a time)."""
    reference = BenchmarkReference.objects.filter(subnet_id=link.subnet_id).first()
    if reference is None:
        log.warning("subnet %s has no benchmark reference; node %s cannot be scored", link.subnet_id, link.node_id)
        return None
    if Benchmark.objects.filter(node_id=link.node_id, subnet_id=link.subnet_id, state=BenchmarkState.ISSUED).exists():
        return None
    node = link.node
    benchmark = Benchmark.objects.create(
        node_id=link.node_id, subnet_id=link.subnet_id, runs=link.subnet.benchmark_runs, session_key_pub=node.session_key_pub
    )
    effects.send_to_node(
        link.node_id,
        {
            "type": "job.offer",
            "message": {
                "type": "benchmark",
                "benchmark_id": str(benchmark.id),
                "subnet": link.subnet.slug,
                "inputs": reference.inputs,
                "runs": benchmark.runs,
            },
        },
    )
    return benchmark


def benchmark_record(*, node_id: object, message: dict[str, Any]) -> Benchmark:
    """Check a node's benchmark answer: signed by its session, outputs matching the
    registry's reference within the subnet's tolerance. Only then do its timings become
    the node's score; wrong outputs are refused (recorded, then ProtocolError
    benchmark_refused) whatever the timings claim."""
    benchmark = _benchmark_judge(node_id=node_id, message=message)
    if benchmark.state == BenchmarkState.REFUSED:
        raise protocol.ProtocolError("benchmark_refused", benchmark.reason)
    return benchmark


def _benchmark_judge(*, node_id: object, message: dict[str, Any]) -> Benchmark:
    try:
        benchmark_id = uuid.UUID(str(message["benchmark_id"]))
        timings = [float(t) for t in message["timings_ms"]]
        result_hash = str(message["result_hash"])
        signature = str(message["signature"])
        encoding = str(message.get("encoding", ""))
        if not timings:
            raise ValueError("timings must be non-empty")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise protocol.ProtocolError("bad_message", f"malformed benchmark result: {exc}") from None
    shape = protocol.parse_shape(message.get("shape"))
    payload = protocol.b64decode(str(message.get("data", "")))
    with transaction.atomic():
        benchmark = (
            Benchmark.objects.select_for_update()
            .select_related("subnet", "node")
            .filter(pk=benchmark_id, node_id=node_id)
            .first()
        )
        if benchmark is None or benchmark.state != BenchmarkState.ISSUED:
            raise protocol.ProtocolError("not_assigned", "no open benchmark with that id for this node")
        signed = protocol.benchmark_message(
            benchmark_id=str(benchmark.id), result_hash=result_hash, shape=shape, timings_ms=timings
        )
        if not protocol.signature_valid(benchmark.session_key_pub, signature, signed):
            raise protocol.ProtocolError("bad_signature", "benchmark signature does not verify with the session key")
        if protocol.sha256_hex(payload) != result_hash:
            raise protocol.ProtocolError("bad_result_hash", "result_hash is not the SHA-256 of data")
        family = families.family_for(benchmark.subnet.task_type)
        if encoding != family.encoding:
            raise protocol.ProtocolError("bad_message", f"a {family.task_type} result is encoded {family.encoding}")
        reference = BenchmarkReference.objects.get(subnet=benchmark.subnet)
        expected = family.decode_result(bytes(reference.result), tuple(reference.shape), reference.inputs)
        verdict = (
            verify_pair(
                family.task_type,
                family.decode_result(payload, shape, reference.inputs),
                expected,
                benchmark.subnet.tolerances,
            )
            if shape == tuple(reference.shape)
            else None
        )
        now = timezone.now()
        benchmark.timings_ms = timings[:100]
        benchmark.completed_at = now
        if verdict is None or not verdict.passed or len(timings) < benchmark.runs or min(timings) <= 0:
            benchmark.state = BenchmarkState.REFUSED
            if verdict is None:
                benchmark.reason = "output shape differs from the reference"
            elif not verdict.passed:
                benchmark.reason = verdict.reason
            else:
                benchmark.reason = f"{len(timings)} positive run times needed, {benchmark.runs} asked"
            benchmark.min_cosine = verdict.worst if verdict else None
            benchmark.save()
            return benchmark  # committed as refused; the caller tells the node
        figures = scoring.benchmark_figures(timings, family.item_count(reference.inputs))
        node = benchmark.node
        score = scoring.node_score(
            figures,
            uptime=node_uptime(node, now),
            fail_rate=node.jobs_failed / max(1, node.jobs_assigned),
            age_h=0.0,
            policy=scoring.ScorePolicy.from_dict(benchmark.subnet.score_policy),
        )
        benchmark.state = BenchmarkState.PASSED
        benchmark.min_cosine = verdict.worst
        benchmark.items_per_s = figures.items_per_s
        benchmark.latency_p50_ms = figures.latency_p50_ms
        benchmark.latency_p95_ms = figures.latency_p95_ms
        benchmark.save()
        NodeSubnet.objects.filter(node_id=node_id, subnet=benchmark.subnet).update(
            score=score,
            items_per_s=figures.items_per_s,
            latency_p50_ms=figures.latency_p50_ms,
            latency_p95_ms=figures.latency_p95_ms,
            benchmarked_at=now,
            jobs_since_benchmark=0,
        )
        index_bump(benchmark.subnet_id)
        effects.queue_task("dispatch_waiting", str(benchmark.subnet_id))
        return benchmark


def benchmarks_due() -> int:
    """Beat: re-benchmark ready nodes every N jobs or after the subnet's maximum age, and
    let stale scores decay meanwhile (a node keeps its jobs while it re-benchmarks)."""
    issued = 0
    links = NodeSubnet.objects.filter(ready_at__isnull=False, node__is_online=True).select_related("subnet", "node")
    for link in links:
        if _benchmark_due(link):
            with transaction.atomic():
                issued += benchmark_issue(link=link) is not None
    return issued


# ---------------------------------------------------------------- reputation, strikes, bans


def reputation_record(*, node_ids: Sequence[object], outcome: float, subnet: Subnet) -> None:
    """Apply one job's outcome (1 consensus winner, 0 minority or failed honeypot)."""
    policy = scoring.ReputationPolicy.from_dict(subnet.reputation_policy)
    now = timezone.now()
    for node in Node.objects.select_for_update().filter(pk__in=node_ids).order_by("pk"):
        idle_h = (now - node.last_job_at).total_seconds() / 3600 if node.last_job_at else 0.0
        reputation = scoring.reputation_after_idle(node.reputation, idle_h=idle_h, policy=policy)
        agreed = node.jobs_agreed + (1 if outcome >= 1 else 0)
        node.reputation = scoring.reputation_after_job(reputation, outcome, jobs_done=agreed, policy=policy)
        node.jobs_agreed = agreed
        node.jobs_failed += 0 if outcome >= 1 else 1
        node.last_job_at = now
        node.save(update_fields=["reputation", "jobs_agreed", "jobs_failed", "last_job_at"])
    NodeSubnet.objects.filter(node_id__in=node_ids, subnet=subnet).update(jobs_since_benchmark=F("jobs_since_benchmark") + 1)


def node_strike(*, node_id: object, reason: str, job_id: object | None = None, subnet: Subnet | None = None) -> Strike:
    """A soft strike; reaching the policy's number of active strikes bans the node for a time."""
    policy = scoring.ReputationPolicy.from_dict(subnet.reputation_policy if subnet else None)
    now = timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node_id)
        strike = Strike.objects.create(
            node=node, job_id=job_id, reason=reason[:200], expires_at=now + timedelta(hours=policy.strike_ttl_h)
        )
        node.strikes += 1
        active = Strike.objects.filter(node=node, expires_at__gt=now, lifted_at__isnull=True).count()
        if active >= policy.strikes_to_ban:
            node.banned_until = now + timedelta(hours=policy.ban_h)
            log.warning("node %s banned until %s after %d active strikes", node.pk, node.banned_until, active)
        node.save(update_fields=["strikes", "banned_until"])
        _index_bump_for_node(node.pk)
    return strike


def node_ban_lift(*, node_id: object, operator: AbstractBaseUser) -> None:
    """An operator ends a ban early and lifts the strikes that caused it."""
    now = timezone.now()
    with transaction.atomic():
        Node.objects.filter(pk=node_id).update(banned_until=None)
        Strike.objects.filter(node_id=node_id, lifted_at__isnull=True, expires_at__gt=now).update(lifted_at=now)
        _index_bump_for_node(node_id)
    log.info("ban of node %s lifted by %s", node_id, operator)


def _index_bump_for_node(node_id: object) -> None:
    for subnet_id in NodeSubnet.objects.filter(node_id=node_id).values_list("subnet_id", flat=True):
        index_bump(subnet_id)


# ---------------------------------------------------------------- the routing index


# Per process: index versions when there is no Redis (embedded mode: one process), the
# built indexes, and the Redis client that shares versions between processes.
_local_versions: dict[int, int] = {}
_indexes: dict[int, tuple[int, float, NodeIndex]] = {}
_client: Any = None


def index_version(subnet_id: int) -> int:
    client = _redis_client()
    if client is None:
        return _local_versions.get(subnet_id, 0)
    return int(client.get(f"{settings.INDEX_KEY_PREFIX}:{subnet_id}") or 0)


def index_bump(subnet_id: int) -> None:
    """After commit, tell every dispatcher that the subnet's routable set changed."""

    def bump() -> None:
        client = _redis_client()
        if client is None:
            _local_versions[subnet_id] = _local_versions.get(subnet_id, 0) + 1
        else:
            client.incr(f"{settings.INDEX_KEY_PREFIX}:{subnet_id}")

    transaction.on_commit(bump)


def _redis_client() -> Any:
    if not settings.REDIS_URL:
        return None
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    return _client


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


def saturated_node_ids(subnet_id: int) -> list[str]:
    """Nodes of the subnet holding as many unanswered offers as their queue allows
    (NODE_QUEUE_DEPTH per job they run at once): offering more would only age in a queue.
    Where the subnet's policy says so (`queue_depth_below_escrow` > 0), a node whose escrow
    is still below the requirement gets that shorter queue: until it has something to lose,
    it carries less work."""
    rows = list(
        Assignment.objects.filter(state=AssignmentState.DISPATCHED, job__subnet_id=subnet_id)
        .values("node_id")
        .annotate(open=Count("pk"))
    )
    if not rows:
        return []
    busy = [r["node_id"] for r in rows]
    limits = dict(
        NodeSubnet.objects.filter(subnet_id=subnet_id, node_id__in=busy).values_list("node_id", "max_concurrent")
    )
    required, short_depth = Subnet.objects.values_list("escrow_required_micro", "queue_depth_below_escrow").get(
        pk=subnet_id
    )
    escrowed = set(
        Account.objects.filter(kind=AccountKind.NODE_ESCROW, node_id__in=busy, balance__gte=required).values_list(
            "node_id", flat=True
        )
    )
    saturated = []
    for row in rows:
        restricted = short_depth and required and row["node_id"] not in escrowed
        depth = short_depth if restricted else settings.NODE_QUEUE_DEPTH
        if row["open"] >= depth * limits.get(row["node_id"], 1):
            saturated.append(str(row["node_id"]))
    return saturated


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
    )


def _routable_records(subnet_id: int) -> list[Candidate]:
    now = timezone.now()
    subnet = Subnet.objects.get(pk=subnet_id)
    policy = scoring.ReputationPolicy.from_dict(subnet.reputation_policy)
    links = (
        NodeSubnet.objects.filter(
            subnet_id=subnet_id,
            ready_at__isnull=False,
            score__gt=0,
            node__is_online=True,
            node__last_seen__gte=now - timedelta(seconds=settings.NODE_STALE_S),
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
    score_policy = scoring.ScorePolicy.from_dict(subnet.score_policy)
    return [
        candidate_for(link.node, _routing_weight(link, now, score_policy, policy))
        for link in links
        if link.items_per_s and link.latency_p50_ms
    ]


def _routing_weight(
    link: NodeSubnet, now: Any, score_policy: scoring.ScorePolicy, policy: scoring.ReputationPolicy
) -> float:
    """w = base · R at this moment: benchmark figures decay with their age, reputation
    with the node's idle time, and each active strike softens the weight."""
    node = link.node
    base = scoring.node_score(
        scoring.BenchmarkFigures(link.items_per_s, link.latency_p50_ms, link.latency_p95_ms or link.latency_p50_ms),
        uptime=node_uptime(node, now),
        fail_rate=node.jobs_failed / max(1, node.jobs_assigned),
        age_h=(now - link.benchmarked_at).total_seconds() / 3600,
        policy=score_policy,
    )
    idle_h = (now - node.last_job_at).total_seconds() / 3600 if node.last_job_at else 0.0
    reputation = scoring.reputation_after_idle(node.reputation, idle_h=idle_h, policy=policy)
    return scoring.routing_weight(base, reputation, active_strikes=link.active_strikes, policy=policy)

"""Node registration and presence: register, connect, ready, heartbeat, disconnect.

A node becomes routable for a subnet when it is online, holds the subnet's verified model
(`ready`) and has passed the subnet's benchmark (its score > 0). Presence changes bump the
subnet's routing index version.

Liveness lives in the cache (Redis when configured, local memory in embedded mode): a
heartbeat updates the node's cache entry and writes its row only every
NODE_LAST_SEEN_DB_INTERVAL_S, so a chatty node costs no database write per heartbeat.
Whoever asks whether a node is alive (the sweeper, routing) takes the later of the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from bim_core import protocol
from bim_core.errors import ServiceError
from subnets.models import Subnet
from subnets.services import eula_accepted

from . import effects
from .asn import asn_or_block, ip_block
from .benchmarks import benchmark_due, benchmark_issue
from .models import (
    Assignment,
    AssignmentState,
    Benchmark,
    BenchmarkState,
    Node,
    NodeSubnet,
    SessionKey,
)
from .routing_index import index_bump, nodes_fresh, nodes_last_seen, presence_key, presence_set, timestamp_utc
from .takeback import assignments_lose_left


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
        # One key, one spelling: stored and looked up by its decoded bytes.
        public_key = protocol.canonical_public_key(public_key)
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


def node_connect(
    *, node: Node, channel_name: str, session_key_pub: str, nonce: str, session_cert: str, ip: str | None
) -> str:
    """Start a node's websocket session; returns the channel of a session it replaces ("" if none).
    Work given to the replaced session goes back to the pool: its session key is gone.
    A session key used before, by this or any node, is refused (ProtocolError
    session_key_reused): a result signed in an old session must never verify in a new one."""
    now = timezone.now()
    with transaction.atomic():
        try:
            with transaction.atomic():
                SessionKey.objects.create(key=protocol.canonical_public_key(session_key_pub), node_id=node.pk)
        except IntegrityError:
            raise protocol.ProtocolError("session_key_reused", "this session key was used before") from None
        locked = Node.objects.select_for_update().get(pk=node.pk)
        previous = locked.channel_name if locked.is_online else ""
        if previous:
            _session_close(locked, now)
        # Its open assignments stay: a result signed with the session key certified at
        # dispatch still verifies, and the sweeper takes back what stays unanswered.
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
        transaction.on_commit(lambda: presence_set(node.pk, channel=channel_name, seen=now, written=now))
    return previous if previous != channel_name else ""


def _cool_off_key(node_id: object) -> str:
    return f"bim:cool-off:{node_id}"


def node_cool_off(node_id: object) -> None:
    """The registry cut the node off for what it sent (a flood, a frame over the limit):
    its hellos are refused for NODE_CUT_OFF_COOL_OFF_S, so a flooder cannot be back in a
    second to flood again (each round costs every other node CPU)."""
    until = timezone.now() + timedelta(seconds=settings.NODE_CUT_OFF_COOL_OFF_S)
    cache.set(_cool_off_key(node_id), until.timestamp(), timeout=settings.NODE_CUT_OFF_COOL_OFF_S)


def node_cooling_off_until(node_id: object) -> datetime | None:
    until = cache.get(_cool_off_key(node_id))
    if until is None or until <= timezone.now().timestamp():
        return None
    return timestamp_utc(until)


def session_keys_prune() -> int:
    """Forget session keys certified more than SESSION_KEY_RETENTION_DAYS ago. A key is
    remembered so that a result signed in one session never verifies in another; every
    assignment and benchmark signed with a key that old ended long before (jobs live for
    minutes), so reusing it could no longer make an old signature count."""
    cutoff = timezone.now() - timedelta(days=settings.SESSION_KEY_RETENTION_DAYS)
    deleted, _ = SessionKey.objects.filter(used_at__lt=cutoff).delete()
    return deleted


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
        if benchmark_due(link):
            benchmark_issue(link=link)
        if link.score > 0:
            # Routable now (a node due for a re-benchmark keeps serving while it runs it).
            index_bump(link.subnet_id)
            effects.queue_task("dispatch_waiting", str(link.subnet_id))


def owner_subnet_leave(*, owner: AbstractBaseUser, subnet: Subnet) -> int:
    """The owner opted out of `subnet`: none of their nodes is offered its work from now
    (work already offered finishes and is paid as usual). A node's `ready` for it is
    refused until the owner opts in again. Returns how many nodes stopped serving it."""
    with transaction.atomic():
        left = NodeSubnet.objects.filter(node__owner=owner, subnet=subnet, ready_at__isnull=False).update(ready_at=None)
        if left:
            index_bump(subnet.pk)
    return left


def node_heartbeat(*, node_id: object, channel_name: str) -> str:
    """Record that the node is alive, in the cache. Returns "alive", "replaced" (another
    socket of the node took over) or "ended" (the registry ended this session: it heard
    nothing for too long). The row's last_seen is written only every
    NODE_LAST_SEEN_DB_INTERVAL_S (and when the cache lost the entry), so it stays a coarse
    fallback for the cache."""
    now = timezone.now()
    entry = cache.get(presence_key(node_id))
    if entry is not None and entry["channel"] != channel_name:
        return "replaced"
    if entry is not None and now.timestamp() - entry["written"] < settings.NODE_LAST_SEEN_DB_INTERVAL_S:
        presence_set(node_id, channel=channel_name, seen=now, written=timestamp_utc(entry["written"]))
        return "alive"
    if not Node.objects.filter(pk=node_id, channel_name=channel_name, is_online=True).update(last_seen=now):
        replaced = Node.objects.filter(pk=node_id, is_online=True).exclude(channel_name=channel_name).exists()
        return "replaced" if replaced else "ended"
    presence_set(node_id, channel=channel_name, seen=now, written=now)
    return "alive"


def node_last_seen(node_id: object) -> datetime | None:
    """When the node was last heard from: the later of its cache entry and its row."""
    row = Node.objects.filter(pk=node_id).values_list("last_seen", flat=True).first()
    return nodes_last_seen({node_id: row}).get(node_id)


def nodes_stale() -> list[tuple[Any, str]]:
    """Online nodes silent for NODE_STALE_S, as (node_id, channel): what the sweeper drops."""
    online = {node_id: (channel, seen) for node_id, channel, seen in Node.objects.filter(is_online=True).values_list(
        "id", "channel_name", "last_seen"
    )}
    fresh = nodes_fresh({node_id: seen for node_id, (_, seen) in online.items()})
    return [(node_id, channel) for node_id, (channel, _) in online.items() if node_id not in fresh]


def node_open_assignments(node_id: object) -> list[str]:
    """The node's open assignments, any session's: `welcome` lists them, so a node back
    after a disconnect answers them or gives them up (`job_failed`) rather than leave them
    to their deadline."""
    return [
        str(pk)
        for pk in Assignment.objects.filter(node_id=node_id, state=AssignmentState.DISPATCHED).values_list("pk", flat=True)
    ]


def node_disconnect(*, node_id: object, channel_name: str, work_left: str = "") -> int:
    """End a node's session: its socket closed, or it was silent too long. When the node
    left its work (`work_left` says how: it closed its socket itself, or the registry cut
    it off for what it sent) the session's open work moves at once; otherwise it waits
    NODE_RECONNECT_GRACE_S for the node to come back (a registry restart closes every
    socket), then `takeback.assignments_lose_disconnected` moves it."""
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=node_id, channel_name=channel_name, is_online=True).first()
        if node is None:
            return 0  # a newer session owns the node
        session_key_pub = node.session_key_pub
        node.last_seen = nodes_last_seen({node.pk: node.last_seen})[node.pk]
        _session_close(node, timezone.now())
        Node.objects.filter(pk=node_id).update(
            is_online=False, channel_name="", online_seconds=node.online_seconds, last_seen=node.last_seen
        )
        transaction.on_commit(lambda: cache.delete(presence_key(node_id)))
    if work_left:
        assignments_lose_left(node_id=node_id, session_key_pub=session_key_pub, reason=work_left)
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

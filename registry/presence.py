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

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from bim_core import protocol
from bim_core.errors import ServiceError
from subnets.models import Subnet
from subnets.services import eula_accepted, eulas_accepted

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
from .routing_index import (
    index_bump,
    index_bump_for_node,
    nodes_fresh,
    nodes_last_seen,
    presence_key,
    presence_set_many,
    timestamp_utc,
)
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
    subnets = list(Subnet.objects.filter(slug__in=subnet_slugs, state=Subnet.State.ACTIVE).select_related("license"))
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
        # Kept as the node's word; a "trusted" in it is dropped so no reader mistakes it for
        # the operator's flag (Node.trusted), which nothing a node sends can set.
        node.capabilities = {k: v for k, v in env.items() if k not in fingerprint and k != "trusted"}
        node.ip = ip
        node.ip_block = ip_block(ip)
        node.save()
        for subnet in subnets:
            NodeSubnet.objects.get_or_create(node=node, subnet=subnet)
        if not created:
            # Routing reads these attributes (diversity, WebRTC) from its index.
            index_bump_for_node(node.pk)
    return node, created


def node_connect(
    *, node: Node, channel_name: str, session_key_pub: str, nonce: str, session_cert: str, ip: str | None
) -> str:
    """Start a node's websocket session; returns the channel of a session it replaces ("" if none).
    Work given to the replaced session goes back to the pool: its session key is gone.
    A session key used before, by this or any node, is refused (ProtocolError
    session_key_reused): a result signed in an old session must never verify in a new one."""
    replaced = nodes_connect([Connect(node.pk, channel_name, session_key_pub, nonce, session_cert, ip)])[0]
    if replaced is None:
        raise protocol.ProtocolError("session_key_reused", "this session key was used before")
    return replaced


@dataclass(frozen=True)
class Connect:
    """A session to start: a socket whose hello was checked (registry.hello)."""

    node_id: Any
    channel_name: str
    session_key_pub: str
    nonce: str
    session_cert: str
    ip: str | None


def nodes_connect(sessions: Sequence[Connect]) -> list[str | None]:
    """`node_connect` for many sockets in one transaction: per session, in order, the
    channel of the session it replaced ("" if none), or None where its session key was
    used before (also twice in the batch: the later one is refused)."""
    now = timezone.now()
    results: list[str | None] = [None] * len(sessions)
    keys = [protocol.canonical_public_key(s.session_key_pub) for s in sessions]
    with transaction.atomic():
        used = set(SessionKey.objects.filter(key__any=keys).values_list("key", flat=True))
        fresh = []
        for index, key in enumerate(keys):
            if key not in used:
                used.add(key)
                fresh.append(index)
        try:
            with transaction.atomic():
                SessionKey.objects.bulk_create([SessionKey(key=keys[i], node_id=sessions[i].node_id) for i in fresh])
        except IntegrityError:
            if len(fresh) > 1:
                raise  # a key another hello inserted meanwhile: which one, the caller learns one by one
            return results
        # In key order, as nodes_disconnect locks them.
        locked = Node.objects.select_for_update().filter(pk__any={sessions[i].node_id for i in fresh}).order_by("pk")
        channel = {pk: previous if online else "" for pk, online, previous in locked.values_list("pk", "is_online", "channel_name")}
        if online := [pk for pk, previous in channel.items() if previous]:
            _sessions_end(online, now)
        rows: dict[Any, list[Any]] = {}
        for index in fresh:
            session = sessions[index]
            pk = uuid.UUID(str(session.node_id))
            # A node twice in the batch: its later socket replaces the earlier one, as it
            # would a moment later.
            previous = channel[pk]
            results[index] = previous if previous != session.channel_name else ""
            channel[pk] = session.channel_name
            # Its open assignments stay: a result signed with the session key certified
            # at dispatch still verifies, and the sweeper takes back what stays unanswered.
            asn = asn_or_block(session.ip)  # the address's /24 (or /48) when no ASN is known
            rows[pk] = [
                True,
                session.channel_name,
                session.session_key_pub,
                session.nonce,
                session.session_cert,
                now,
                now,
                session.ip,
                ip_block(session.ip) if asn.startswith("AS") else asn,
                int(asn[2:]) if asn.startswith("AS") else None,
            ]
        _nodes_update(CONNECT_FIELDS, rows)
        transaction.on_commit(lambda: presence_set_many({pk: (c, now) for pk, c in channel.items()}, seen=now))
    return results


CONNECT_FIELDS = [
    "is_online",
    "channel_name",
    "session_key_pub",
    "session_nonce",
    "session_cert",
    "connected_at",
    "last_seen",
    "ip",
    "ip_block",
    "asn",
]


def _nodes_update(fields: Sequence[str], rows: dict[Any, list[Any]]) -> None:
    """Set `fields` of each node ({pk: values}): one UPDATE statement executed for every
    row in one go (psycopg pipelines it). `bulk_update` builds a CASE per field and row,
    which cost a hello batch more than all its other statements together."""
    if not rows:
        return
    meta = Node._meta
    quote = connection.ops.quote_name
    columns = [meta.get_field(name) for name in fields]
    sql = "UPDATE {} SET {} WHERE {} = %s".format(
        quote(meta.db_table), ", ".join(f"{quote(f.column)} = %s" for f in columns), quote(meta.pk.column)
    )
    params = [
        [f.get_db_prep_save(value, connection) for f, value in zip(columns, values)]
        + [meta.pk.get_db_prep_value(pk, connection)]
        for pk, values in rows.items()
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


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
    refused = nodes_ready([Ready(str(node_id), subnet_slug, model_checksum, max_concurrent)])[0]
    if refused is not None:
        raise refused


@dataclass(frozen=True)
class Ready:
    node_id: str
    subnet_slug: str
    model_checksum: str
    max_concurrent: int


def nodes_ready(requests: Sequence[Ready]) -> list[protocol.ProtocolError | None]:
    """`node_ready` for many nodes at once (a few statements for the lot); per request, in
    order, None or the refusal (a ProtocolError, returned, not raised)."""
    subnets = {
        subnet.pk: subnet
        for subnet in Subnet.objects.filter(slug__in={r.subnet_slug for r in requests}).select_related("license")
    }
    links = {}
    for link in NodeSubnet.objects.filter(node_id__any={r.node_id for r in requests}, subnet_id__in=subnets).annotate(
        owner_id=F("node__owner_id")
    ):
        link.subnet = subnets[link.subnet_id]  # one instance per subnet, not one per link
        links[(str(link.node_id), link.subnet.slug)] = link
    accepted = eulas_accepted({(link.owner_id, link.subnet) for link in links.values()})
    results: list[protocol.ProtocolError | None] = []
    ready: dict[int, tuple[NodeSubnet, int]] = {}
    for request in requests:
        link = links.get((request.node_id, request.subnet_slug))
        if link is None:
            error = protocol.ProtocolError("unknown_subnet", f"node is not registered for subnet {request.subnet_slug!r}")
        elif link.subnet.state not in (Subnet.State.ACTIVE, Subnet.State.PAUSED):
            error = protocol.ProtocolError("unknown_subnet", f"subnet {request.subnet_slug!r} is {link.subnet.state}")
        elif request.model_checksum != link.subnet.model_checksum:
            error = protocol.ProtocolError("model_mismatch", "model_checksum differs from the subnet's model")
        elif (link.owner_id, link.subnet_id) not in accepted:
            error = protocol.ProtocolError("license_not_accepted", "the node's owner has not accepted the license")
        else:
            error = None
            ready[link.pk] = (link, max(1, request.max_concurrent))
        results.append(error)
    if not ready:
        return results
    now = timezone.now()
    with transaction.atomic():
        by_concurrency: dict[int, list[int]] = {}
        for link, max_concurrent in ready.values():
            # The rows as just read, with what this update sets (no second read).
            link.ready_at, link.max_concurrent = now, max_concurrent
            by_concurrency.setdefault(max_concurrent, []).append(link.pk)
        for max_concurrent, pks in by_concurrency.items():
            NodeSubnet.objects.filter(pk__any=pks).update(ready_at=now, max_concurrent=max_concurrent)
        routable = set()
        for link, _ in ready.values():
            if benchmark_due(link):
                benchmark_issue(link=link)
            if link.score > 0:
                # Routable now (a node due for a re-benchmark keeps serving while it runs it).
                routable.add(link.subnet_id)
        for subnet_id in routable:
            index_bump(subnet_id)
            effects.queue_task("dispatch_waiting", str(subnet_id))
    return results


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
    return nodes_heartbeat([(node_id, channel_name)])[0]


def nodes_heartbeat(sessions: Sequence[tuple[object, str]]) -> list[str]:
    """`node_heartbeat` for many sockets (5,000 nodes send 500 a second): one cache read
    and one write for the lot; per session, in order, its state."""
    now = timezone.now()
    entries = cache.get_many([presence_key(node_id) for node_id, _ in sessions])
    states: list[str] = []
    alive: dict[Any, tuple[str, datetime]] = {}
    for node_id, channel_name in sessions:
        entry = entries.get(presence_key(node_id))
        if entry is not None and entry["channel"] != channel_name:
            states.append("replaced")
        elif entry is not None and now.timestamp() - entry["written"] < settings.NODE_LAST_SEEN_DB_INTERVAL_S:
            alive[node_id] = (channel_name, timestamp_utc(entry["written"]))
            states.append("alive")
        elif not Node.objects.filter(pk=node_id, channel_name=channel_name, is_online=True).update(last_seen=now):
            replaced = Node.objects.filter(pk=node_id, is_online=True).exclude(channel_name=channel_name).exists()
            states.append("replaced" if replaced else "ended")
        else:
            alive[node_id] = (channel_name, now)
            states.append("alive")
    if alive:
        presence_set_many(alive, seen=now)
    return states


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


def node_disconnect(*, node_id: object, channel_name: str, work_left: str = "") -> int:
    """End a node's session: its socket closed, or it was silent too long. When the node
    left its work (`work_left` says how: it closed its socket itself, or the registry cut
    it off for what it sent) the session's open work moves at once; otherwise it waits
    NODE_RECONNECT_GRACE_S for the node to come back (a registry restart closes every
    socket), then `takeback.assignments_lose_disconnected` moves it. Returns 1, or 0 when
    a newer session owns the node."""
    return nodes_disconnect([(node_id, channel_name, work_left)])[0]


Session = tuple[object, str, str]  # (node id, channel name, work_left) of a session that ended


def nodes_disconnect(sessions: Sequence[Session]) -> list[int]:
    """`node_disconnect` for many sessions in one transaction (a burst of closing sockets
    costs a few statements per batch, not per node); one result per session, in order."""
    wanted = {(str(node_id), channel) for node_id, channel, _ in sessions}
    now = timezone.now()
    with transaction.atomic():
        # In key order, so two batches (or a batch and a hello) lock their rows alike.
        online = (
            Node.objects.select_for_update()
            .filter(pk__any={node_id for node_id, _, _ in sessions}, is_online=True)
            .order_by("pk")
            .only("id", "channel_name", "session_key_pub", "connected_at", "last_seen", "online_seconds")
        )
        # A row whose channel is another's belongs to a newer session: left alone.
        closing = [node for node in online if (str(node.pk), node.channel_name) in wanted]
        ended = [(str(node.pk), node.channel_name, node.session_key_pub) for node in closing]
        if closing:
            seen = nodes_last_seen({node.pk: node.last_seen for node in closing})
            rows = {}
            for node in closing:
                # The session's time online is banked up to when the node was last heard.
                last_seen = seen[node.pk]
                if node.connected_at is not None:
                    node.online_seconds += max(0.0, ((last_seen or now) - node.connected_at).total_seconds())
                rows[node.pk] = [False, "", node.online_seconds, last_seen]
            _sessions_end([node.pk for node in closing], now)
            _nodes_update(["is_online", "channel_name", "online_seconds", "last_seen"], rows)
            keys = [presence_key(node.pk) for node in closing]
            transaction.on_commit(lambda: cache.delete_many(keys))
    ended_channels = {(node_id, channel) for node_id, channel, _ in ended}
    reasons = {
        str(node_id): reason
        for node_id, channel, reason in sessions
        if reason and (str(node_id), channel) in ended_channels
    }
    if reasons:
        _work_left_moves([(node_id, key) for node_id, _, key in ended if node_id in reasons], reasons)
    return [int((str(node_id), channel) in ended_channels) for node_id, channel, _ in sessions]


def _work_left_moves(closed: list[tuple[str, str]], reasons: dict[str, str]) -> None:
    """The closed sessions whose node left its work: what they still hold moves now. One
    query finds the few that hold any."""
    if not closed:
        return
    holding = set(
        Assignment.objects.filter(
            state=AssignmentState.DISPATCHED, node_id__any=[node_id for node_id, _ in closed]
        ).values_list("node_id", "session_key_pub")
    )
    for node_id, session_key_pub in closed:
        if (uuid.UUID(node_id), session_key_pub) in holding:
            assignments_lose_left(node_id=node_id, session_key_pub=session_key_pub, reason=reasons[node_id])


def _sessions_end(node_ids: Sequence[Any], now: Any) -> None:
    """The sessions of these nodes end (their rows are locked): they stop being ready
    (routing drops them) and benchmarks they were running expire."""
    ready = NodeSubnet.objects.filter(node_id__any=node_ids, ready_at__isnull=False)
    for subnet_id in set(ready.values_list("subnet_id", flat=True)):
        index_bump(subnet_id)
    NodeSubnet.objects.filter(node_id__any=node_ids).update(ready_at=None)
    Benchmark.objects.filter(node_id__any=node_ids, state=BenchmarkState.ISSUED).update(
        state=BenchmarkState.EXPIRED, reason="session ended", completed_at=now
    )

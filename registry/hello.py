"""A node's hello (docs/protocol.md): checked, and its session opened, for many sockets at
once. After a registry restart every node says hello within seconds; one at a time, each
hello cost ten round trips to PostgreSQL (bench/websockets.py), so a few thousand took
minutes. Checked together, a batch costs a handful of statements whatever its size; one
hello alone costs what it did.

The checks, in the order a node learns of them: the node must be the user's
(CLOSE_UNKNOWN_NODE), the session key a public key and the hello signed with the node's
long-term key over this connection's nonce and that key (CLOSE_AUTH_FAILED); a banned
node (CLOSE_BANNED) and one cut off and cooling off (CLOSE_RATE_LIMITED) are refused, as
is a session key used before by any node (CLOSE_SESSION_KEY_REUSED).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from django.utils import timezone

from bim_core import protocol
from subnets import selectors as subnet_selectors
from subnets.models import Subnet

from . import p2p_uploads
from .cool_off import nodes_cooling_off_until
from .models import Assignment, AssignmentState, Node, NodeSubnet
from .presence import Connect, nodes_connect


@dataclass(frozen=True)
class HelloRequest:
    """A socket's hello, with what the connection knows: its user, nonce, channel, address."""

    user: Any
    node_id: str
    nonce: str
    session_key_pub: str
    signature: str
    channel_name: str
    ip: str | None


@dataclass(frozen=True)
class Hello:
    """What a hello came to: refused (a close code of bim_core.protocol, and a reason where
    the node is told one), or a session opened, with what `welcome` tells the node and the
    channel of the session it replaced ("" if none)."""

    close_code: int | None = None
    close_reason: str | None = None
    node_id: str = ""
    replaced: str = ""
    subnets: list[dict[str, str]] = field(default_factory=list)
    assignments: list[str] = field(default_factory=list)
    # Upload requests (peer-to-peer payloads) not yet answered: sent again after `welcome`.
    uploads: list[dict[str, Any]] = field(default_factory=list)


def node_hello(request: HelloRequest) -> Hello:
    return nodes_hello([request])[0]


def nodes_hello(requests: Sequence[HelloRequest]) -> list[Hello]:
    """Check each hello and open the sessions of those that pass; one answer per request,
    in order."""
    answers: dict[int, Hello] = {}
    node_ids: dict[int, uuid.UUID] = {}
    for index, request in enumerate(requests):
        try:
            node_ids[index] = uuid.UUID(request.node_id)
        except ValueError:
            answers[index] = Hello(close_code=protocol.CLOSE_UNKNOWN_NODE)
    nodes = {
        row[0]: _Node(*row)
        for row in Node.objects.filter(pk__any=set(node_ids.values())).values_list(*_Node._fields)
    }
    cooling = nodes_cooling_off_until(list(nodes))
    now = timezone.now()
    passed = []
    for index, node_id in node_ids.items():
        request, node = requests[index], nodes.get(node_id)
        refusal = _refusal(request, node, cooling.get(node_id), now)
        if refusal is not None:
            answers[index] = refusal
        else:
            passed.append(index)
    replaced = nodes_connect(
        [
            Connect(node_ids[i], requests[i].channel_name, requests[i].session_key_pub, requests[i].nonce, requests[i].signature, requests[i].ip)
            for i in passed
        ]
    )
    opened = {}
    for index, channel in zip(passed, replaced):
        if channel is None:
            answers[index] = Hello(close_code=protocol.CLOSE_SESSION_KEY_REUSED)
        else:
            opened[index] = channel
    subnets, assignments = _welcome({node_ids[i] for i in opened})
    uploads = p2p_uploads.uploads_outstanding({node_ids[i] for i in opened}) if opened else {}
    for index, channel in opened.items():
        node_id = node_ids[index]
        answers[index] = Hello(
            node_id=str(node_id), replaced=channel, subnets=subnets.get(node_id, []),
            assignments=assignments.get(node_id, []), uploads=uploads.get(node_id, []),
        )
    return [answers[index] for index in range(len(requests))]


class _Node(NamedTuple):
    """What a hello's checks read of the node (a row, not a model: thousands at once)."""

    id: uuid.UUID
    owner_id: int
    public_key: str
    banned_until: datetime | None


def _refusal(request: HelloRequest, node: _Node | None, cooling_until: Any, now: Any) -> Hello | None:
    if node is None or node.owner_id != request.user.pk:
        return Hello(close_code=protocol.CLOSE_UNKNOWN_NODE)
    try:
        protocol.parse_public_key(request.session_key_pub)
    except protocol.ProtocolError:
        return Hello(close_code=protocol.CLOSE_AUTH_FAILED)
    signed = protocol.hello_message(node_id=str(node.id), nonce=request.nonce, session_key_pub=request.session_key_pub)
    if not protocol.signature_valid(node.public_key, request.signature, signed):
        return Hello(close_code=protocol.CLOSE_AUTH_FAILED)
    if node.banned_until is not None and node.banned_until > now:
        return Hello(close_code=protocol.CLOSE_BANNED, close_reason=f"banned until {node.banned_until.isoformat()}")
    if cooling_until is not None:
        return Hello(
            close_code=protocol.CLOSE_RATE_LIMITED, close_reason=f"cut off; come back after {cooling_until.isoformat()}"
        )
    return None


# A paused subnet stays listed (with its state): its nodes stay connected and ready, and
# are told when it resumes (registry.lifecycle), rather than exit as if it had vanished.
SERVED_STATES = (Subnet.State.ACTIVE, Subnet.State.PAUSED)


def _welcome(node_ids: set[uuid.UUID]) -> tuple[dict[Any, list[dict[str, str]]], dict[Any, list[str]]]:
    """What `welcome` lists per node: its active subnets (slug, model checksum, manifest)
    and its open assignments, any session's, so that a node back after a disconnect
    answers them or gives them up (`job_failed`) rather than leave them to their deadline."""
    if not node_ids:
        return {}, {}
    links = list(
        NodeSubnet.objects.filter(node_id__any=node_ids, subnet__state__in=SERVED_STATES).values_list(
            "node_id", "subnet_id"
        )
    )
    described = {
        subnet.pk: {
            "slug": subnet.slug,
            "model_checksum": subnet.model_checksum,
            "manifest_url": subnet_selectors.manifest_url(subnet),
            "state": subnet.state,
        }
        for subnet in Subnet.objects.filter(pk__in={subnet_id for _, subnet_id in links}).only(
            "id", "slug", "model_checksum", "state"
        )
    }
    subnets: dict[Any, list[dict[str, str]]] = {}
    for node_id, subnet_id in links:
        subnets.setdefault(node_id, []).append(dict(described[subnet_id]))
    assignments: dict[Any, list[str]] = {}
    for node_id, pk in Assignment.objects.filter(node_id__any=node_ids, state=AssignmentState.DISPATCHED).values_list(
        "node_id", "pk"
    ):
        assignments.setdefault(node_id, []).append(str(pk))
    return subnets, assignments

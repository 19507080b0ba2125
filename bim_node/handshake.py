"""Opening a node session (docs/protocol.md): challenge, hello signed by the node's long-term
key over a fresh session key, welcome, ready; and the JSON frames the session is made of."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection

from bim_core import protocol

DEFAULT_HEARTBEAT_S = 10.0

log = logging.getLogger(__name__)


class NodeFatalError(Exception):
    """Reconnecting will not help; the node stops and says why."""


class SessionError(Exception):
    """This connection went wrong in a way a fresh one may not."""


@dataclass(frozen=True)
class Opened:
    """What a connection's handshake settled: the key its results are signed with."""

    session_key: Ed25519PrivateKey
    heartbeat_s: float
    # The subnet's state as `welcome` listed it: "paused" while its operator has it paused.
    subnet_state: str = "active"


async def handshake(
    ws: ClientConnection,
    *,
    node_id: str,
    key: Ed25519PrivateKey,
    env: dict[str, Any],
    subnet: str,
    model_checksum: str,
    max_concurrent: int,
    timeout_s: float,
    release_listed_work: bool = True,
) -> Opened:
    """Run the handshake up to `ready`; NodeFatalError where the operator must act."""
    challenge = await expect(ws, "challenge", timeout_s)
    if challenge.get("protocol") != protocol.PROTOCOL_VERSION:
        raise NodeFatalError(
            f"the registry speaks {challenge.get('protocol')!r}, this node "
            f"{protocol.PROTOCOL_VERSION!r}: upgrade the node"
        )
    nonce = challenge.get("nonce")
    if not isinstance(nonce, str):
        raise SessionError("challenge without a nonce")
    # A fresh session key per connection: a leaked one is worthless after a reconnect.
    session_key = protocol.new_private_key()
    session_pub = protocol.public_key_b64(session_key)
    signed = protocol.hello_message(node_id=node_id, nonce=nonce, session_key_pub=session_pub)
    await send(
        ws,
        {
            "type": "hello",
            "node_id": node_id,
            "session_key_pub": session_pub,
            "signature": protocol.sign(key, signed),
            "env": env,
        },
    )

    welcome = await expect(ws, "welcome", timeout_s)
    offered = {s.get("slug"): s for s in welcome.get("subnets") or [] if isinstance(s, dict)}
    if subnet not in offered:
        raise NodeFatalError(f"the registry does not serve subnet {subnet!r} to this node")
    current = offered[subnet].get("model_checksum")
    if current != model_checksum:
        raise NodeFatalError(
            f"subnet {subnet!r} now runs model {current}, not the loaded "
            f"{model_checksum}: restart the node to fetch it"
        )
    if release_listed_work:
        # This node keeps no work across connections (its queue dies with the socket): what
        # the registry still counts as ours goes back now, not at its deadline.
        for assignment_id in listed_assignments(welcome):
            await send(ws, {"type": "job_failed", "assignment_id": assignment_id, "reason": protocol.LOST_ON_RECONNECT})
    await send(
        ws,
        {"type": "ready", "subnet": subnet, "model_checksum": model_checksum, "max_concurrent": max_concurrent},
    )
    state = offered[subnet].get("state") or "active"
    if state == "paused":
        log.warning("subnet %s is paused by its operator: connected, no jobs until it resumes", subnet)
    return Opened(
        session_key=session_key, heartbeat_s=_heartbeat_interval(welcome.get("heartbeat_s")), subnet_state=str(state)
    )


MAX_LISTED_ASSIGNMENTS = 4096


def listed_assignments(welcome: dict[str, Any]) -> list[str]:
    """The open assignments `welcome` says the registry still counts as this node's."""
    listed = welcome.get("assignments")
    if not isinstance(listed, list):
        return []
    return [a for a in listed[:MAX_LISTED_ASSIGNMENTS] if isinstance(a, str)]


async def expect(ws: ClientConnection, kind: str, timeout_s: float) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout_s)
    except TimeoutError as exc:
        raise SessionError(f"no {kind} within {timeout_s} s") from exc
    message = parse(raw)
    if message is None or message.get("type") != kind:
        if message is not None and message.get("type") == "error":
            raise SessionError(f"registry error {message.get('code')}: {message.get('detail')}")
        raise SessionError(f"expected {kind}, got {str(raw)[:200]!r}")
    return message


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message, separators=(",", ":")))


def parse(raw: str | bytes) -> dict[str, Any] | None:
    """A text frame holding a JSON object, or None for anything else."""
    if not isinstance(raw, str):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _heartbeat_interval(value: Any) -> float:
    try:
        interval = float(value)
    except (TypeError, ValueError):
        return DEFAULT_HEARTBEAT_S
    return interval if interval > 0 else DEFAULT_HEARTBEAT_S

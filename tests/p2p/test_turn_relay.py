"""Relay-only Peers through a real coturn with TURN REST credentials: what the registry-relay
fallback relies on is that a working relay carries the job and a refused one fails fast."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from bim_core.ice import ice_servers
from bim_core.peer import Peer, PeerError
from tests.p2p.peers import close, connect, run
from tests.turn import TurnServer

MiB = 1024 * 1024


def _servers(turn_server: TurnServer, *, secret: str | None = None, now: float | None = None) -> list[dict]:
    return ice_servers(
        stun_urls=turn_server.stun_urls,
        turn_urls=turn_server.turn_urls,
        secret=turn_server.secret if secret is None else secret,
        user="job-1",
        ttl_s=600,
        now=time.time() if now is None else now,
    )


def test_a_relay_only_pair_carries_a_megabyte_there_and_back_through_turn(turn_server: TurnServer) -> None:
    prompt = os.urandom(MiB)

    async def scenario() -> None:
        user = Peer(_servers(turn_server), relay_only=True)
        node = Peer(_servers(turn_server), relay_only=True)
        try:
            offer = await user.offer()
            candidates = [line for line in offer["sdp"].splitlines() if line.startswith("a=candidate:")]
            # Only the relayed address goes out, and the related address is hidden.
            assert candidates and all(" typ relay raddr 0.0.0.0 rport 9" in line for line in candidates)
            await user.accept_answer(await node.answer(offer))
            await asyncio.gather(user.wait_open(10), node.wait_open(10))

            await user.send({"kind": "prompt"}, prompt)
            header, received = await node.receive(10)
            await node.send({"kind": "echo"}, received)
            header, echoed = await user.receive(10)
            assert header == {"kind": "echo"}
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(prompt).digest()

            for peer in (user, node):
                stats = peer.stats()
                assert stats["relayed"] is True
                assert stats["local_candidate"] == stats["remote_candidate"] == "relay"
                assert stats["bytes_sent"] > MiB and stats["bytes_received"] > MiB
                assert stats["transport_bytes_sent"] > stats["bytes_sent"]
        finally:
            await close(user, node)

    run(scenario)


@pytest.mark.parametrize("refusal", ["wrong secret", "expired"])
def test_a_relay_only_pair_with_refused_credentials_fails_fast(turn_server: TurnServer, refusal: str) -> None:
    if refusal == "wrong secret":
        servers = _servers(turn_server, secret="not-" + turn_server.secret)
    else:
        servers = _servers(turn_server, now=time.time() - 3600)

    async def scenario() -> None:
        user, node = Peer(servers, relay_only=True), Peer(servers, relay_only=True)
        started = time.monotonic()
        try:
            with pytest.raises(PeerError) as failed:
                await connect(user, node, timeout_s=10)
            assert failed.value.code == "ice_failed"
            # Long before the timeout: no candidate means nothing to wait for.
            assert time.monotonic() - started < 3
        finally:
            await close(user, node)

    run(scenario)


def test_a_relay_only_user_fails_fast_against_a_node_with_working_credentials(turn_server: TurnServer) -> None:
    """The other end of a refused relay learns it from the answer, not from a timeout."""

    async def scenario() -> None:
        user = Peer(_servers(turn_server), relay_only=True)
        node = Peer(_servers(turn_server, secret="not-" + turn_server.secret), relay_only=True)
        try:
            answer = await node.answer(await user.offer())
            await user.accept_answer(answer)
            started = time.monotonic()
            with pytest.raises(PeerError) as failed:
                await user.wait_open(10)
            assert failed.value.code == "ice_failed"
            assert time.monotonic() - started < 3
        finally:
            await close(user, node)

    run(scenario)


def test_relay_only_without_a_turn_server_is_refused() -> None:
    with pytest.raises(ValueError, match="TURN"):
        Peer([{"urls": ["stun:127.0.0.1:3478"]}], relay_only=True)

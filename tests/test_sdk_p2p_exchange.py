"""The SDK's peer-to-peer exchange (bim_sdk.p2p) against a fake user socket written with
`websockets.serve` and a node played by a real `bim_core.peer.Peer` in the test, on loopback:
what it sends, what it checks, when it falls back and when it gives up. No database; the
registry's HTTP side is a recording function. tests/e2e/test_p2p_pipeline.py runs the real
registry and nodes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from bim_core import protocol
from bim_core.peer import Peer, allow_loopback
from bim_sdk.p2p import Outcome, Partial, PeerRefused, exchange_events

pytestmark = pytest.mark.timeout(60)

INPUTS = {"texts": ["kept from the registry"]}
WAIT_S = 10.0


@pytest.fixture(autouse=True, scope="module")
def _loopback() -> None:
    allow_loopback()


class FakeRegistry:
    """The registry as the exchange sees it: a job, the HTTP calls it gets, and the user
    socket, whose node side the scenario (`node`) plays."""

    def __init__(self, node: Callable[[FakeRegistry, ServerConnection, dict[str, Any]], Any]) -> None:
        self.node_key = protocol.new_private_key()
        self.assignment_id = str(uuid.uuid4())
        self.job = {
            "id": str(uuid.uuid4()),
            "state": "dispatched",
            "contract_hash": "cd" * 32,
            "contract": {"input_hash": protocol.input_hash(INPUTS), "input_summary": {"items": 1}},
        }
        self.calls: list[tuple[str, str, Any]] = []
        self.node = node
        self.socket: ServerConnection | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the test's, which runs the socket

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path, kwargs.get("json")))
        if path.endswith("/delivered/"):
            self.job["state"] = "settled"
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(self._tell_state(), self.loop)
        return dict(self.job) if method == "GET" else {"matched": True}

    async def _tell_state(self) -> None:
        assert self.socket is not None
        await self.socket.send(json.dumps({"type": "job_state", "job_id": self.job["id"], "state": self.job["state"]}))

    async def handler(self, ws: ServerConnection) -> None:
        self.socket = ws
        watch = json.loads(await ws.recv())
        assert watch == {"type": "watch", "job_id": self.job["id"]}
        entry = {"assignment_id": self.assignment_id, "role": "A", "session_key_pub": protocol.public_key_b64(self.node_key)}
        await ws.send(json.dumps({"type": "peers", "job_id": self.job["id"], "state": "dispatched", "ice_servers": [], "peers": [entry]}))
        await self.node(self, ws, entry)
        await ws.wait_closed()

    def signed_result(self, payload: bytes) -> dict[str, Any]:
        result_hash = protocol.sha256_hex(payload)
        signed = protocol.result_message(
            job_id=self.job["id"], assignment_id=self.assignment_id, contract_hash=self.job["contract_hash"],
            input_hash=self.job["contract"]["input_hash"], result_hash=result_hash, shape=(1, 2),
        )
        return {
            "kind": "result", "job_id": self.job["id"], "assignment_id": self.assignment_id,
            "input_hash": self.job["contract"]["input_hash"], "result_hash": result_hash, "shape": [1, 2],
            "encoding": "f32le", "signature": protocol.sign(self.node_key, signed),
        }


async def node_answers(registry: FakeRegistry, ws: ServerConnection) -> tuple[Peer, dict[str, Any], bytes]:
    """The node's side up to the input: answer the offer, open, read the input frame."""
    offer = json.loads(await ws.recv())
    assert offer["type"] == "rtc_offer" and offer["assignment_id"] == registry.assignment_id
    node = Peer([])
    answer = await node.answer({"type": "offer", "sdp": offer["sdp"]})
    await ws.send(json.dumps({"type": "rtc_answer", "job_id": registry.job["id"], "assignment_id": registry.assignment_id, "sdp": answer["sdp"]}))
    await node.wait_open(WAIT_S)
    header, raw = await node.receive(WAIT_S)
    return node, header, raw


def run_exchange(registry: FakeRegistry, **options: Any) -> list[Partial | Outcome]:
    async def scenario() -> list[Partial | Outcome]:
        registry.loop = asyncio.get_running_loop()
        async with serve(registry.handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            events = exchange_events(
                registry.request, ws_url=f"ws://127.0.0.1:{port}/ws/user/?token=t", job=registry.job, inputs=INPUTS,
                timeout=WAIT_S, **options,
            )
            return await asyncio.to_thread(list, events)

    return asyncio.run(asyncio.wait_for(scenario(), 40))


def test_it_brings_the_input_streams_partials_and_confirms_the_checked_result() -> None:
    payload = protocol.encode_vectors(np.array([[0.6, 0.8]], dtype=np.float32))
    seen: dict[str, Any] = {}

    async def node(registry: FakeRegistry, ws: ServerConnection, entry: dict[str, Any]) -> None:
        peer, header, raw = await node_answers(registry, ws)
        seen.update(header=header, inputs=json.loads(raw))
        await peer.send({"kind": "partial", "text": "tentative", "tokens": 1})
        await peer.send(registry.signed_result(payload), payload)

    registry = FakeRegistry(node)
    *partials, outcome = run_exchange(registry)

    assert seen["header"] == {"kind": "input", "job_id": registry.job["id"], "assignment_id": registry.assignment_id}
    assert seen["inputs"] == INPUTS
    assert partials == [Partial("A", "tentative", 1)]
    assert isinstance(outcome, Outcome) and outcome.job["state"] == "settled" and outcome.fallback_reason == ""
    assert [(r.assignment_id, r.payload, r.checked) for r in outcome.received] == [(registry.assignment_id, payload, True)]
    delivered = [body for method, path, body in registry.calls if path.endswith("/delivered/")]
    # Once: a confirmation that overtakes the node's commit is kept by the registry, not retried.
    assert delivered == [{"assignment_id": registry.assignment_id, "result_hash": protocol.sha256_hex(payload)}]
    assert not any(path.endswith("/inputs/") for _, path, _ in registry.calls)


def test_bytes_that_are_not_the_signed_ones_are_disputed_with_their_own_hash() -> None:
    payload = b"\x00" * 8

    async def node(registry: FakeRegistry, ws: ServerConnection, entry: dict[str, Any]) -> None:
        peer, _, _ = await node_answers(registry, ws)
        header = registry.signed_result(payload)
        await peer.send(header, b"\x01" * 8)  # other bytes than the header names

    registry = FakeRegistry(node)
    (outcome,) = run_exchange(registry)
    assert isinstance(outcome, Outcome) and [r.checked for r in outcome.received] == [False]
    delivered = [body for _, path, body in registry.calls if path.endswith("/delivered/")]
    assert delivered == [{"assignment_id": registry.assignment_id, "result_hash": protocol.sha256_hex(b"\x01" * 8)}]


def test_a_node_that_never_answers_makes_it_send_the_input_through_the_relay() -> None:
    async def silent(registry: FakeRegistry, ws: ServerConnection, entry: dict[str, Any]) -> None:
        assert json.loads(await ws.recv())["type"] == "rtc_offer"  # never answered
        await asyncio.sleep(1.0)
        registry.job["state"] = "settled"
        await ws.send(json.dumps({"type": "job_state", "job_id": registry.job["id"], "state": "settled"}))

    registry = FakeRegistry(silent)
    (outcome,) = run_exchange(registry, connect_timeout=0.5)
    assert isinstance(outcome, Outcome) and outcome.fallback_reason == "no_peer_connection" and outcome.received == []
    relayed = [body for method, path, body in registry.calls if path.endswith("/inputs/")]
    assert relayed == [{"inputs": INPUTS, "reason": "no_peer_connection"}]


def test_without_relay_fallback_a_node_that_never_answers_is_an_error() -> None:
    async def silent(registry: FakeRegistry, ws: ServerConnection, entry: dict[str, Any]) -> None:
        await ws.recv()

    registry = FakeRegistry(silent)
    with pytest.raises(PeerRefused) as refused:
        run_exchange(registry, connect_timeout=0.5, relay_fallback=False)
    assert refused.value.code == "no_peer_connection"
    assert not any(path.endswith("/inputs/") for _, path, _ in registry.calls)


def test_a_content_policy_refusal_ends_the_exchange_with_the_rule() -> None:
    async def refusing(registry: FakeRegistry, ws: ServerConnection, entry: dict[str, Any]) -> None:
        peer, _, _ = await node_answers(registry, ws)
        await peer.send({"kind": "input_refused", "reason": "content_policy:example.weapons"})

    registry = FakeRegistry(refusing)
    with pytest.raises(PeerRefused) as refused:
        run_exchange(registry)
    assert (refused.value.status, refused.value.code) == (422, "content_policy")
    assert "example.weapons" in refused.value.detail

"""The node's half of peer-to-peer jobs (docs/p2p.md) against the fake registry of
test_node_client.py, with a real `bim_core.peer.Peer` in the test playing the user: the
node answers the user's offer, reads the input from the channel, checks it against the
contract, sends the result back over the channel and only a signed commit to the registry,
uploads the bytes when asked, runs a job whose input came through the relay as a relay job,
and gives up on a job whose input never comes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from bim_core import families, protocol
from bim_core.peer import Peer, allow_loopback
from bim_node import p2p
from bim_node.p2p import PeerJobs, ResultStore
from bim_node.session import NodeClient
from tests.contributor.test_node_client import (
    CHECKSUM,
    ENV,
    KEY,
    NODE_ID,
    SUBNET,
    WAIT_S,
    FakeRegistry,
    fake_vectors,
    handshake,
    job_message,
    receive,
    run,
    send,
)
from tests.contributor.test_node_text_client import FakeTextRunner, text_job

pytestmark = pytest.mark.timeout(60)

POLICY = {"id": "p2p-test", "version": 1, "input": {"blocked": [{"name": "example.weapons", "patterns": [r"\bsarin\b"]}]}}


@pytest.fixture(autouse=True, scope="module")
def _loopback() -> None:
    # The test's user peer and the node's run on this machine's loopback only.
    allow_loopback()


@asynccontextmanager
async def p2p_node(compute: Any = None, *, task_type: str = "embedding", **options: Any) -> AsyncIterator[tuple[FakeRegistry, NodeClient]]:
    calls: list[dict[str, Any]] = []

    def embed(inputs: dict[str, Any]) -> np.ndarray:
        calls.append(inputs)
        return fake_vectors(inputs["texts"])

    registry = FakeRegistry()
    async with serve(registry.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = NodeClient(
            ws_url=f"ws://127.0.0.1:{port}/ws/node/?token=tok",
            node_id=NODE_ID,
            key=KEY,
            subnet=SUBNET,
            model_checksum=CHECKSUM,
            env=ENV,
            compute=compute or embed,
            task_type=task_type,
            handshake_timeout_s=WAIT_S,
            **options,
        )
        client.calls = calls  # type: ignore[attr-defined]
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            yield registry, client
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), WAIT_S)


def p2p_offer(relay_job: dict[str, Any], *, summary: dict[str, int] | None = None, policy: Any = None, deadline_s: float = 30) -> tuple[dict[str, Any], dict[str, Any]]:
    """A relay job message made peer to peer as registry.dispatch sends it: the contract
    names the transport and the input summary, the message has ICE servers and no inputs.
    Returns (the offer, the inputs the user holds)."""
    inputs = relay_job.pop("inputs")
    family = families.family_for(relay_job["contract"]["task_type"])
    contract = {
        **relay_job["contract"],
        "transport": "p2p",
        "input_summary": summary or family.input_summary(inputs),
        **({"policy": policy} if policy else {}),
    }
    offer = {
        **relay_job,
        "contract": contract,
        "contract_hash": protocol.contract_hash(contract),
        "transport": "p2p",
        "ice_servers": [],
        "deadline": (datetime.now(UTC) + timedelta(seconds=deadline_s)).isoformat(),
    }
    return offer, inputs


async def user_connects(ws: ServerConnection, offer: dict[str, Any]) -> Peer:
    """The user's side of signalling, the registry relaying: offer, the node's answer, open."""
    user = Peer([])
    description = await user.offer()
    await send(ws, {"type": "rtc_offer", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "sdp": description["sdp"]})
    answer = await receive(ws)
    assert answer["type"] == "rtc_answer" and answer["assignment_id"] == offer["assignment_id"]
    await user.accept_answer({"type": "answer", "sdp": answer["sdp"]})
    await user.wait_open(WAIT_S)
    return user


async def send_input(user: Peer, offer: dict[str, Any], inputs: Any) -> None:
    raw = inputs if isinstance(inputs, bytes) else protocol.canonical_json(inputs)
    await user.send({"kind": "input", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"]}, raw)


def test_it_takes_the_input_over_the_channel_and_sends_the_registry_only_a_commit() -> None:
    async def scenario() -> None:
        async with p2p_node() as (registry, client):
            ws = await registry.next_connection()
            hello = await handshake(ws)
            offer, inputs = p2p_offer(job_message(["a private sentence", "and another one"]))
            await send(ws, offer)
            user = await user_connects(ws, offer)
            await send_input(user, offer, inputs)

            header, payload = await user.receive(WAIT_S)
            commit = await receive(ws)

            # The user got the bytes, signed as a relay result would be.
            assert header["kind"] == "result"
            assert (header["job_id"], header["assignment_id"]) == (offer["job_id"], offer["assignment_id"])
            assert header["result_hash"] == protocol.sha256_hex(payload) and header["encoding"] == "f32le"
            assert header["input_hash"] == offer["contract"]["input_hash"] and header["shape"] == [2, 384]
            signed = protocol.result_message(
                job_id=offer["job_id"], assignment_id=offer["assignment_id"], contract_hash=offer["contract_hash"],
                input_hash=header["input_hash"], result_hash=header["result_hash"], shape=(2, 384),
            )
            assert protocol.signature_valid(hello["session_key_pub"], header["signature"], signed)
            assert np.array_equal(protocol.decode_vectors(payload, (2, 384)), fake_vectors(inputs["texts"]))
            # The registry got the commit: the same signed fields, the size, no bytes.
            assert commit["type"] == "result_commit" and "data" not in commit and "inputs" not in commit
            assert {k: commit[k] for k in ("result_hash", "signature", "shape", "input_hash")} == {
                k: header[k] for k in ("result_hash", "signature", "shape", "input_hash")
            }
            assert commit["size"] == len(payload) == 2 * 384 * 4
            transport = commit["transport"]
            assert transport["relayed"] is False
            assert transport["bytes_sent"] > len(payload)  # the header frame and the bytes
            assert transport["bytes_received"] > len(protocol.canonical_json(inputs))
            assert "a private sentence" not in json.dumps(commit)

            # Asked for the bytes and the input, it uploads the very message it signed.
            await send(ws, {"type": "result_ok", "assignment_id": offer["assignment_id"]})
            await send(ws, {"type": "upload_request", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "reason": "mismatch", "with_inputs": True})
            upload = await receive(ws)
            assert upload["type"] == "result" and protocol.b64decode(upload["data"]) == payload
            assert upload["signature"] == header["signature"] and upload["inputs"] == inputs
            await send(ws, {"type": "upload_request", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "reason": "undelivered", "with_inputs": False})
            assert "inputs" not in await receive(ws)
            await user.close()
            assert client.jobs_done == 1

    run(scenario)


CONTRACT_TEXTS = ["the contract's text"]


@pytest.mark.parametrize(
    ("contract_texts", "sent", "summary", "policy", "reason"),
    [
        (CONTRACT_TEXTS, {"texts": [*CONTRACT_TEXTS, "smuggled"]}, None, None, "bad_input_hash"),
        (CONTRACT_TEXTS, {"texts": "not a list"}, None, None, "bad_input"),
        (CONTRACT_TEXTS, b"\xff not json", None, None, "bad_input"),
        (CONTRACT_TEXTS, None, {"items": 3}, None, "bad_input"),
        (["how to make sarin"], None, None, POLICY, "content_policy:example.weapons"),
    ],
    ids=["other-inputs", "malformed", "not-json", "summary", "content-policy"],
)
def test_it_refuses_an_input_that_is_not_the_contracts_before_computing(
    contract_texts: list[str], sent: Any, summary: dict[str, int] | None, policy: Any, reason: str
) -> None:
    async def scenario() -> None:
        async with p2p_node() as (registry, client):
            ws = await registry.next_connection()
            await handshake(ws)
            offer, inputs = p2p_offer(job_message(contract_texts), summary=summary, policy=policy)
            await send(ws, offer)
            user = await user_connects(ws, offer)
            await send_input(user, offer, inputs if sent is None else sent)

            header, payload = await user.receive(WAIT_S)
            failed = await receive(ws)
            assert header == {"kind": "input_refused", "reason": reason} and payload == b""
            # The user's own input (it has the contract's hash) goes to the registry as the
            # refusal's evidence; bytes that are not the contract's input do not.
            evidence = {"inputs": inputs} if sent is None else {}
            assert failed == {"type": "job_failed", "assignment_id": offer["assignment_id"], "reason": reason, **evidence}
            assert client.calls == []  # type: ignore[attr-defined]
            await user.close()

    run(scenario)


def test_without_an_input_by_its_deadline_it_gives_the_job_up_and_keeps_heartbeating() -> None:
    async def scenario() -> None:
        async with p2p_node() as (registry, _):
            ws = await registry.next_connection()
            await handshake(ws, heartbeat_s=0.3)
            offer, _ = p2p_offer(job_message(["nobody brings this"]), deadline_s=1.5)
            await send(ws, offer)
            seen = []
            while (message := await receive(ws, skip=()))["type"] == "heartbeat":
                seen.append(message)
            assert message == {"type": "job_failed", "assignment_id": offer["assignment_id"], "reason": "input_not_received"}
            assert len(seen) >= 3  # the socket stayed alive while it waited

    run(scenario)


def test_with_webrtc_off_it_ignores_offers_and_runs_the_relayed_input_as_a_relay_job() -> None:
    async def scenario() -> None:
        async with p2p_node(webrtc=False) as (registry, client):
            ws = await registry.next_connection()
            hello = await handshake(ws)
            offer, inputs = p2p_offer(job_message(["sent through the registry"]))
            await send(ws, offer)
            user = Peer([])
            description = await user.offer()
            await send(ws, {"type": "rtc_offer", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "sdp": description["sdp"]})
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)  # no answer
            await user.close()

            await send(ws, {"type": "job_inputs", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "inputs": inputs})
            result = await receive(ws)
            assert result["type"] == "result"
            payload = protocol.b64decode(result["data"])
            assert np.array_equal(protocol.decode_vectors(payload, (1, 384)), fake_vectors(inputs["texts"]))
            signed = protocol.result_message(
                job_id=offer["job_id"], assignment_id=offer["assignment_id"], contract_hash=offer["contract_hash"],
                input_hash=offer["contract"]["input_hash"], result_hash=protocol.sha256_hex(payload), shape=(1, 384),
            )
            assert protocol.signature_valid(hello["session_key_pub"], result["signature"], signed)
            assert client.calls == [inputs]  # type: ignore[attr-defined]

    run(scenario)


def test_relayed_inputs_are_checked_against_the_contract_too() -> None:
    async def scenario() -> None:
        async with p2p_node(webrtc=False) as (registry, client):
            ws = await registry.next_connection()
            await handshake(ws)
            offer, inputs = p2p_offer(job_message(["the real text"]))
            await send(ws, offer)
            await send(ws, {"type": "job_inputs", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "inputs": {"texts": ["another"]}})
            assert await receive(ws) == {"type": "job_failed", "assignment_id": offer["assignment_id"], "reason": "bad_input_hash"}
            assert client.calls == []  # type: ignore[attr-defined]

    run(scenario)


def test_a_text_over_the_contracts_max_chars_is_refused_with_the_input_as_evidence() -> None:
    async def scenario() -> None:
        async with p2p_node(webrtc=False) as (registry, client):
            ws = await registry.next_connection()
            await handshake(ws)
            relay_job = job_message(["twelve chars"])
            relay_job["contract"]["limits"] = {**relay_job["contract"]["limits"], "max_chars": 11}
            offer, inputs = p2p_offer(relay_job)
            await send(ws, offer)
            await send(ws, {"type": "job_inputs", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "inputs": inputs})
            refused = await receive(ws)
            assert (refused["reason"], refused["inputs"]) == ("bad_input", inputs)
            assert client.calls == []  # type: ignore[attr-defined]

    run(scenario)


def test_streamed_text_goes_to_the_user_over_the_channel_not_to_the_registry() -> None:
    async def scenario() -> None:
        async with p2p_node(FakeTextRunner(), task_type="text") as (registry, _):
            ws = await registry.next_connection()
            await handshake(ws)
            offer, inputs = p2p_offer(text_job({"temperature": 0, "top_p": 1, "seed": 0}))
            await send(ws, offer)
            user = await user_connects(ws, offer)
            await send_input(user, offer, inputs)
            partials = []
            while (frame := await user.receive(WAIT_S))[0]["kind"] == "partial":
                partials.append(frame[0])
            header, payload = frame
            commit = await receive(ws)  # the first thing the registry hears of it: no partial before

            assert len(partials) >= 2 and all(set(p) == {"kind", "text", "tokens"} for p in partials)
            assert "Hello there, friend.".startswith(partials[-1]["text"])
            assert header["kind"] == "result" and json.loads(payload)["text"] == "Hello there, friend."
            assert commit["type"] == "result_commit" and commit["shape"] == [6] and commit["size"] == len(payload)
            await user.close()

    run(scenario)


def test_a_user_that_leaves_before_the_result_still_gets_it_committed_for_an_upload() -> None:
    def slow_embed(inputs: dict[str, Any]) -> np.ndarray:
        time.sleep(0.5)  # the user is gone by the time it is done
        return fake_vectors(inputs["texts"])

    async def scenario() -> None:
        async with p2p_node(slow_embed) as (registry, _):
            ws = await registry.next_connection()
            await handshake(ws)
            offer, inputs = p2p_offer(job_message(["gone before the answer"]))
            await send(ws, offer)
            user = await user_connects(ws, offer)
            await send_input(user, offer, inputs)
            await asyncio.sleep(0.1)
            await user.close()
            commit = await receive(ws)
            assert commit["type"] == "result_commit" and commit["size"] == 384 * 4
            await send(ws, {"type": "upload_request", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "reason": "undelivered", "with_inputs": False})
            upload = await receive(ws)
            assert upload["type"] == "result" and protocol.sha256_hex(protocol.b64decode(upload["data"])) == commit["result_hash"]

    run(scenario)


def test_the_upload_store_keeps_results_for_a_while_within_a_byte_budget() -> None:
    now = [0.0]
    store = ResultStore(max_bytes=1000, ttl_s=60, clock=lambda: now[0])
    inputs = {"texts": ["x"]}  # 15 bytes of canonical JSON
    assert store.put("a", {"data": "A" * 400}, inputs) and store.put("b", {"data": "B" * 400}, inputs)
    assert store.get("a") == ({"data": "A" * 400}, inputs) and store.bytes == 830
    store.put("c", {"data": "C" * 400}, inputs)  # over the budget: the oldest goes
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None
    assert not store.put("d", {"data": "D" * 2000}, inputs) and store.get("d") is None
    now[0] = 61.0
    assert store.get("b") is None and len(store) == 0 and store.bytes == 0


def test_an_offer_whose_contract_is_not_peer_to_peer_is_refused() -> None:
    async def scenario() -> None:
        async with p2p_node() as (registry, _):
            ws = await registry.next_connection()
            await handshake(ws)
            relay_job = job_message(["text"])
            relay_job.pop("inputs")
            offer = {**relay_job, "transport": "p2p", "ice_servers": [], "assignment_id": str(uuid.uuid4())}
            await send(ws, offer)
            assert await receive(ws) == {"type": "job_failed", "assignment_id": offer["assignment_id"], "reason": "bad_message"}

    run(scenario)


def test_an_offer_that_arrives_before_its_job_is_answered_once_the_job_comes() -> None:
    # The registry lists a job's nodes to its user as soon as the assignment is committed:
    # the user's offer can overtake the job on its way to the node (bench/bandwidth.py met it
    # about once in a hundred jobs, four at a time). Dropped, both ends waited in vain.
    async def scenario() -> None:
        async with p2p_node() as (registry, client):
            ws = await registry.next_connection()
            await handshake(ws)
            offer, inputs = p2p_offer(job_message(["overtaken"]))
            user = Peer([])
            description = await user.offer()
            await send(ws, {"type": "rtc_offer", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "sdp": description["sdp"]})
            await asyncio.sleep(0.2)  # the node has read the offer: no job waits for it yet
            await send(ws, offer)
            answer = await receive(ws)
            assert answer["type"] == "rtc_answer" and answer["assignment_id"] == offer["assignment_id"]
            await user.accept_answer({"type": "answer", "sdp": answer["sdp"]})
            await user.wait_open(WAIT_S)
            await send_input(user, offer, inputs)
            header, _ = await user.receive(WAIT_S)
            assert header["kind"] == "result"
            assert (await receive(ws))["type"] == "result_commit"
            assert client.calls == [inputs]  # type: ignore[attr-defined]
            await user.close()

    run(scenario)


def test_early_offers_are_kept_only_so_many_the_oldest_dropped() -> None:
    peer_jobs = PeerJobs(model=None, send=_no_send, enqueue=_no_send, store=ResultStore())  # type: ignore[arg-type]
    for index in range(p2p.EARLY_OFFERS + 5):
        peer_jobs.on_rtc_offer({"type": "rtc_offer", "assignment_id": f"a{index}", "sdp": "v=0"})
    assert len(peer_jobs.early_offers) == p2p.EARLY_OFFERS
    assert "a4" not in peer_jobs.early_offers and "a5" in peer_jobs.early_offers


async def _no_send(_: Any) -> None:
    return None


def test_the_user_closing_mid_negotiation_leaves_the_job_waiting_for_another_offer() -> None:
    async def scenario() -> None:
        async with p2p_node(p2p_connect_timeout_s=1.0) as (registry, _):
            ws = await registry.next_connection()
            await handshake(ws)
            offer, inputs = p2p_offer(job_message(["second try"]))
            await send(ws, offer)
            # An offer whose answer the user never applies: the node's channel does not open.
            abandoned = Peer([])
            description = await abandoned.offer()
            await send(ws, {"type": "rtc_offer", "job_id": offer["job_id"], "assignment_id": offer["assignment_id"], "sdp": description["sdp"]})
            assert (await receive(ws))["type"] == "rtc_answer"
            await abandoned.close()
            await asyncio.sleep(1.2)  # past the node's connect timeout
            user = await user_connects(ws, offer)
            await send_input(user, offer, inputs)
            header, _ = await user.receive(WAIT_S)
            assert header["kind"] == "result"
            assert (await receive(ws))["type"] == "result_commit"
            await user.close()

    run(scenario)

"""The node's websocket client against a fake registry written with `websockets.serve`.

The fake registry plays the server side of docs/protocol.md from the test body
itself, so every check on what the node sent is a plain assert in the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from bim_core import protocol
from bim_node.session import NodeClient, NodeFatalError

pytestmark = pytest.mark.timeout(30)

CHECKSUM = "ab" * 32
TOKENIZER_CHECKSUM = "12" * 32
USER_KEY_PUB = protocol.public_key_b64(protocol.new_private_key())
SUBNET = "minilm-embed"
NODE_ID = str(uuid.UUID(int=7))
ENV = {
    "os": "linux",
    "runtime": "onnxruntime-1.32.0",
    "backend": "cpu",
    "gpu_family": "none",
    "cpu_count": 1,
}
WAIT_S = 5.0


def fake_vectors(texts: list[str]) -> np.ndarray:
    """A trivial, deterministic stand-in for the model."""
    return np.array([np.arange(384) / 384 + len(t) for t in texts], dtype=np.float32)


class FakeRegistry:
    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        await self.connections.put(ws)
        await ws.wait_closed()  # the test body drives the socket

    async def next_connection(self) -> ServerConnection:
        return await asyncio.wait_for(self.connections.get(), WAIT_S)


class Harness:
    def __init__(self, registry: FakeRegistry, client: NodeClient, task: asyncio.Task[None]):
        self.registry = registry
        self.client = client
        self.task = task


@asynccontextmanager
async def running_node(
    compute: Callable[[list[str]], np.ndarray] = fake_vectors, **options: Any
) -> AsyncIterator[Harness]:
    """A node whose runner embeds with `compute(texts)`."""
    registry = FakeRegistry()
    async with serve(registry.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        settings: dict[str, Any] = {
            "handshake_timeout_s": WAIT_S,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
        }
        client = NodeClient(
            ws_url=f"ws://127.0.0.1:{port}/ws/node/?token=tok",
            node_id=NODE_ID,
            key=KEY,
            subnet=SUBNET,
            model_checksum=CHECKSUM,
            tokenizer_checksum=TOKENIZER_CHECKSUM,
            env=ENV,
            compute=lambda inputs: compute(inputs["texts"]),
            **(settings | options),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            yield Harness(registry, client, task)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), WAIT_S)


KEY = protocol.new_private_key()
KEY_PUB = protocol.public_key_b64(KEY)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


async def receive(
    ws: ServerConnection, *, skip: tuple[str, ...] = ("heartbeat",)
) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        if message["type"] not in skip:
            return message


async def send(ws: ServerConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def handshake(ws: ServerConnection, *, heartbeat_s: float = 10) -> dict[str, Any]:
    """Challenge, check the hello, welcome, expect ready; returns the hello."""
    nonce = protocol.b64encode(os.urandom(32))
    await send(ws, {"type": "challenge", "nonce": nonce, "protocol": protocol.PROTOCOL_VERSION})
    hello = await receive(ws)
    assert hello["type"] == "hello"
    assert hello["node_id"] == NODE_ID
    assert hello["env"] == ENV
    signed = protocol.hello_message(
        node_id=NODE_ID, nonce=nonce, session_key_pub=hello["session_key_pub"]
    )
    assert protocol.signature_valid(KEY_PUB, hello["signature"], signed)
    await send(
        ws,
        {
            "type": "welcome",
            "node_id": NODE_ID,
            "heartbeat_s": heartbeat_s,
            "subnets": [
                {
                    "slug": SUBNET,
                    "model_checksum": CHECKSUM,
                    "manifest_url": "/api/v1/subnets/minilm-embed/manifest/",
                }
            ],
        },
    )
    ready = await receive(ws)
    assert ready == {
        "type": "ready",
        "subnet": SUBNET,
        "model_checksum": CHECKSUM,
        "max_concurrent": 1,
    }
    await send(ws, {"type": "ready_ok", "subnet": SUBNET})
    return hello


def job_message(
    texts: list[str],
    *,
    deadline: datetime | None = None,
    checksum: str = CHECKSUM,
    tokenizer_checksum: str = TOKENIZER_CHECKSUM,
) -> dict[str, Any]:
    """A job as the registry sends it (contract fields as bim_core.contracts builds them)."""
    job_id = str(uuid.uuid4())
    inputs = {"texts": texts}
    contract = {
        "job_id": job_id,
        "subnet": SUBNET,
        "task_type": "embedding",
        "model_id": "all-MiniLM-L6-v2-onnx-int8",
        "model_checksum": checksum,
        "runtime_id": "onnxruntime-1.32-cpu",
        "tokenizer_checksum": tokenizer_checksum,
        "determinism": {},
        "tolerances": {"cosine_min": 0.9999},
        "preprocessing": {"max_tokens": 256, "pooling": "mean", "normalize": True},
        "input_hash": protocol.input_hash(inputs),
        "limits": {"max_items": 32, "latency_ms": 30000},
        "session_key_pub": USER_KEY_PUB,
    }
    deadline = deadline or datetime.now(UTC) + timedelta(seconds=30)
    return {
        "type": "job",
        "assignment_id": str(uuid.uuid4()),
        "job_id": job_id,
        "role": "A",
        "contract": contract,
        "contract_hash": protocol.contract_hash(contract),
        "inputs": inputs,
        "deadline": deadline.isoformat(),
    }


def assert_valid_result(result: dict[str, Any], job: dict[str, Any], session_key_pub: str) -> None:
    assert result["type"] == "result"
    assert result["assignment_id"] == job["assignment_id"]
    assert result["job_id"] == job["job_id"]
    assert result["input_hash"] == protocol.input_hash(job["inputs"])
    payload = protocol.b64decode(result["data"])
    assert result["result_hash"] == protocol.sha256_hex(payload)
    assert result["encoding"] == "f32le"
    texts = job["inputs"]["texts"]
    assert result["shape"] == [len(texts), 384]
    vectors = protocol.decode_vectors(payload, (len(texts), 384))
    assert np.array_equal(vectors, fake_vectors(texts))
    assert isinstance(result["elapsed_ms"], int)
    signed = protocol.result_message(
        job_id=job["job_id"],
        assignment_id=job["assignment_id"],
        contract_hash=job["contract_hash"],
        input_hash=result["input_hash"],
        result_hash=result["result_hash"],
        shape=(len(texts), 384),
    )
    assert protocol.signature_valid(session_key_pub, result["signature"], signed)
    # Signed by the session key, which the long-term key certified, not by the long-term key.
    assert not protocol.signature_valid(KEY_PUB, result["signature"], signed)


def test_it_signs_its_hello_and_its_results() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            assert ws.request is not None
            assert ws.request.path == "/ws/node/?token=tok"
            hello = await handshake(ws)
            await asyncio.wait_for(node.client.ready.wait(), WAIT_S)

            job = job_message(["first text", "second, longer text", "³ unicode ✓"])
            await send(ws, job)
            result = await receive(ws)

            assert_valid_result(result, job, hello["session_key_pub"])
            await send(ws, {"type": "result_ok", "assignment_id": job["assignment_id"]})
            assert node.client.jobs_done == 1

    run(scenario)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda job: job["inputs"]["texts"].append("smuggled"), "bad_input_hash"),
        (lambda job: job["contract"]["limits"].update(latency_ms=1), "bad_contract_hash"),
        (lambda job: job.update(inputs={"texts": "not a list"}), "bad_message"),
    ],
    ids=["inputs", "contract", "malformed"],
)
def test_it_refuses_a_job_that_does_not_match_its_contract(
    tamper: Callable[[dict[str, Any]], None], reason: str
) -> None:
    calls: list[list[str]] = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return fake_vectors(texts)

    async def scenario() -> None:
        async with running_node(compute) as node:
            ws = await node.registry.next_connection()
            await handshake(ws)
            job = job_message(["hello"])
            tamper(job)
            await send(ws, job)

            reply = await receive(ws)

            assert reply == {
                "type": "job_failed",
                "assignment_id": job["assignment_id"],
                "reason": reason,
            }
            assert calls == []

    run(scenario)


@pytest.mark.parametrize("pin", ["checksum", "tokenizer_checksum"])
def test_it_refuses_a_job_for_another_model_build(pin: str) -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            await handshake(ws)
            other = "cd" * 32  # hashes stay consistent: only the build differs
            if pin == "checksum":
                job = job_message(["hello"], checksum=other)
            else:
                job = job_message(["hello"], tokenizer_checksum=other)
            await send(ws, job)
            reply = await receive(ws)
            assert reply["type"] == "job_failed"
            assert reply["reason"] == "model_mismatch"

    run(scenario)


def test_it_refuses_a_job_past_its_deadline() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            await handshake(ws)
            job = job_message(["hello"], deadline=datetime.now(UTC) - timedelta(1))
            await send(ws, job)
            reply = await receive(ws)
            assert reply["type"] == "job_failed"
            assert reply["reason"] == "deadline_passed"

    run(scenario)


def test_heartbeats_keep_flowing_while_it_computes() -> None:
    release = threading.Event()

    def slow_compute(texts: list[str]) -> np.ndarray:
        release.wait(WAIT_S)
        return fake_vectors(texts)

    async def scenario() -> None:
        async with running_node(slow_compute) as node:
            ws = await node.registry.next_connection()
            hello = await handshake(ws, heartbeat_s=0.05)
            job = job_message(["slow"])
            await send(ws, job)

            beats = [await receive(ws, skip=()) for _ in range(3)]
            assert beats == [{"type": "heartbeat"}] * 3
            release.set()
            result = await receive(ws)
            assert_valid_result(result, job, hello["session_key_pub"])

    try:
        run(scenario)
    finally:
        release.set()


def test_a_cancelled_job_is_dropped_before_it_starts() -> None:
    release = threading.Event()
    calls: list[list[str]] = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        release.wait(WAIT_S)
        return fake_vectors(texts)

    async def scenario() -> None:
        async with running_node(compute) as node:
            ws = await node.registry.next_connection()
            hello = await handshake(ws)
            running, queued, after = (job_message([t]) for t in ("one", "two", "three"))
            await send(ws, running)
            await send(ws, queued)
            await send(ws, {"type": "cancel", "assignment_id": queued["assignment_id"]})
            await send(ws, after)
            await asyncio.sleep(0.05)  # let the cancel land before the worker frees up
            release.set()

            results = [await receive(ws), await receive(ws)]

            assert [r["assignment_id"] for r in results] == [
                running["assignment_id"],
                after["assignment_id"],
            ]
            assert_valid_result(results[1], after, hello["session_key_pub"])
            assert calls == [["one"], ["three"]]

    try:
        run(scenario)
    finally:
        release.set()


def test_it_reconnects_with_a_fresh_session_key() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            first = await node.registry.next_connection()
            first_hello = await handshake(first)
            await first.close(1011, "registry restarting")

            second = await node.registry.next_connection()
            second_hello = await handshake(second)
            assert second_hello["session_key_pub"] != first_hello["session_key_pub"]

            job = job_message(["after the reconnect"])
            await send(second, job)
            assert_valid_result(await receive(second), job, second_hello["session_key_pub"])

    run(scenario)


@pytest.mark.parametrize(
    "code",
    [protocol.CLOSE_UNAUTHENTICATED, protocol.CLOSE_AUTH_FAILED, protocol.CLOSE_UNKNOWN_NODE],
)
def test_it_stops_when_the_registry_rejects_its_identity(code: int) -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            if code != protocol.CLOSE_UNAUTHENTICATED:  # a bad token closes before the challenge
                nonce = protocol.b64encode(os.urandom(32))
                await send(ws, {"type": "challenge", "nonce": nonce, "protocol": "bim/1"})
                await receive(ws)
            await ws.close(code, "no")

            with pytest.raises(NodeFatalError, match=str(code)):
                await asyncio.wait_for(asyncio.shield(node.task), WAIT_S)

    run(scenario)


def test_it_stops_when_the_subnet_model_changed() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            nonce = protocol.b64encode(os.urandom(32))
            await send(ws, {"type": "challenge", "nonce": nonce, "protocol": "bim/1"})
            await receive(ws)
            await send(
                ws,
                {
                    "type": "welcome",
                    "node_id": NODE_ID,
                    "heartbeat_s": 10,
                    "subnets": [
                        {"slug": SUBNET, "model_checksum": "ef" * 32, "manifest_url": "/m/"}
                    ],
                },
            )

            with pytest.raises(NodeFatalError, match="restart the node"):
                await asyncio.wait_for(asyncio.shield(node.task), WAIT_S)

    run(scenario)


def test_it_retries_after_a_handshake_timeout() -> None:
    async def scenario() -> None:
        async with running_node(handshake_timeout_s=0.2) as node:
            silent = await node.registry.next_connection()  # never sends a challenge
            retry = await node.registry.next_connection()
            await handshake(retry)
            await asyncio.wait_for(silent.wait_closed(), WAIT_S)

    run(scenario)


def test_it_closes_cleanly_when_stopped() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            await handshake(ws)
        # running_node set stop and awaited the client: the close was a normal one.
        await asyncio.wait_for(ws.wait_closed(), WAIT_S)
        assert ws.close_code == 1000
        assert node.task.done()
        assert node.task.exception() is None

    run(scenario)


def test_after_a_reconnect_it_gives_back_the_work_welcome_lists() -> None:
    """Its queue died with the old socket: the work the registry still counts as this
    node's goes back at once (`lost_on_reconnect`), so no user waits for its deadline."""

    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            nonce = protocol.b64encode(os.urandom(32))
            await send(ws, {"type": "challenge", "nonce": nonce, "protocol": protocol.PROTOCOL_VERSION})
            assert (await receive(ws))["type"] == "hello"
            listed = ["7d4b2f6e-0000-4000-8000-000000000001", "7d4b2f6e-0000-4000-8000-000000000002"]
            await send(
                ws,
                {
                    "type": "welcome",
                    "node_id": NODE_ID,
                    "heartbeat_s": 10,
                    "subnets": [{"slug": SUBNET, "model_checksum": CHECKSUM, "manifest_url": "/m/"}],
                    "assignments": listed,
                },
            )
            given_back = [await receive(ws), await receive(ws)]
            assert given_back == [
                {"type": "job_failed", "assignment_id": a, "reason": protocol.LOST_ON_RECONNECT} for a in listed
            ]
            assert (await receive(ws))["type"] == "ready"

    run(scenario)

"""The node client with a text runner: it streams `partial` messages while generating,
signs the canonical JSON result, and refuses contracts its runner cannot run
deterministically. A fake runner stands in for the model (tests/contributor/
test_node_generator.py runs the real one)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from websockets.asyncio.server import serve

from bim_core import families, protocol
from bim_core.runtimes.generator import determinism_refusal
from bim_node.session import NodeClient
from tests.contributor.test_node_client import (
    CHECKSUM,
    ENV,
    KEY,
    NODE_ID,
    SUBNET,
    USER_KEY_PUB,
    WAIT_S,
    FakeRegistry,
    handshake,
    receive,
    run,
    send,
)

TEXT = families.family_for("text")
WORDS = ["Hello", " there", ",", " friend", "."]


class FakeTextRunner:
    """Generates WORDS one per ~0.12 s (slower than the client's partial interval)."""

    streams = True

    def contract_refusal(self, contract: dict[str, Any]) -> str:
        return determinism_refusal(contract.get("determinism") or {})

    def __call__(self, inputs: dict[str, Any], on_partial: Any = None) -> dict[str, Any]:
        for count in range(1, len(WORDS) + 1):
            time.sleep(0.12)
            if on_partial is not None:
                on_partial("".join(WORDS[:count]), count)
        return {"finish": "stop", "text": "".join(WORDS), "tokens": [*range(100, 100 + len(WORDS)), 2]}


@asynccontextmanager
async def text_node() -> AsyncIterator[FakeRegistry]:
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
            compute=FakeTextRunner(),
            task_type="text",
            handshake_timeout_s=WAIT_S,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            yield registry
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), WAIT_S)


def text_job(determinism: dict[str, Any]) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    inputs = {"prompt": "Say hello.", "max_tokens": 16}
    contract = {
        "job_id": job_id,
        "subnet": SUBNET,
        "task_type": "text",
        "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct:gguf-q4_1",
        "model_checksum": CHECKSUM,
        "runtime_id": "llama-cpp-python-0.3.36/ggml-native-off",
        "tokenizer_checksum": "",
        "determinism": determinism,
        "tolerances": {"edit_distance": 0.1, "logit_margin": 1.5},
        "preprocessing": {"max_new_tokens": 256},
        "input_hash": protocol.input_hash(inputs),
        "limits": {"max_items": 1, "latency_ms": 30000},
        "session_key_pub": USER_KEY_PUB,
    }
    return {
        "type": "job",
        "assignment_id": str(uuid.uuid4()),
        "job_id": job_id,
        "role": "A",
        "contract": contract,
        "contract_hash": protocol.contract_hash(contract),
        "inputs": inputs,
        "deadline": (datetime.now(UTC) + timedelta(seconds=30)).isoformat(),
    }


def test_it_streams_the_text_so_far_and_then_signs_the_result() -> None:
    async def scenario() -> None:
        async with text_node() as registry:
            ws = await registry.next_connection()
            hello = await handshake(ws)
            job = text_job({"temperature": 0, "top_p": 1, "seed": 0})
            await send(ws, job)
            partials = []
            while (message := await receive(ws))["type"] == "partial":
                partials.append(message)
            assert len(partials) >= 2
            assert all(p["assignment_id"] == job["assignment_id"] and p["job_id"] == job["job_id"] for p in partials)
            texts = [p["text"] for p in partials]
            assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
            assert [p["tokens"] for p in partials] == sorted(p["tokens"] for p in partials)

            assert message["type"] == "result" and message["encoding"] == "json"
            payload = protocol.b64decode(message["data"])
            result = TEXT.decode_result(payload, tuple(message["shape"]), job["inputs"])
            assert result["text"] == "Hello there, friend." and message["shape"] == [6]
            signed = protocol.result_message(
                job_id=job["job_id"],
                assignment_id=job["assignment_id"],
                contract_hash=job["contract_hash"],
                input_hash=job["contract"]["input_hash"],
                result_hash=protocol.sha256_hex(payload),
                shape=(6,),
            )
            assert protocol.signature_valid(hello["session_key_pub"], message["signature"], signed)

    run(scenario)


def test_it_refuses_sampled_decoding() -> None:
    async def scenario() -> None:
        async with text_node() as registry:
            ws = await registry.next_connection()
            await handshake(ws)
            job = text_job({"temperature": 0.8, "top_p": 0.95, "seed": 0})
            await send(ws, job)
            reply = await receive(ws)
            assert reply == {"type": "job_failed", "assignment_id": job["assignment_id"], "reason": "unsupported_contract"}

    run(scenario)

"""docs/protocol.md's worked example is what bim_core.protocol computes, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bim_core import protocol

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
NODE_ID = "5b0f3c1e-8d2a-4f6b-9c3d-2e7a1b4c5d6e"
JOB_ID = "0c9d7e4a-3b21-4f8e-a6d5-1f2e3d4c5b6a"
ASSIGNMENT_ID = "7e6d5c4b-3a29-4187-9f6e-5d4c3b2a1908"


def test_the_worked_example_matches_the_reference_implementation() -> None:
    long_term = protocol.private_key_from_b64(protocol.b64encode(bytes(range(32))))
    session = protocol.private_key_from_b64(protocol.b64encode(bytes(range(32, 64))))
    user = protocol.private_key_from_b64(protocol.b64encode(bytes(range(64, 96))))
    nonce = protocol.b64encode(b"\xa5" * 32)
    session_pub = protocol.public_key_b64(session)

    hello = protocol.hello_message(node_id=NODE_ID, nonce=nonce, session_key_pub=session_pub)
    inputs = {"texts": ["hello world", "Grüße aus Köln"]}
    input_hash = protocol.input_hash(inputs)
    contract = {
        "job_id": JOB_ID,
        "subnet": "minilm-embed",
        "task_type": "embedding",
        "model_id": "all-MiniLM-L6-v2-onnx-int8",
        "model_checksum": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        "runtime_id": "onnxruntime-1.32-cpu",
        "tokenizer_checksum": "be" * 32,
        "determinism": {"temperature": 0, "top_p": 1, "seed": 0},
        "tolerances": {"cosine_min": 0.9999, "norm_tolerance": 0.001},
        "preprocessing": {"max_tokens": 256, "pooling": "mean", "normalize": True},
        "input_hash": input_hash,
        "limits": {"max_items": 32, "latency_ms": 30000},
        "session_key_pub": protocol.public_key_b64(user),
    }
    contract_hash = protocol.contract_hash(contract)
    vectors = np.array([[0.5, -0.25, 1.0, 0.0], [0.125, 2.0, -1.5, 0.75]], dtype=np.float32)
    payload = protocol.encode_vectors(vectors)
    result_hash = protocol.sha256_hex(payload)
    result = protocol.result_message(
        job_id=JOB_ID,
        assignment_id=ASSIGNMENT_ID,
        contract_hash=contract_hash,
        input_hash=input_hash,
        result_hash=result_hash,
        shape=(2, 4),
    )

    expected = [
        protocol.private_key_to_b64(long_term),
        protocol.public_key_b64(long_term),
        session_pub,
        nonce,
        hello.decode("ascii").replace("\n", "\\n"),
        f"{len(hello)} ASCII bytes",
        protocol.sign(long_term, hello),
        protocol.canonical_json(inputs).decode("utf-8"),
        f"({len(protocol.canonical_json(inputs))} bytes;",
        f"input_hash = {input_hash}",
        protocol.canonical_json(contract).decode("utf-8"),
        f"contract_hash = {contract_hash}",
        " ".join(payload.hex()[i : i + 8] for i in range(0, len(payload.hex()), 8)),
        f"data        = {protocol.b64encode(payload)}",
        f"result_hash = {result_hash}",
        result.decode("ascii").replace("\n", "\\n"),
        protocol.sign(session, result),
    ]
    missing = [value for value in expected if value not in DOC]
    assert missing == []

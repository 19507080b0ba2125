"""Ground truth for the browser's protocol module: the bytes bim_core/protocol.py and
bim_core/families.py produce, written to tests/js/fixtures/protocol.json for
tests/js/protocol.test.mjs (Node's test runner) to reproduce with
contributor/static/js/protocol.js.

Run from the repository root after changing either side: `.venv/bin/python -m tests.js.make_fixtures`.
tests/test_js_fixtures.py fails while the committed file differs from what this writes.
No Django: the two modules are the pure core. Keys come from fixed seeds, so the Ed25519
signatures (deterministic, RFC 8032) are part of the ground truth too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bim_core import families, protocol

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "protocol.json"

LONG_TERM_SEED = bytes(range(32))
SESSION_SEED = bytes(range(32, 64))
NODE_ID = "5b0f3c1e-8d2a-4f6b-9c3d-2e7a1b4c5d6e"
ASSIGNMENT_ID = "7e6d5c4b-3a29-4187-9f6e-5d4c3b2a1908"

# Values whose canonical JSON Python and JavaScript must print alike (docs/protocol.md §1.1):
# non-ASCII as itself, escapes, key order, nesting, and the numbers the registry may hash
# (integers, and non-integral floats with 1e-4 <= |x| < 1e16).
CANONICAL_CASES: list[Any] = [
    {"texts": ["hello world", "Grüße aus Köln"]},
    {"texts": ["東京 🚀 \"quoted\" back\\slash", "tab\tnew\nline\r\u0001\u001f\u007f", "\u2028\u2029 é\u0301 \U0001f600"]},
    {"b": 1, "a": [True, False, None], "B": {"z": [], "y": {}}, "_": "", "a1": "x", "A": -0.125},
    {"numbers": [0, -1, 2**53 - 1, -(2**53) + 1, 0.9999, 0.001, -2.5, 1234.5678, 1e-4, 1234567890123.25, 0.1, 1 / 3]},
    [[], {}, [[]], "", "\u00ff\u0100\uffff"],
    "a lone string with \"quotes\", \\ and \u00e9",
    12345,
]

WORKED_EXAMPLE_INPUTS = {"texts": ["hello world", "Grüße aus Köln"]}
WORKED_EXAMPLE_VECTORS = [[0.5, -0.25, 1.0, 0.0], [0.125, 2.0, -1.5, 0.75]]


def _key(seed: bytes):
    return protocol.private_key_from_b64(protocol.b64encode(seed))


def worked_example_contract() -> dict[str, Any]:
    """The contract of docs/protocol.md §8."""
    return {
        "job_id": "0c9d7e4a-3b21-4f8e-a6d5-1f2e3d4c5b6a",
        "subnet": "minilm-embed",
        "task_type": "embedding",
        "model_id": "all-MiniLM-L6-v2-onnx-int8",
        "model_checksum": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        "runtime_id": "onnxruntime-1.32-cpu",
        "tokenizer_checksum": "be" * 32,
        "determinism": {"temperature": 0, "top_p": 1, "seed": 0},
        "tolerances": {"cosine_min": 0.9999, "norm_tolerance": 0.001},
        "preprocessing": {"max_tokens": 256, "pooling": "mean", "normalize": True},
        "input_hash": protocol.input_hash(WORKED_EXAMPLE_INPUTS),
        "limits": {"max_items": 32, "latency_ms": 30000},
        "session_key_pub": protocol.public_key_b64(_key(bytes(range(64, 96)))),
    }


def _canonical_cases() -> list[dict[str, Any]]:
    return [
        {"value": value, "canonical": protocol.canonical_json(value).decode("utf-8"), "sha256": protocol.sha256_hex(protocol.canonical_json(value))}
        for value in CANONICAL_CASES
    ]


def _base64_cases() -> dict[str, Any]:
    # Every padding length, every byte value, and one long enough for the browser to encode
    # in slices (0x8000 bytes each).
    small = [b"", b"\x00", b"\xff\xfe", b"abc", b"\xfb\xff", bytes(range(256))]
    pattern, times = bytes(range(256)), 300
    return {
        "cases": [{"hex": data.hex(), "b64": protocol.b64encode(data)} for data in small],
        "long": {"repeat_hex": pattern.hex(), "times": times, "b64_sha256": protocol.sha256_hex(protocol.b64encode(pattern * times).encode("ascii"))},
    }


def _f32le_cases() -> list[dict[str, Any]]:
    """float32 payloads of rank 1 to 4, with values float32 must round (0.1, 1/3) and -0."""
    rng = np.random.default_rng(7)
    arrays = [
        np.array([0.1, 1 / 3, -0.0, 1e-8, 65504.0, -3.25], dtype=np.float64),
        np.array(WORKED_EXAMPLE_VECTORS, dtype=np.float64),
        rng.standard_normal((2, 3, 4)),
        rng.standard_normal((1, 2, 2, 3)),
    ]
    return [
        {
            "values": array.ravel().tolist(),
            "shape": list(array.shape),
            "sha256": protocol.sha256_hex(protocol.encode_vectors(array)),
            "head_hex": protocol.encode_vectors(array)[:16].hex(),
        }
        for array in arrays
    ]


def _result_cases(session) -> list[dict[str, Any]]:
    """One result per task family, so of rank 2 (embedding), 1 (text) and 3 (image), each
    with its result message and session signature. `result` is the form the browser's
    families take (contributor/static/js/protocol.js FAMILIES)."""
    text = {"finish": "stop", "text": "Grüße 🚀 \"q\" \\ \u2028\ttab", "tokens": [1, 42, 151, 0, 49152, 2]}
    pixels = (np.arange(4 * 6 * 3, dtype=np.int64) * 37 % 256).astype(np.uint8).reshape(4, 6, 3)
    pixels[0, 0] = (0, 255, 128)
    cases = [
        ("embedding", WORKED_EXAMPLE_INPUTS, np.array(WORKED_EXAMPLE_VECTORS, dtype=np.float32),
         {"data": [v for row in WORKED_EXAMPLE_VECTORS for v in row], "rows": 2, "dim": 4}),
        ("text", {"prompt": "Say hi in German.", "max_tokens": 6}, text, text),
        ("image", {"image": "iVBORw0KGgo="}, pixels, {"data": pixels.ravel().tolist(), "height": 4, "width": 6}),
    ]
    out = []
    for task_type, inputs, result, browser_form in cases:
        family = families.family_for(task_type)
        contract = worked_example_contract() if task_type == "embedding" else {
            "job_id": f"0c9d7e4a-3b21-4f8e-a6d5-1f2e3d4c5b{len(out):02x}",
            "task_type": task_type,
            "input_hash": protocol.input_hash(inputs),
        }
        payload, shape = family.encode_result(result)
        fields = {
            "job_id": contract["job_id"],
            "assignment_id": ASSIGNMENT_ID,
            "contract_hash": protocol.contract_hash(contract),
            "input_hash": contract["input_hash"],
            "result_hash": protocol.sha256_hex(payload),
            "shape": list(shape),
        }
        signed = protocol.result_message(**{**fields, "shape": shape})
        out.append(
            {
                "task_type": task_type,
                "encoding": family.encoding,
                "result": browser_form,
                "data": protocol.b64encode(payload),
                "fields": fields,
                "message": signed.decode("ascii"),
                "signature": protocol.sign(session, signed),
            }
        )
    return out


def fixtures() -> dict[str, Any]:
    long_term, session = _key(LONG_TERM_SEED), _key(SESSION_SEED)
    session_pub = protocol.public_key_b64(session)
    nonce = protocol.b64encode(b"\xa5" * 32)
    hello = protocol.hello_message(node_id=NODE_ID, nonce=nonce, session_key_pub=session_pub)
    contract = worked_example_contract()
    benchmark = {
        "benchmark_id": "0f0e0d0c-0b0a-4908-8706-050403020100",
        "result_hash": protocol.sha256_hex(protocol.encode_vectors(np.array(WORKED_EXAMPLE_VECTORS, dtype=np.float32))),
        "shape": [2, 4],
        "timings_ms": [12.345, 7.0, 0.5, 1234.567, 0.001],
    }
    benchmark_signed = protocol.benchmark_message(**{**benchmark, "shape": tuple(benchmark["shape"])})
    return {
        "about": "Written by tests/js/make_fixtures.py from bim_core; do not edit by hand.",
        "keys": {
            "long_term_seed_hex": LONG_TERM_SEED.hex(),
            "session_seed_hex": SESSION_SEED.hex(),
            "long_term_public": protocol.public_key_b64(long_term),
            "session_public": session_pub,
        },
        "canonical_json": _canonical_cases(),
        "hashes": {
            "inputs": WORKED_EXAMPLE_INPUTS,
            "input_hash": protocol.input_hash(WORKED_EXAMPLE_INPUTS),
            "contract": contract,
            "contract_hash": protocol.contract_hash(contract),
        },
        "base64": _base64_cases(),
        "f32le": _f32le_cases(),
        "hello": {
            "node_id": NODE_ID,
            "nonce": nonce,
            "session_key_pub": session_pub,
            "message": hello.decode("ascii"),
            "signature": protocol.sign(long_term, hello),
        },
        "results": _result_cases(session),
        "benchmark": {**benchmark, "message": benchmark_signed.decode("ascii"), "signature": protocol.sign(session, benchmark_signed)},
    }


def fixture_text() -> str:
    """The fixture file's exact contents."""
    return json.dumps(fixtures(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(fixture_text(), encoding="utf-8")
    print(f"wrote {FIXTURE}")

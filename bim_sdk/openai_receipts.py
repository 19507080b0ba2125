"""Verifying what BIM's OpenAI-compatible API answered: its `bim` field carries the job's
contract and receipt, and the result is in OpenAI's shape; these rebuild the job the
receipt speaks of and check it as `verify_receipt` does (registry signature, node
signatures, the result's hash)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .receipts import verify_receipt


def verify_embeddings_response(response: dict[str, Any], *, registry_key: str, texts: list[str]) -> np.ndarray:
    """The vectors of a `/v1/embeddings` answer (a dict: the `openai` client's
    `response.model_dump()`), once its receipt verifies for these texts; ReceiptInvalid otherwise."""
    bim = response["bim"]
    rows = sorted(response["data"], key=lambda item: item["index"])
    vectors = [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4").tolist()
        if isinstance(item["embedding"], str)
        else item["embedding"]
        for item in rows
    ]
    job = {
        "state": bim["state"],
        "contract": bim["contract"],
        "receipt": bim["receipt"],
        "result": {"vectors": vectors, "result_hash": bim["receipt"].get("result_hash")},
    }
    return verify_receipt(job, registry_key=registry_key, inputs={"texts": texts})


def verify_text_response(bim: dict[str, Any], *, registry_key: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The verified generation ({"text", "tokens", "finish"}) a chat or completions answer's
    `bim` field carries (the last chunk's, when streamed), once its receipt verifies for this
    prompt; ReceiptInvalid otherwise."""
    job = {
        "state": bim["state"],
        "contract": bim["contract"],
        "receipt": bim["receipt"],
        "result": {**bim["result"], "result_hash": bim["receipt"].get("result_hash")},
    }
    return verify_receipt(job, registry_key=registry_key, inputs={"prompt": prompt, "max_tokens": max_tokens})

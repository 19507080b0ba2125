"""The job contract of the paper's Appendix A: built by the registry, validated, immutable.

Pure module (no Django). The schema is Appendix A's, made strict where the sketch was
loose: hashes are 64 hex digits, keys base64, numbers bounded, unknown fields refused.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import jsonschema_rs

from .content_policy import PolicyInvalid, validate_policy

CONTRACT_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "BIMJobContract",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "job_id": {"type": "string", "minLength": 1},
        "subnet": {"type": "string", "minLength": 1},
        "task_type": {"enum": ["embedding", "text", "image"]},
        "model_id": {"type": "string", "minLength": 1},
        "model_checksum": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "runtime_id": {"type": "string", "minLength": 1},
        "tokenizer_checksum": {"type": "string", "pattern": "^([0-9a-f]{64})?$"},
        "determinism": {
            "type": "object",
            "properties": {
                "temperature": {"type": "number", "minimum": 0},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "seed": {"type": "integer"},
            },
        },
        "tolerances": {
            "type": "object",
            "properties": {
                # Text: normalized edit distance over token ids (0..1, recorded, see
                # verify_text_pair) and the re-scoring rule's logit margin.
                "edit_distance": {"type": "number", "minimum": 0, "maximum": 1},
                "logit_margin": {"type": "number", "minimum": 0},
                "cosine_min": {"type": "number", "minimum": -1, "maximum": 1},
                "ssim_min": {"type": "number", "minimum": -1, "maximum": 1},
                "phash_max": {"type": "integer", "minimum": 0, "maximum": 64},
                "norm_tolerance": {"type": "number", "minimum": 0},
            },
        },
        "input_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "limits": {
            "type": "object",
            "properties": {
                "max_items": {"type": "integer", "minimum": 1},
                # A peer-to-peer job's per-item size limit, which its nodes check (the registry
                # never sees the input); the subnet's max_chars_per_item.
                "max_chars": {"type": "integer", "minimum": 1},
                "max_tokens": {"type": "integer", "minimum": 1},
                "max_steps": {"type": "integer", "minimum": 1},
                "latency_ms": {"type": "integer", "minimum": 1},
            },
            "required": ["latency_ms"],
        },
        "preprocessing": {"type": "object"},
        "session_key_pub": {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$"},
        # A trusted subnet's job: only registry-operated nodes run it (paper §9). Absent in
        # contracts from before it existed, which read as false.
        "trusted": {"type": "boolean"},
        # The subnet's content policy when the job was submitted (bim_core.content_policy,
        # which validate_contract applies); absent from contracts of a subnet without one.
        "policy": {"type": "object", "required": ["id", "version"]},
        # The subnet's model license in force at submit; receipts repeat it. Absent from
        # contracts written before licenses were named.
        "license": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "slug": {"type": "string", "minLength": 1},
                "version": {"type": "string", "minLength": 1},
            },
            "required": ["slug", "version"],
        },
        # How the input and results travel (docs/p2p.md): "p2p" between the user and the
        # nodes, the registry holding only `input_summary`; absent for the registry relay.
        "transport": {"enum": ["p2p"]},
        "input_summary": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 1},
            "minProperties": 1,
        },
    },
    "dependencies": {"transport": ["input_summary"], "input_summary": ["transport"]},
    "required": [
        "job_id",
        "model_id",
        "model_checksum",
        "runtime_id",
        "determinism",
        "tolerances",
        "input_hash",
        "limits",
        "session_key_pub",
    ],
}

_VALIDATOR = jsonschema.Draft7Validator(CONTRACT_SCHEMA)
# The same schema compiled by jsonschema-rs: 3 µs a contract against jsonschema's 150, on
# every job the registry builds and every offer a node reads. It only answers "valid";
# anything else is judged again by jsonschema, whose messages (and whose Python regex
# semantics) the refusals keep, so the fast path can make no contract pass that would not.
_FAST_VALIDATOR = jsonschema_rs.Draft7Validator(CONTRACT_SCHEMA)


class ContractInvalid(ValueError):
    pass


def _browser_safe_numbers(value: Any, *, fix: bool, where: str = "") -> Any:
    """The contract hash is taken over canonical JSON, and JavaScript prints 1.0 as "1" and
    1e-05 as "0.00001": only numbers both languages print alike may appear (docs/protocol.md).
    With `fix`, integral floats become ints; otherwise they are refused like exponents."""
    if isinstance(value, dict):
        return {k: _browser_safe_numbers(v, fix=fix, where=f"{where}/{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_browser_safe_numbers(v, fix=fix, where=f"{where}/{i}") for i, v in enumerate(value)]
    if isinstance(value, float) and (value.is_integer() or "e" in repr(value)):
        if fix and value.is_integer():
            return int(value)
        raise ContractInvalid(f"contract {where}: {value!r} prints differently in JavaScript")
    return value


def validate_contract(contract: dict[str, Any]) -> None:
    errors = [] if _FAST_VALIDATOR.is_valid(contract) else sorted(_VALIDATOR.iter_errors(contract), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(root)"
        raise ContractInvalid(f"contract {where}: {first.message}")
    _browser_safe_numbers(contract, fix=False)
    if "policy" in contract:
        try:
            validate_policy(contract["policy"])
        except PolicyInvalid as exc:
            raise ContractInvalid(f"contract policy: {exc}") from None


def build_contract(
    *,
    job_id: str,
    subnet: str,
    task_type: str,
    model_id: str,
    model_checksum: str,
    runtime_id: str,
    tokenizer_checksum: str,
    determinism: dict[str, Any],
    tolerances: dict[str, Any],
    preprocessing: dict[str, Any],
    input_hash: str,
    limits: dict[str, int],
    session_key_pub: str,
    trusted: bool = False,
    policy: dict[str, Any] | None = None,
    license: dict[str, str] | None = None,
    input_summary: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The contract of a new job; `input_summary` makes it a peer-to-peer one (the registry
    holds no inputs, docs/p2p.md)."""
    contract = _browser_safe_numbers(
        {
        "job_id": job_id,
        "subnet": subnet,
        "task_type": task_type,
        "model_id": model_id,
        "model_checksum": model_checksum,
        "runtime_id": runtime_id,
        "tokenizer_checksum": tokenizer_checksum,
        "determinism": determinism,
        "tolerances": tolerances,
        "preprocessing": preprocessing,
        "input_hash": input_hash,
        "limits": limits,
        "session_key_pub": session_key_pub,
        "trusted": bool(trusted),
        **({"policy": policy} if policy else {}),
        **({"license": license} if license else {}),
        **({"transport": "p2p", "input_summary": input_summary} if input_summary is not None else {}),
        },
        fix=True,
    )
    validate_contract(contract)
    return contract

"""The wire protocol shared by the registry and every contributor node.

Pure module: no Django import, so the headless node (`bim_node`) and
the benchmarks use exactly the bytes the registry checks. The browser
contributor re-implements these few functions in JavaScript; `docs/protocol.md`
is the normative description and this module its reference implementation.

Signed messages are short ASCII byte strings, one field per line, so that
WebCrypto (Ed25519) can produce them without a JSON canonicalizer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

PROTOCOL_VERSION = "bim/1"
VECTOR_ENCODING = "f32le"

# Websocket close codes (4000-4999 are free for applications, RFC 6455 §7.4.2).
CLOSE_AUTH_FAILED = 4001  # hello signature did not verify
CLOSE_UNAUTHENTICATED = 4401  # no valid API token (query ?token=) or session cookie
CLOSE_UNKNOWN_NODE = 4003  # node id unknown, or not owned by the token's user
CLOSE_PROTOCOL_ERROR = 4400  # malformed frame or message before hello
CLOSE_HELLO_TIMEOUT = 4408  # no hello within the allowed time
CLOSE_REPLACED = 4409  # the same node connected again; the older socket goes
CLOSE_BANNED = 4403  # the node is banned (too many strikes) until the time in the close reason
CLOSE_SESSION_ENDED = 4410  # the registry ended this session (it heard nothing for too long): reconnect
CLOSE_SESSION_KEY_REUSED = 4002  # hello with a session key this or any node used before
CLOSE_RATE_LIMITED = 4429  # kept sending faster than the connection's message rate
# RFC 6455's own code for a message the endpoint will not take, sent by the transport
# (bim_site.serve sets daphne's limit to the registry's); an ASGI application may not send
# it, so the consumer's own check, behind a transport with a larger limit, sends 4009.
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_MESSAGE_TOO_BIG_APP = 4009

# The `job_failed` reason for work `welcome` lists that the node no longer holds.
LOST_ON_RECONNECT = "lost_on_reconnect"
# The `job_failed` reason for an offer of a subnet the registry said (`subnet_state`) is
# paused: it arrived after the pause, and costs the node nothing.
SUBNET_PAUSED = "subnet_paused"

# Bounds on the numbers a node sends: outside them a message is refused with
# `out_of_range` (the database would refuse them anyway, with a crash instead of a code).
MAX_CONCURRENT = 1024  # `ready.max_concurrent`
JOBS_PER_BATCH_MAX = 100  # jobs in one POST /api/v1/jobs/batch/ (one transaction, one ledger posting)
MAX_ELAPSED_MS = 86_400_000  # `result.elapsed_ms`: a day
MAX_TIMING_MS = 3_600_000.0  # one benchmark run: an hour
MAX_TIMING_RUNS = 100

# Per-message errors answered with {"type": "error", "code": ...}; the socket stays open.
ERROR_CODES = (
    "bad_message",
    "bad_signature",
    "bad_input_hash",
    "bad_result_hash",
    "bad_shape",
    "not_assigned",
    "deadline_passed",
    "already_submitted",
    "model_mismatch",
    "unknown_subnet",
    "license_not_accepted",
    "benchmark_refused",
    "busy",
    "out_of_range",
    "rate_limited",
    "node_not_trusted",
    "not_found",
)


class ProtocolError(Exception):
    """A message a peer sent is invalid; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces: the bytes every hash is taken over."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict standard base64; raises ProtocolError on anything else."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError, AttributeError) as exc:
        raise ProtocolError("bad_message", "invalid base64") from exc


def input_hash(inputs: dict[str, Any]) -> str:
    """The contract's `input_hash`: SHA-256 of the canonical JSON of the job inputs."""
    return sha256_hex(canonical_json(inputs))


def contract_hash(contract: dict[str, Any]) -> str:
    return sha256_hex(canonical_json(contract))


def encode_vectors(vectors: np.ndarray) -> bytes:
    """Row-major little-endian float32: 4 bytes per value, no header (shape travels apart)."""
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def decode_vectors(payload: bytes, shape: tuple[int, int]) -> np.ndarray:
    rows, dim = shape
    if rows <= 0 or dim <= 0 or len(payload) != rows * dim * 4:
        raise ProtocolError("bad_shape", f"{len(payload)} bytes do not hold {rows}x{dim} float32")
    vectors = np.frombuffer(payload, dtype="<f4").reshape(rows, dim)
    if not np.all(np.isfinite(vectors)):
        raise ProtocolError("bad_message", "vectors contain NaN or infinity")
    return vectors


def shape_text(shape: tuple[int, ...]) -> str:
    """A result's shape as signed: its dimensions joined by "x" ("7x384" for seven
    embeddings, "512x512x3" for an image)."""
    return "x".join(str(int(d)) for d in shape)


def parse_shape(raw: Any) -> tuple[int, ...]:
    """A shape from a message: a list of 1 to 4 positive integers."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= 4:
        raise ProtocolError("bad_message", "shape must be a list of 1 to 4 integers")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in raw):
        raise ProtocolError("bad_message", "shape must hold positive integers")
    return tuple(raw)


def _number(raw: Any, name: str, *, integer: bool) -> int | float:
    """A JSON number of the right kind: booleans, strings, NaN and infinities are not."""
    kinds = (int,) if integer else (int, float)
    if isinstance(raw, bool) or not isinstance(raw, kinds) or (isinstance(raw, float) and not math.isfinite(raw)):
        raise ProtocolError("bad_message", f"{name} must be a finite {'integer' if integer else 'number'}")
    return raw


def parse_int(raw: Any, name: str, *, low: int, high: int) -> int:
    value = int(_number(raw, name, integer=True))
    if not low <= value <= high:
        raise ProtocolError("out_of_range", f"{name} must be between {low} and {high}")
    return value


def parse_elapsed_ms(raw: Any) -> int:
    """`result.elapsed_ms`: optional, a number of milliseconds from 0 to a day."""
    if raw is None:
        return 0
    value = _number(raw, "elapsed_ms", integer=False)
    if not 0 <= value <= MAX_ELAPSED_MS:
        raise ProtocolError("out_of_range", f"elapsed_ms must be between 0 and {MAX_ELAPSED_MS}")
    return int(value)


def parse_timings(raw: Any) -> list[float]:
    """`benchmark_result.timings_ms`: 1 to 100 run times, each above 0 and at most an hour.
    A NaN or infinite time is out of range, not a malformed message: json.loads reads them."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TIMING_RUNS:
        raise ProtocolError("bad_message", f"timings_ms must be a list of 1 to {MAX_TIMING_RUNS} numbers")
    timings = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError("bad_message", "timings_ms must hold numbers")
        if not (math.isfinite(value) and 0 < value <= MAX_TIMING_MS):
            raise ProtocolError("out_of_range", f"each timing must be above 0 and at most {MAX_TIMING_MS:.0f} ms")
        timings.append(float(value))
    return timings


class TokenBucket:
    """A per-connection message budget: `rate` tokens a second up to `burst`. A message
    over budget is refused and still costs a token, so the bucket goes into debt; a sender
    that keeps flooding reaches `-burst` and is cut off (`exhausted`)."""

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, now

    def take(self, now: float, cost: float = 1) -> bool:
        """Whether a message costing `cost` tokens is within budget; a refused one still
        costs one token (refusing it was work too)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        allowed = self.tokens >= cost
        self.tokens -= cost if allowed else 1
        return allowed

    @property
    def exhausted(self) -> bool:
        return self.tokens <= -self.burst


def hello_message(*, node_id: str, nonce: str, session_key_pub: str) -> bytes:
    """Signed by the node's long-term key: proves the key and certifies the session key."""
    return f"{PROTOCOL_VERSION}/hello\n{node_id}\n{nonce}\n{session_key_pub}\n".encode("ascii")


def result_message(
    *,
    job_id: str,
    assignment_id: str,
    contract_hash: str,
    input_hash: str,
    result_hash: str,
    shape: tuple[int, ...],
) -> bytes:
    """Signed by the node's session key for every result it returns."""
    return (
        f"{PROTOCOL_VERSION}/result\n{job_id}\n{assignment_id}\n{contract_hash}\n"
        f"{input_hash}\n{result_hash}\n{shape_text(shape)}\n"
    ).encode("ascii")


def benchmark_message(
    *, benchmark_id: str, result_hash: str, shape: tuple[int, ...], timings_ms: list[float]
) -> bytes:
    """Signed by the node's session key for a benchmark answer; timings in milliseconds
    with three decimals, comma-separated, in the order the runs happened."""
    timings = ",".join(f"{t:.3f}" for t in timings_ms)
    return (
        f"{PROTOCOL_VERSION}/benchmark\n{benchmark_id}\n{result_hash}\n{shape_text(shape)}\n{timings}\n"
    ).encode("ascii")


def receipt_message(receipt_body: dict[str, Any]) -> bytes:
    """Signed by the registry's key: the canonical JSON of a receipt without its signature."""
    return canonical_json(receipt_body)


def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return b64encode(raw)


def private_key_to_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return b64encode(raw)


def private_key_from_b64(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b64decode(text))


def sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    return b64encode(private_key.sign(message))


def parse_public_key(text: str) -> Ed25519PublicKey:
    raw = b64decode(text)
    if len(raw) != 32:
        raise ProtocolError("bad_message", "an Ed25519 public key is 32 raw bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def canonical_public_key(text: str) -> str:
    """The one spelling of a public key: strict base64 still lets the two unused trailing
    bits vary, so a key is stored and compared as the base64 of its decoded bytes."""
    raw = b64decode(text)
    parse_public_key(text)
    return b64encode(raw)


def signature_valid(public_key: str, signature: str, message: bytes) -> bool:
    try:
        sig = b64decode(signature)
        parse_public_key(public_key).verify(sig, message)
    except (InvalidSignature, ProtocolError, ValueError):
        return False
    return True

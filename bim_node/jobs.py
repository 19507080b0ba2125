"""What a node does with one job, apart from the socket: check it before spending compute,
call the runner, and encode and sign the result exactly as the registry will check it.

`ServedModel` knows nothing about models either: it is given a `compute(inputs) -> result`
callable and the subnet's task family (`bim_core.families`), so the real runners, a
benchmark's simulated node and the tests' trivial functions are all checked alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bim_core import content_policy, families, protocol
from bim_core.job_inputs import InputInvalid, SubnetLimits

ComputeFn = Callable[..., Any]
# Streamed text (`partial`) at most this often per job: a few tokens per message.
PARTIAL_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Job:
    assignment_id: str
    job_id: str
    role: str
    contract: dict[str, Any]
    contract_hash: str
    inputs: dict[str, Any]
    deadline: datetime | None
    # "p2p": the inputs came (or will come) from the user over a data channel, and the result
    # goes back the same way with a commit to the registry (docs/p2p.md).
    transport: str = "relay"


@dataclass(frozen=True)
class BenchmarkTask:
    """The registry's benchmark: fixed inputs, run `runs` times, timed one by one."""

    benchmark_id: str
    inputs: dict[str, Any]
    runs: int


class JobRefusedError(Exception):
    """The node will not run this job; `reason` is the `job_failed` reason it answers."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ServedModel:
    """The model a node serves: its runner, task family and the checksums contracts pin."""

    compute: ComputeFn
    family: families.TaskFamily
    checksum: str
    tokenizer_checksum: str | None = None

    def check_job(self, message: dict[str, Any]) -> Job:
        """Everything a node can check before spending compute on a relay job (its inputs
        came with the offer), in the order docs/protocol.md §4.4 lists."""
        contract, contract_hash, job_id = self._offer_fields(message)
        inputs = message.get("inputs")
        if not isinstance(inputs, dict):
            raise JobRefusedError("bad_message", "job lacks contract, contract_hash, job_id or inputs")
        self._check_inputs(contract, inputs, reason="bad_message")
        self._check_input_hash(contract, inputs, reason="bad_message")
        self._check_contract(contract, contract_hash, job_id)
        self._check_model(contract)
        self._check_policy(contract)
        self._check_input_policy(contract, inputs)
        return self._job(message, contract, contract_hash, job_id, inputs)

    def check_p2p_offer(self, message: dict[str, Any]) -> Job:
        """A peer-to-peer offer (docs/p2p.md): everything but its inputs, which the user brings
        over a data channel later (`check_p2p_inputs`). The Job's inputs are empty."""
        contract, contract_hash, job_id = self._offer_fields(message)
        self._check_contract(contract, contract_hash, job_id)
        summary = contract.get("input_summary")
        if contract.get("transport") != "p2p" or not isinstance(summary, dict) or set(summary) != self.family.summary_keys:
            raise JobRefusedError("bad_message", "a peer-to-peer offer's contract has transport p2p and its input_summary")
        self._check_model(contract)
        self._check_policy(contract)
        return self._job(message, contract, contract_hash, job_id, {}, transport="p2p")

    def check_p2p_inputs(self, job: Job, inputs: Any) -> Job:
        """The inputs a peer-to-peer job's user sent: the contract's (hash and summary), of the
        family's form, within the contract's content policy. Refusals carry the reasons
        docs/p2p.md §3 names (`bad_input`, `bad_input_hash`, `content_policy:<rule>`)."""
        if not isinstance(inputs, dict):
            raise JobRefusedError("bad_input", "inputs are not a JSON object")
        self._check_inputs(job.contract, inputs, reason="bad_input")
        self._check_input_hash(job.contract, inputs, reason="bad_input")
        if self.family.input_summary(inputs) != job.contract.get("input_summary"):
            raise JobRefusedError("bad_input", "inputs do not match contract.input_summary")
        self._check_input_policy(job.contract, inputs)
        return replace(job, inputs=inputs)

    def _offer_fields(self, message: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
        contract, contract_hash, job_id = message.get("contract"), message.get("contract_hash"), message.get("job_id")
        if not (isinstance(contract, dict) and isinstance(contract_hash, str) and isinstance(job_id, str)):
            raise JobRefusedError("bad_message", "job lacks contract, contract_hash, job_id or inputs")
        if contract.get("task_type", "embedding") != self.family.task_type:
            raise JobRefusedError("bad_message", f"this node runs {self.family.task_type} jobs")
        return contract, contract_hash, job_id

    @staticmethod
    def _job(
        message: dict[str, Any], contract: dict[str, Any], contract_hash: str, job_id: str, inputs: dict[str, Any],
        transport: str = "relay",
    ) -> Job:
        return Job(
            assignment_id=str(message["assignment_id"]),
            job_id=job_id,
            role=str(message.get("role", "")),
            contract=contract,
            contract_hash=contract_hash,
            inputs=inputs,
            deadline=parse_deadline(message.get("deadline")),
            transport=transport,
        )

    def _check_inputs(self, contract: dict[str, Any], inputs: dict[str, Any], *, reason: str) -> None:
        # The registry validated relay inputs against the subnet's limits; the node only
        # makes sure they have the family's shape before spending compute on them.
        limits = contract.get("limits") if isinstance(contract.get("limits"), dict) else {}
        try:
            self.family.validate_inputs(
                inputs,
                SubnetLimits(
                    max_items=int(limits.get("max_items") or 2**31),
                    # A peer-to-peer contract names the subnet's limit (its input never
                    # reached the registry); a relay one was checked by the registry.
                    max_chars=int(limits.get("max_chars") or 2**31),
                    preprocessing=dict(contract.get("preprocessing") or {}),
                ),
            )
        except (InputInvalid, TypeError, ValueError) as exc:
            raise JobRefusedError(reason, str(exc)) from None

    @staticmethod
    def _check_input_hash(contract: dict[str, Any], inputs: dict[str, Any], *, reason: str) -> None:
        try:
            inputs_hash = protocol.input_hash(inputs)
        except ValueError as exc:  # NaN, infinity or a lone surrogate: no canonical JSON
            raise JobRefusedError(reason, str(exc)) from exc
        if inputs_hash != contract.get("input_hash"):
            raise JobRefusedError("bad_input_hash", "inputs do not hash to contract.input_hash")

    @staticmethod
    def _check_contract(contract: dict[str, Any], contract_hash: str, job_id: str) -> None:
        try:
            actual_contract_hash = protocol.contract_hash(contract)
        except ValueError as exc:
            raise JobRefusedError("bad_message", str(exc)) from exc
        if actual_contract_hash != contract_hash:
            raise JobRefusedError("bad_contract_hash", "contract does not hash to contract_hash")
        if contract.get("job_id") != job_id:
            raise JobRefusedError("bad_message", "contract.job_id differs from job_id")

    @staticmethod
    def _check_policy(contract: dict[str, Any]) -> None:
        # The contract's content policy (docs/content-policy.md) must be one this node reads.
        policy = contract.get("policy")
        if policy is None:
            return
        try:
            content_policy.validate_policy(policy)
        except content_policy.PolicyInvalid as exc:
            raise JobRefusedError("unsupported_contract", f"contract policy: {exc}") from None

    @staticmethod
    def _check_input_policy(contract: dict[str, Any], inputs: dict[str, Any]) -> None:
        # A node may decline a job that breaks the policy's input rules, which costs it
        # nothing when the registry's own check agrees (for a peer-to-peer input the registry
        # never saw, the nodes' check is the only one).
        violation = content_policy.input_violation(contract.get("policy"), inputs)
        if violation is not None:
            raise JobRefusedError(violation.reason, violation.detail)

    def _check_model(self, contract: dict[str, Any]) -> None:
        if contract.get("model_checksum") != self.checksum:
            raise JobRefusedError("model_mismatch", "contract names another model")
        pinned_tokenizer = contract.get("tokenizer_checksum")
        if pinned_tokenizer and self.tokenizer_checksum and pinned_tokenizer != self.tokenizer_checksum:
            raise JobRefusedError("model_mismatch", "contract names another tokenizer")
        # A runner may refuse what it cannot run deterministically (text: sampled decoding).
        contract_refusal = getattr(self.compute, "contract_refusal", None)
        if contract_refusal is not None and (why := contract_refusal(contract)):
            raise JobRefusedError("unsupported_contract", why)

    def compute_call(self, job: Job, send: Callable[[dict[str, Any]], None]) -> Callable[[], Any]:
        """The compute call for a job. A streaming runner (text) also gets a callback that
        hands `send` the text so far as a `partial` message, at most every
        PARTIAL_INTERVAL_S; the runner calls it from the compute thread, so `send` must be
        safe to call from there."""
        if not getattr(self.compute, "streams", False):
            return functools.partial(self.compute, job.inputs)
        last_sent = 0.0

        def on_partial(text: str, tokens: int) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if now - last_sent < PARTIAL_INTERVAL_S:
                return
            last_sent = now
            send({"type": "partial", "assignment_id": job.assignment_id, "job_id": job.job_id, "text": text, "tokens": tokens})

        return functools.partial(self.compute, job.inputs, on_partial=on_partial)

    def encoded(self, result: Any, inputs: dict[str, Any]) -> tuple[bytes, tuple[int, ...]]:
        """The result as its family encodes it, checked the way the registry will check it,
        so a broken runner fails here instead of earning the node a refusal."""
        payload, shape = self.family.encode_result(result)
        try:
            self.family.decode_result(payload, shape, inputs)
        except protocol.ProtocolError as exc:
            raise ValueError(f"compute returned a result the registry would refuse: {exc}") from None
        return payload, shape

    def result_message(
        self, job: Job, payload: bytes, shape: tuple[int, ...], elapsed_ms: int, session_key: Ed25519PrivateKey
    ) -> dict[str, Any]:
        """The `result` message, signed with this connection's session key."""
        result_hash = protocol.sha256_hex(payload)
        input_hash = str(job.contract["input_hash"])
        signed = protocol.result_message(
            job_id=job.job_id,
            assignment_id=job.assignment_id,
            contract_hash=job.contract_hash,
            input_hash=input_hash,
            result_hash=result_hash,
            shape=shape,
        )
        return {
            "type": "result",
            "assignment_id": job.assignment_id,
            "job_id": job.job_id,
            "input_hash": input_hash,
            "result_hash": result_hash,
            "shape": list(shape),
            "encoding": self.family.encoding,
            "data": protocol.b64encode(payload),
            "elapsed_ms": elapsed_ms,
            "signature": protocol.sign(session_key, signed),
        }

    def benchmark_result_message(
        self, task: BenchmarkTask, result: Any, timings_ms: list[float], session_key: Ed25519PrivateKey
    ) -> dict[str, Any]:
        """The `benchmark_result` message for the last run's result, signed like a result."""
        payload, shape = self.encoded(result, task.inputs)
        result_hash = protocol.sha256_hex(payload)
        signed = protocol.benchmark_message(
            benchmark_id=task.benchmark_id, result_hash=result_hash, shape=shape, timings_ms=timings_ms
        )
        return {
            "type": "benchmark_result",
            "benchmark_id": task.benchmark_id,
            "timings_ms": timings_ms,
            "shape": list(shape),
            "encoding": self.family.encoding,
            "data": protocol.b64encode(payload),
            "result_hash": result_hash,
            "signature": protocol.sign(session_key, signed),
        }


def parse_deadline(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        deadline = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise JobRefusedError("bad_message", f"deadline {value!r} is not ISO 8601") from exc
    # A deadline without an offset is read as UTC, the registry's clock.
    return deadline if deadline.tzinfo else deadline.replace(tzinfo=UTC)

"""Receipt verification: everything a user can check about a settled job offline, given
the registry's public key and the job as the API returned it."""

from __future__ import annotations

from typing import Any

from bim_core import content_policy, families, protocol
from bim_core.job_inputs import InputInvalid


class ReceiptInvalid(Exception):
    pass


def verify_receipt(
    job: dict[str, Any],
    *,
    registry_key: str,
    inputs: dict[str, Any] | None = None,
    require_trusted: bool = False,
    payload: bytes | None = None,
) -> Any:
    """Check a settled job's receipt and return its result, decoded by the job's task family
    (vectors for embeddings). Raises ReceiptInvalid unless:
    the registry signed the receipt; the contract, inputs, policy version, license and result
    hash match it; the receipt's `trusted` is the contract's (and true, with `require_trusted`:
    the job ran on a trusted subnet, on registry-operated nodes only; `receipt_trusted`
    reports it); each node's long-term key certified its session key and that session key
    signed its result; and the nodes are distinct (two of them, unless the receipt's path is "solo" or "rescored").

    A peer-to-peer job's result may never have passed through the registry (its `result` is
    null, docs/p2p.md): then `payload`, the bytes received over a node's data channel, is
    checked instead: it must hash to the receipt's result_hash, which a signing node committed."""
    receipt = job.get("receipt") or {}
    if job.get("state") != "settled" or not receipt:
        raise ReceiptInvalid(f"job is {job.get('state')}, not settled")
    body = {k: v for k, v in receipt.items() if k != "registry_signature"}
    if body.get("registry_key") != registry_key:
        raise ReceiptInvalid("receipt is signed by another key than the registry's")
    if not protocol.signature_valid(registry_key, receipt.get("registry_signature", ""), protocol.receipt_message(body)):
        raise ReceiptInvalid("registry signature does not verify")
    if protocol.contract_hash(job["contract"]) != body["contract_hash"]:
        raise ReceiptInvalid("contract does not match the receipt's contract_hash")
    if inputs is not None and protocol.input_hash(inputs) != body["input_hash"]:
        raise ReceiptInvalid("these inputs are not the job's inputs")
    if job["contract"]["input_hash"] != body["input_hash"]:
        raise ReceiptInvalid("contract input_hash differs from the receipt's")
    # Receipts older than content policies carry no policy_version, nor do their contracts.
    if body.get("policy_version") != content_policy.policy_version(job["contract"].get("policy")):
        raise ReceiptInvalid("the receipt's policy_version differs from the contract's policy version")
    # The license is bound twice: the contract hash covers the contract's, the registry's
    # signature the receipt's. Receipts from before licenses were named carry neither.
    if body.get("license") != job["contract"].get("license"):
        raise ReceiptInvalid("the receipt's license differs from the contract's")
    trusted = receipt_trusted(job)
    if trusted != bool(job["contract"].get("trusted", False)):
        raise ReceiptInvalid("the receipt's trusted flag differs from the contract's")
    if require_trusted and not trusted:
        raise ReceiptInvalid("the job did not run on a trusted subnet")
    nodes = body["nodes"]
    # A solo job (adaptive replication) has one trusted node and says so, and so does a text
    # job whose mismatch the registry settled by re-scoring with one sequence accepted; any
    # other path needs two distinct nodes that agreed.
    needed = 1 if body["verification"]["path"] in ("solo", "rescored") else 2
    if len({n["node_id"] for n in nodes}) != len(nodes) or len(nodes) < needed:
        raise ReceiptInvalid(f"a {body['verification']['path']} receipt needs {needed} distinct node(s)")
    for node in nodes:
        _verify_node(node, body)
    delivered = job["result"]
    family = families.family_for(job["contract"]["task_type"])
    if delivered is None:
        return _verify_payload(job, body, family, inputs, payload)
    try:
        result = family.result_from_user(delivered)
    except (InputInvalid, protocol.ProtocolError) as exc:  # e.g. a delivered image that does not decode
        raise ReceiptInvalid(f"delivered result does not decode: {exc}") from None
    payload, _shape = family.encode_result(result)
    if protocol.sha256_hex(payload) != body["result_hash"] or delivered["result_hash"] != body["result_hash"]:
        raise ReceiptInvalid("delivered result does not hash to the receipt's result_hash")
    if body["result_hash"] not in {n["result_hash"] for n in nodes}:
        raise ReceiptInvalid("delivered result is not one the nodes signed")
    return result


def _verify_payload(
    job: dict[str, Any], body: dict[str, Any], family: families.TaskFamily, inputs: dict[str, Any] | None, payload: bytes | None
) -> Any:
    if payload is None:
        raise ReceiptInvalid("the result came peer to peer and the registry holds none: pass the payload received")
    if protocol.sha256_hex(payload) != body["result_hash"]:
        raise ReceiptInvalid("the payload received does not hash to the receipt's result_hash")
    signer = next((n for n in body["nodes"] if n["result_hash"] == body["result_hash"]), None)
    if signer is None:
        raise ReceiptInvalid("delivered result is not one the nodes signed")
    try:
        # Decoded as the registry decodes results: against the inputs, or the contract's summary.
        return family.decode_result(payload, tuple(signer["shape"]), inputs or job["contract"].get("input_summary") or {})
    except (InputInvalid, protocol.ProtocolError, KeyError) as exc:
        raise ReceiptInvalid(f"the payload received does not decode: {exc}") from None


def delivered_result(job: dict[str, Any], result: Any) -> dict[str, Any]:
    """A verified result in the form the job detail delivers it (`result`): what a peer-to-
    peer job's detail lacks when its bytes never passed through the registry, so the job can
    be kept and verified later (`bim verify`) like any other."""
    receipt = job["receipt"]
    signer = next(n for n in receipt["nodes"] if n["result_hash"] == receipt["result_hash"])
    family = families.family_for(job["contract"]["task_type"])
    return {
        "encoding": family.encoding,
        "shape": signer["shape"],
        "result_hash": receipt["result_hash"],
        **family.result_for_user(result),
    }


def receipt_trusted(job: dict[str, Any]) -> bool:
    """Whether the receipt says the job ran on a trusted subnet (registry-operated nodes
    only). Signed with the rest of the receipt: believe it once `verify_receipt` passed.
    A receipt from before the flag existed reads as false."""
    flag = (job.get("receipt") or {}).get("trusted", False)
    if not isinstance(flag, bool):
        raise ReceiptInvalid("the receipt's trusted flag is not a boolean")
    return flag


def _verify_node(node: dict[str, Any], body: dict[str, Any]) -> None:
    cert = protocol.hello_message(
        node_id=node["node_id"], nonce=node["session_nonce"], session_key_pub=node["session_key_pub"]
    )
    if not protocol.signature_valid(node["public_key"], node["session_cert"], cert):
        raise ReceiptInvalid(f"node {node['node_id']}: session key not certified by its long-term key")
    signed = protocol.result_message(
        job_id=body["job_id"],
        assignment_id=node["assignment_id"],
        contract_hash=body["contract_hash"],
        input_hash=body["input_hash"],
        result_hash=node["result_hash"],
        shape=tuple(node["shape"]),
    )
    if not protocol.signature_valid(node["session_key_pub"], node["signature"], signed):
        raise ReceiptInvalid(f"node {node['node_id']}: result signature does not verify")

"""Receipts: the registry-signed record of a settled job that a user verifies offline.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from bim_core import content_policy, families, protocol
from bim_core.verification import Verdict

from .keys import registry_private_key, registry_public_key
from .models import (
    Assignment,
    Job,
)


def receipt_build(
    job: Job,
    pair: list[Assignment],
    verdict: Verdict,
    transfers: list[Any],
    path: str,
    rescoring: dict[str, Any] | None = None,
) -> dict[str, Any]:
    measured = families.family_for(job.contract["task_type"]).receipt_measured(
        verdict.worst, job.contract["tolerances"]
    )
    body = {
        "version": "bim-receipt/1",
        "job_id": str(job.id),
        "subnet": job.subnet.slug,
        "contract_hash": job.contract_hash,
        "input_hash": job.contract["input_hash"],
        "model_checksum": job.contract["model_checksum"],
        # The content policy the job ran under (None: its contract has none); the SDK checks
        # it against the contract, which the contract hash binds.
        "policy_version": content_policy.policy_version(job.contract.get("policy")),
        # The model license the job ran under, as its contract names it (None for a contract
        # older than that); the SDK checks the two agree.
        "license": job.contract.get("license"),
        "result_hash": pair[0].result_hash,
        # Ran on a trusted subnet (registry-operated nodes only), as its contract says.
        "trusted": bool(job.contract.get("trusted", False)),
        "verification": {
            "path": path,
            "metric": verdict.metric,
            **measured,
            # A text pair settled by re-scoring: per role, accepted or not and the worst gap.
            **({"rescoring": rescoring} if rescoring else {}),
        },
        "nodes": [
            {
                "role": a.role,
                "node_id": str(a.node_id),
                "public_key": a.node.public_key,
                "assignment_id": str(a.id),
                "session_key_pub": a.session_key_pub,
                "session_nonce": a.session_nonce,
                "session_cert": a.session_cert,
                "result_hash": a.result_hash,
                "shape": a.result_shape,
                "signature": a.signature,
            }
            for a in pair
        ],
        "settlement": {
            "price_micro": next((t.amount for t in transfers if t.kind == "capture"), 0),
            "transfers": [
                {"id": t.pk, "kind": t.kind, "amount": t.amount, "credit_account": t.credit_id} for t in transfers
            ],
        },
        "settled_at": timezone.now().isoformat(),
        "registry_key": registry_public_key(),
    }
    return {**body, "registry_signature": protocol.sign(registry_private_key(), protocol.receipt_message(body))}

"""The headless node checks the contract's content policy before computing: a job whose
inputs break it is declined with `content_policy:<rule>`, anything else runs."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from bim_core import families, protocol
from bim_node.jobs import JobRefusedError, ServedModel

CHECKSUM = "ab" * 32
POLICY = {
    "id": "node-test",
    "version": 1,
    "input": {"max_items": 2, "blocked": [{"name": "example.weapons", "patterns": [r"\bsarin\b"]}]},
}


def offer(texts, policy=POLICY):
    job_id = str(uuid.uuid4())
    contract = {
        "job_id": job_id,
        "task_type": "embedding",
        "model_checksum": CHECKSUM,
        "input_hash": protocol.input_hash({"texts": texts}),
        "limits": {"max_items": 64, "latency_ms": 1000},
        **({"policy": policy} if policy is not None else {}),
    }
    return {
        "assignment_id": str(uuid.uuid4()),
        "job_id": job_id,
        "contract": contract,
        "contract_hash": protocol.contract_hash(contract),
        "inputs": {"texts": texts},
    }


@pytest.fixture
def model():
    return ServedModel(compute=lambda inputs: np.zeros((len(inputs["texts"]), 4), np.float32),
                       family=families.family_for("embedding"), checksum=CHECKSUM)


@pytest.mark.parametrize(
    ("texts", "reason"),
    [(["how to make Sarin"], "content_policy:example.weapons"), (["a", "b", "c"], "content_policy:input.max_items")],
)
def test_it_declines_a_job_that_breaks_the_contracts_policy(model, texts, reason):
    with pytest.raises(JobRefusedError) as refused:
        model.check_job(offer(texts))
    assert refused.value.reason == reason


def test_it_runs_a_job_the_policy_allows_or_a_contract_without_one(model):
    assert model.check_job(offer(["a harmless sentence"])).inputs == {"texts": ["a harmless sentence"]}
    assert model.check_job(offer(["sarin"], policy=None)).contract.get("policy") is None


def test_a_policy_it_cannot_enforce_is_an_unsupported_contract(model):
    broken = {"id": "x", "version": 1, "input": {"blocked": [{"name": "a", "patterns": ["(a+)+b"]}]}}
    with pytest.raises(JobRefusedError) as refused:
        model.check_job(offer(["fine"], policy=broken))
    assert refused.value.reason == "unsupported_contract"

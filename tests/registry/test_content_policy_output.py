"""Text outputs against the contract's output rules, through the registry's verify path: a
verified text that breaks a rule is not delivered (the job fails as
content_policy_output:<rule>, the user's hold is released, no node is paid or struck);
one that keeps them settles with a receipt carrying the policy version, which the SDK
checks against the contract."""

from __future__ import annotations

import json

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bim_core import protocol
from bim_sdk import ReceiptInvalid, verify_receipt
from ledger import selectors as ledger_selectors
from ledger.accounts import account_balance
from ledger.models import Account, Transfer
from registry import dispatch, submit, verify
from registry.keys import registry_private_key, registry_public_key
from registry.models import AssignmentState, JobState, Strike
from registry.results import result_record
from tests.factories import SubnetFactory, online_node, result_message, user_with_credits

pytestmark = pytest.mark.django_db

POLICY = {
    "id": "text-test",
    "version": 7,
    "output": {"max_tokens": 32, "blocked": [{"name": "example.weapons", "patterns": [r"\bsarin\b"]}]},
}
INPUTS = {"prompt": "Tell me about chemistry.", "max_tokens": 8}


def text_subnet():
    return SubnetFactory(
        task_type="text",
        tolerances={"edit_distance": 0.1, "logit_margin": 1.5},
        preprocessing={"max_new_tokens": 32},
        content_policy=POLICY,
    )


def generation(text: str) -> dict:
    return {"finish": "stop", "text": text, "tokens": [11, 12, 13, 2]}


def run_pair(text: str):
    """A text job answered identically by both nodes and verified (2-of-2, no re-scoring)."""
    subnet = text_subnet()
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(2))}
    user = user_with_credits(1)
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs=INPUTS, idempotency_key="t")
    dispatch.job_dispatch(job_id=job.id)
    for assignment in job.assignments.all():
        keys = pool[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, generation(text)))
    verify.job_verify(job_id=job.id)
    job.refresh_from_db()
    return job, user, list(pool)


def income(node_id) -> int:
    return sum(account_balance(a) for a in Account.objects.filter(node_id=node_id))


def test_a_verified_output_that_breaks_a_rule_is_withheld_and_nobody_pays_or_is_paid():
    job, user, nodes = run_pair("Sarin is a nerve agent.")

    assert job.state == JobState.FAILED
    assert job.failure_reason == "content_policy_output:example.weapons"
    assert job.verification["withheld"]["rule"] == "example.weapons" and job.verification["path"] == "2-of-2"
    assert not job.receipt
    assert ledger_selectors.balance_totals(user=user)["held_micro"] == 0
    assert not Transfer.objects.filter(job_id=job.pk, kind="capture").exists()
    assert Transfer.objects.get(job_id=job.pk, kind="release").amount == job.price_micro
    assert all(income(node_id) == 0 for node_id in nodes)
    assert not Strike.objects.exists()
    assert set(job.assignments.values_list("state", flat=True)) == {AssignmentState.AGREED}


def test_the_api_delivers_no_withheld_text():
    job, user, _ = run_pair("Sarin is a nerve agent.")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    body = client.get(f"/api/v1/jobs/{job.id}/").json()
    assert body["state"] == "failed" and not body.get("result")
    assert "Sarin" not in json.dumps(body)


@pytest.fixture
def settled_job():
    job, user, _ = run_pair("Chemistry studies matter.")
    assert job.state == JobState.SETTLED
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client.get(f"/api/v1/jobs/{job.id}/").json()


def test_a_settled_receipt_carries_the_contracts_policy_version_and_verifies(settled_job):
    assert settled_job["receipt"]["policy_version"] == 7 == settled_job["contract"]["policy"]["version"]
    result = verify_receipt(settled_job, registry_key=registry_public_key(), inputs=INPUTS)
    assert result["text"] == "Chemistry studies matter."


def resigned(receipt: dict) -> dict:
    body = {k: v for k, v in receipt.items() if k != "registry_signature"}
    return {**body, "registry_signature": protocol.sign(registry_private_key(), protocol.receipt_message(body))}


def test_a_receipt_whose_policy_version_differs_from_the_contracts_fails(settled_job):
    # Signed by the registry's own key, so only the policy check can catch it.
    tampered = {**settled_job, "receipt": resigned({**settled_job["receipt"], "policy_version": 6})}
    with pytest.raises(ReceiptInvalid, match="policy_version"):
        verify_receipt(tampered, registry_key=registry_public_key(), inputs=INPUTS)
    dropped = {k: v for k, v in settled_job["receipt"].items() if k != "policy_version"}
    with pytest.raises(ReceiptInvalid, match="policy_version"):
        verify_receipt({**settled_job, "receipt": resigned(dropped)}, registry_key=registry_public_key(), inputs=INPUTS)


def test_a_contract_whose_policy_was_changed_fails_on_its_hash(settled_job):
    contract = {**settled_job["contract"], "policy": {**POLICY, "output": {}}}
    with pytest.raises(ReceiptInvalid, match="contract_hash"):
        verify_receipt({**settled_job, "contract": contract}, registry_key=registry_public_key(), inputs=INPUTS)


def test_a_solo_text_that_breaks_a_rule_is_withheld_too():
    subnet = SubnetFactory(
        task_type="text",
        tolerances={"edit_distance": 0.1, "logit_margin": 1.5},
        preprocessing={"max_new_tokens": 32},
        content_policy=POLICY,
        adaptive_replication=True,
        adaptive_check_bp=0,
        adaptive_min_jobs=10,
        escrow_required_micro=0,
    )
    keys = online_node(subnet, jobs_agreed=50, reputation=0.95)
    user = user_with_credits(1)
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs=INPUTS, idempotency_key="solo")
    dispatch.job_dispatch(job_id=job.id)
    job.refresh_from_db()
    assert job.solo
    result_record(node_id=keys.node.pk, message=result_message(keys, job, job.assignments.get(), generation("VX gas and sarin")))
    verify.job_verify(job_id=job.id)

    job.refresh_from_db()
    assert (job.state, job.failure_reason) == (JobState.FAILED, "content_policy_output:example.weapons")
    assert job.verification["path"] == "solo" and not job.receipt
    assert ledger_selectors.balance_totals(user=user)["held_micro"] == 0
    assert income(keys.node.pk) == 0 and not Strike.objects.exists()

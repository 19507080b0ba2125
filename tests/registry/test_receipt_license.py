"""The license in force is named by a job's contract and repeated by its receipt; the
SDK's receipt verification refuses a receipt whose license differs from the contract's,
even one the registry signed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bim_core import protocol
from bim_sdk import ReceiptInvalid, verify_receipt
from registry.keys import registry_private_key, registry_public_key
from tests.factories import LicenseFactory, online_node, served_subnet, settle, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db

TEXTS = ["one small text", "another text"]


@pytest.fixture
def settled() -> dict[str, Any]:
    license_ = LicenseFactory(slug="open-rail-m", version="1.1", name="OpenRAIL-M")
    subnet = served_subnet(license=license_)
    nodes = [online_node(subnet) for _ in range(3)]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user_with_credits(10)).key}")
    job_id = client.post("/api/v1/jobs/", {"subnet": subnet.slug, "inputs": {"texts": TEXTS}, "idempotency_key": "k1"}, format="json").json()["id"]
    vectors = unit_vectors(len(TEXTS))
    settle(job_id, nodes, vectors, vectors.astype(np.float32))
    return client.get(f"/api/v1/jobs/{job_id}/").json()


def test_the_contract_and_the_receipt_name_the_license_in_force(settled):
    assert settled["state"] == "settled"
    assert settled["contract"]["license"] == {"slug": "open-rail-m", "version": "1.1"}
    assert settled["receipt"]["license"] == {"slug": "open-rail-m", "version": "1.1"}
    verify_receipt(settled, registry_key=registry_public_key(), inputs={"texts": TEXTS})


def resigned(job: dict[str, Any]) -> dict[str, Any]:
    """The receipt signed again by the registry's own key: only the SDK's own checks stand."""
    body = {k: v for k, v in job["receipt"].items() if k != "registry_signature"}
    job["receipt"] = {**body, "registry_signature": protocol.sign(registry_private_key(), protocol.receipt_message(body))}
    return job


@pytest.mark.parametrize(
    "license_",
    [{"slug": "open-rail-m", "version": "1.0"}, {"slug": "apache-2.0", "version": "1.1"}, None],
)
def test_a_signed_receipt_naming_another_license_fails_verification(settled, license_):
    job = json.loads(json.dumps(settled))
    job["receipt"]["license"] = license_
    with pytest.raises(ReceiptInvalid, match="license"):
        verify_receipt(resigned(job), registry_key=registry_public_key(), inputs={"texts": TEXTS})


def test_a_tampered_receipt_license_breaks_the_signature(settled):
    job = json.loads(json.dumps(settled))
    job["receipt"]["license"]["version"] = "9"
    with pytest.raises(ReceiptInvalid, match="signature"):
        verify_receipt(job, registry_key=registry_public_key(), inputs={"texts": TEXTS})


def test_a_contract_with_another_license_no_longer_matches_its_hash(settled):
    job = json.loads(json.dumps(settled))
    job["contract"]["license"]["version"] = "9"
    with pytest.raises(ReceiptInvalid, match="contract"):
        verify_receipt(job, registry_key=registry_public_key(), inputs={"texts": TEXTS})


def test_a_signed_receipt_that_drops_the_contracts_license_fails(settled):
    job = json.loads(json.dumps(settled))
    del job["receipt"]["license"]
    assert "license" in job["contract"]
    with pytest.raises(ReceiptInvalid, match="license"):
        verify_receipt(resigned(job), registry_key=registry_public_key(), inputs={"texts": TEXTS})

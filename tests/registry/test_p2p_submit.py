"""Submitting a peer-to-peer job (docs/p2p.md §1): the registry takes the input's hash and
summary, never its text; prices, limits and the content policy's limits apply to the summary,
and every malformed request is refused with a code before anything is held."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from bim_core import families, protocol
from bim_core.png import png_encode
from ledger.models import Transfer
from registry.models import Job
from registry.terms import JobTerms
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db

INPUTS = {"texts": ["a secret the registry never sees", "another one"]}


@pytest.fixture
def market():
    subnet = SubnetFactory()
    online_node(subnet)
    user = user_with_credits(5)
    client = APIClient()
    client.force_authenticate(user)
    return subnet, user, client


def body(subnet, **overrides):
    return {
        "subnet": subnet.slug,
        "transport": "p2p",
        "input_hash": protocol.input_hash(INPUTS),
        "input_summary": {"items": 2},
        "idempotency_key": "k1",
        **overrides,
    }


def test_a_p2p_job_holds_its_price_from_the_summary_and_keeps_no_input(market):
    subnet, user, client = market
    response = client.post("/api/v1/jobs/", body(subnet), format="json")
    assert response.status_code == 201, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.transport == "p2p" and job.inputs == {}
    assert job.contract["transport"] == "p2p" and job.contract["input_summary"] == {"items": 2}
    assert job.contract["input_hash"] == protocol.input_hash(INPUTS)
    # The nodes check the sizes the registry cannot: the subnet's per-text limit is in the contract.
    assert job.contract["limits"]["max_chars"] == subnet.max_chars_per_item
    assert job.item_count == 2 and job.price_micro == JobTerms.of_subnet(subnet).price_for(2)
    assert Transfer.objects.filter(kind="hold", amount=job.price_micro).count() == 1
    assert response.json()["transport"] == "p2p"
    # The same key again is the same job; with another input hash it is a conflict.
    assert client.post("/api/v1/jobs/", body(subnet), format="json").status_code == 200
    other = body(subnet, input_hash=protocol.input_hash({"texts": ["x"]}))
    assert client.post("/api/v1/jobs/", other, format="json").json()["code"] == "idempotency_conflict"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"inputs": INPUTS}, "invalid_input"),  # p2p never sends the text
        ({"input_hash": "A" * 64}, "invalid_input"),
        ({"input_hash": None}, "invalid_input"),  # missing
        ({"input_summary": {"items": 0}}, "invalid_input"),
        ({"input_summary": {"items": 2, "extra": 1}}, "invalid_input"),
        ({"input_summary": {"items": True}}, "invalid_input"),
        ({"input_summary": {"items": 10_000}}, "invalid_input"),  # over max_items_per_job
        ({"transport": "carrier-pigeon"}, "invalid"),
    ],
)
def test_malformed_p2p_submissions_are_refused_before_anything_is_held(market, overrides, code):
    subnet, user, client = market
    sent = {k: v for k, v in body(subnet, **overrides).items() if v is not None}
    response = client.post("/api/v1/jobs/", sent, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["code"] == code
    assert not Job.objects.exists() and not Transfer.objects.filter(kind="hold").exists()


def test_a_relay_job_may_not_carry_a_summary(market):
    subnet, _, client = market
    sent = {"subnet": subnet.slug, "inputs": INPUTS, "input_summary": {"items": 2}, "idempotency_key": "r"}
    assert client.post("/api/v1/jobs/", sent, format="json").json()["code"] == "invalid_input"


def test_the_policy_limits_apply_to_the_summary(market):
    subnet, _, client = market
    subnet.content_policy = {"id": "p", "version": 1, "input": {"max_items": 1}}
    subnet.save(update_fields=["content_policy"])
    response = client.post("/api/v1/jobs/", body(subnet), format="json")
    assert response.status_code == 422 and response.json()["rule"] == "input.max_items"
    assert not Job.objects.exists()


def test_every_family_summarises_its_inputs_and_reads_the_summary_as_it_reads_inputs():
    text = families.family_for("text")
    assert text.input_summary({"prompt": "hi", "max_tokens": 7}) == {"max_tokens": 7}
    assert text.price_units({"max_tokens": 7}) == 7
    embedding = families.family_for("embedding")
    assert embedding.item_count({"items": 3}) == embedding.item_count({"texts": ["a", "b", "c"]}) == 3
    image = families.family_for("image")
    png = png_encode(__import__("numpy").zeros((5, 6, 3), dtype="uint8"))
    assert image.input_summary({"image": protocol.b64encode(png)}) == {"height": 5, "width": 6}
    assert image.committed_size((10, 12, 3), {"height": 5, "width": 6}) == 360
    with pytest.raises(protocol.ProtocolError):
        image.committed_size((10, 10, 3), {"height": 5, "width": 6})

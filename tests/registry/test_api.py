"""The user and contributor API under /api/v1/, driven over HTTP with token auth: job
submission and idempotency, refusals and their codes, who sees which job, settled jobs
whose receipts a client can verify offline, balances, node registration, licenses, and
the OpenAPI schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bim_core import protocol
from bim_core.money import MICRO
from bim_sdk import ReceiptInvalid, verify_receipt
from ledger.models import Transfer
from ledger.services import credits_top_up
from registry.models import Job, Node
from subnets.models import EulaAcceptance, Subnet
from tests.factories import (
    SubnetFactory,
    UserFactory,
    online_node,
    served_subnet,
    settle,
    unit_vectors,
    user_with_credits,
)

pytestmark = pytest.mark.django_db

TEXTS = ["one small text", "another text", "a third one"]
PRICE = 333 + 1000 * len(TEXTS)  # SubnetFactory: per call + per item


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def submit(client: APIClient, subnet, *, key: str | None = "k1", texts: Any = TEXTS, **extra: Any):
    body: dict[str, Any] = {"subnet": subnet if isinstance(subnet, str) else subnet.slug, "inputs": {"texts": texts}}
    if key is not None:
        body["idempotency_key"] = key
    return client.post("/api/v1/jobs/", body, format="json", **extra)


def balance(client: APIClient) -> dict[str, int]:
    response = client.get("/api/v1/balance/")
    assert response.status_code == 200
    return response.json()


# ---------------------------------------------------------------- submit


def test_it_submits_a_job_and_holds_its_price():
    subnet = served_subnet()
    client = api(user_with_credits(10))

    response = submit(client, subnet)

    assert response.status_code == 201
    body = response.json()
    assert body["state"] == "queued"
    assert body["subnet"] == subnet.slug
    assert body["item_count"] == 3
    assert body["price_micro"] == PRICE
    assert body["idempotency_key"] == "k1"
    assert body["result"] is None
    assert body["contract"]["input_hash"] == protocol.input_hash({"texts": TEXTS})
    assert body["contract"]["job_id"] == body["id"]
    assert body["contract_hash"] == protocol.contract_hash(body["contract"])
    assert balance(client) == {
        "credits_micro": 10 * MICRO - PRICE,
        "held_micro": PRICE,
        "earnings_micro": 0,
        "escrow_micro": 0,
    }


def test_a_repeated_idempotency_key_returns_the_same_job_and_holds_once():
    subnet = served_subnet()
    client = api(user_with_credits(10))
    first = submit(client, subnet, key="same")

    again = submit(client, subnet, key="same")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1
    assert Transfer.objects.filter(kind="hold").count() == 1
    assert balance(client)["held_micro"] == PRICE


def test_the_idempotency_key_header_works_like_the_field():
    subnet = served_subnet()
    client = api(user_with_credits(10))

    first = submit(client, subnet, key=None, HTTP_IDEMPOTENCY_KEY="from-header")
    again = submit(client, subnet, key=None, HTTP_IDEMPOTENCY_KEY="from-header")

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["idempotency_key"] == "from-header"
    assert again.json()["id"] == first.json()["id"]
    assert Transfer.objects.filter(kind="hold").count() == 1


def test_the_same_key_for_other_texts_is_a_conflict():
    subnet = served_subnet()
    client = api(user_with_credits(10))
    submit(client, subnet, key="same")

    response = submit(client, subnet, key="same", texts=["something else"])

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_conflict"
    assert Job.objects.count() == 1


def test_two_users_may_use_the_same_key():
    subnet = served_subnet()
    first = submit(api(user_with_credits(10)), subnet, key="shared")
    second = submit(api(user_with_credits(10)), subnet, key="shared")
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]


def test_it_refuses_a_submission_without_an_idempotency_key():
    subnet = served_subnet()
    client = api(user_with_credits(10))

    response = submit(client, subnet, key=None)

    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_required"
    assert Job.objects.count() == 0



@pytest.mark.parametrize("key", [0, 12345, True])
def test_it_refuses_an_idempotency_key_that_is_not_a_string(key):
    # The schema says string; a number is not quietly made the string "0" (schemathesis found it).
    subnet = served_subnet()
    client = api(user_with_credits(10))

    response = submit(client, subnet, key=key)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and "idempotency_key" in response.json()["detail"]
    assert Job.objects.count() == 0

def test_it_refuses_a_job_the_user_cannot_pay_for_and_moves_no_money():
    subnet = served_subnet()
    user = user_with_credits(0)
    credits_top_up(user=user, amount=PRICE - 1, idempotency_key="almost")
    client = api(user)
    transfers_before = Transfer.objects.count()

    response = submit(client, subnet)

    assert response.status_code == 402
    assert response.json()["code"] == "insufficient_credits"
    assert Job.objects.count() == 0
    assert Transfer.objects.count() == transfers_before
    assert balance(client)["credits_micro"] == PRICE - 1
    assert balance(client)["held_micro"] == 0


def test_it_refuses_an_unknown_or_inactive_subnet():
    client = api(user_with_credits(10))
    inactive = served_subnet(state=Subnet.State.DRAFT)

    for slug in ("no-such-subnet", inactive.slug):
        response = submit(client, slug)
        assert response.status_code == 404
        assert response.json()["code"] == "unknown_subnet"
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    "texts",
    [
        pytest.param([], id="empty"),
        pytest.param(["x"] * 65, id="too-many"),
        pytest.param(["   "], id="blank"),
        pytest.param(["x" * 4001], id="too-long"),
        pytest.param("just a string", id="not-a-list"),
        pytest.param([None], id="null"),
        pytest.param([{"text": "x"}], id="object"),
        pytest.param([["x"]], id="list"),
        pytest.param([True], id="bool"),
        pytest.param([123], id="int"),
        pytest.param([1.5], id="float"),
    ],
)
def test_it_refuses_texts_that_are_not_a_short_list_of_strings(texts):
    subnet = served_subnet()
    client = api(user_with_credits(10))

    response = submit(client, subnet, texts=texts)

    assert response.status_code == 400, response.json()
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param("texts", id="not-an-object"),
        pytest.param({"texts": ["a"], "prompt": "b"}, id="another-family-field"),
        pytest.param({}, id="empty"),
    ],
)
def test_it_refuses_inputs_that_are_not_of_the_subnet_family(inputs):
    subnet = served_subnet()
    client = api(user_with_credits(10))

    response = client.post("/api/v1/jobs/", {"subnet": subnet.slug, "inputs": inputs, "idempotency_key": "k"}, format="json")

    assert response.status_code == 400, response.json()
    assert Job.objects.count() == 0


def test_it_accepts_exactly_the_maximum_number_of_texts():
    subnet = served_subnet()
    response = submit(api(user_with_credits(10)), subnet, texts=[f"t{i}" for i in range(64)])
    assert response.status_code == 201
    assert response.json()["item_count"] == 64


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/jobs/"),
        ("post", "/api/v1/jobs/"),
        ("get", "/api/v1/jobs/00000000-0000-0000-0000-000000000000/"),
        ("get", "/api/v1/balance/"),
        ("post", "/api/v1/nodes/"),
        ("get", "/api/v1/subnets/"),
        ("post", "/api/v1/subnets/x/accept-license/"),
    ],
)
def test_it_refuses_anonymous_and_bad_token_requests(method, path):
    anonymous = getattr(APIClient(), method)(path, {}, format="json")
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    bad_token = getattr(forged, method)(path, {}, format="json")
    assert anonymous.status_code == 401
    assert bad_token.status_code == 401
    assert Job.objects.count() == 0


# ---------------------------------------------------------------- reading jobs


def test_it_refuses_a_foreign_job():
    subnet = served_subnet()
    owner_job = submit(api(user_with_credits(10)), subnet).json()
    outsider = api(user_with_credits(10))

    assert outsider.get(f"/api/v1/jobs/{owner_job['id']}/").status_code == 404


def test_the_job_list_shows_only_the_users_own_jobs_newest_first():
    subnet = served_subnet()
    owner, outsider = api(user_with_credits(10)), api(user_with_credits(10))
    mine = [submit(owner, subnet, key=f"k{i}").json()["id"] for i in range(3)]
    theirs = submit(outsider, subnet, key="k0").json()["id"]

    page = owner.get("/api/v1/jobs/").json()

    assert page["count"] == 3
    assert [job["id"] for job in page["results"]] == mine[::-1]
    assert theirs not in {job["id"] for job in page["results"]}
    assert [job["id"] for job in outsider.get("/api/v1/jobs/").json()["results"]] == [theirs]


def test_the_job_list_paginates():
    subnet = served_subnet()
    client = api(user_with_credits(10))
    ids = [submit(client, subnet, key=f"k{i}").json()["id"] for i in range(3)]

    page = client.get("/api/v1/jobs/", {"limit": 2, "offset": 1}).json()

    assert page["count"] == 3
    assert [job["id"] for job in page["results"]] == ids[::-1][1:3]


def test_the_job_list_costs_the_same_queries_for_one_job_or_many():
    subnet = served_subnet()
    client = api(user_with_credits(10))
    submit(client, subnet, key="k0")
    with CaptureQueriesContext(connection) as one:
        assert client.get("/api/v1/jobs/").status_code == 200
    for i in range(1, 6):
        submit(client, subnet, key=f"k{i}")
    with CaptureQueriesContext(connection) as six:
        assert len(client.get("/api/v1/jobs/").json()["results"]) == 6
    assert len(six) == len(one)


# ---------------------------------------------------------------- settled jobs and receipts


@pytest.fixture
def settled() -> dict[str, Any]:
    """A job submitted over the API and settled by two nodes that agree within tolerance."""
    subnet = served_subnet()
    nodes = [online_node(subnet) for _ in range(3)]
    user = user_with_credits(10)
    client = api(user)
    job_id = submit(client, subnet).json()["id"]
    vectors_a = unit_vectors(len(TEXTS))
    noisy = vectors_a + np.float32(1e-6) * unit_vectors(len(TEXTS), seed=3)
    vectors_b = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    settle(job_id, nodes, vectors_a, vectors_b)
    response = client.get(f"/api/v1/jobs/{job_id}/")
    assert response.status_code == 200
    return {
        "client": client,
        "job": response.json(),
        "vectors_a": vectors_a,
        "vectors_b": vectors_b,
        "nodes": nodes,
        "registry_key": APIClient().get("/api/v1/registry/").json()["receipt_key"],
    }


def test_a_settled_job_delivers_vectors_that_hash_to_its_result_hash(settled):
    job = settled["job"]
    result = job["result"]

    assert job["state"] == "settled"
    assert result["encoding"] == "f32le"
    assert result["shape"] == [len(TEXTS), 384]
    delivered = np.asarray(result["vectors"], dtype=np.float32)
    assert protocol.sha256_hex(protocol.encode_vectors(delivered)) == result["result_hash"]
    # The delivered result is role A's, bit for bit, and the receipt names it.
    assert np.array_equal(delivered, settled["vectors_a"])
    assert job["receipt"]["result_hash"] == result["result_hash"]
    assert job["verification"]["passed"] is True


def test_a_settled_jobs_receipt_verifies_offline(settled):
    vectors = verify_receipt(settled["job"], registry_key=settled["registry_key"], inputs={"texts": TEXTS})
    assert np.array_equal(vectors, settled["vectors_a"])


def test_the_registry_endpoint_publishes_the_key_that_signs_receipts(settled):
    info = APIClient().get("/api/v1/registry/").json()
    assert info["protocol"] == protocol.PROTOCOL_VERSION
    assert info["receipt_key"] == settled["job"]["receipt"]["registry_key"]
    protocol.parse_public_key(info["receipt_key"])


def _change_a_vector_value(job: dict[str, Any]) -> None:
    job["result"]["vectors"][1][7] += 1e-3


def _swap_in_vectors_with_a_matching_result_hash(job: dict[str, Any]) -> None:
    forged = unit_vectors(len(TEXTS), seed=11)
    job["result"]["vectors"] = forged.tolist()
    job["result"]["result_hash"] = protocol.sha256_hex(protocol.encode_vectors(forged))


def _swap_a_nodes_public_key(job: dict[str, Any]) -> None:
    job["receipt"]["nodes"][0]["public_key"] = protocol.public_key_b64(protocol.new_private_key())


def _edit_the_min_cosine(job: dict[str, Any]) -> None:
    job["receipt"]["verification"]["min_cosine"] = 1.0


def _edit_the_contract(job: dict[str, Any]) -> None:
    job["contract"]["tolerances"]["cosine_min"] = 0.5


def _make_both_nodes_the_same(job: dict[str, Any]) -> None:
    job["receipt"]["nodes"][1] = copy.deepcopy(job["receipt"]["nodes"][0])


def _drop_the_signature(job: dict[str, Any]) -> None:
    del job["receipt"]["registry_signature"]


def _mark_unsettled(job: dict[str, Any]) -> None:
    job["state"] = "verifying"


@pytest.mark.parametrize(
    "tamper",
    [
        _change_a_vector_value,
        _swap_in_vectors_with_a_matching_result_hash,
        _swap_a_nodes_public_key,
        _edit_the_min_cosine,
        _edit_the_contract,
        _make_both_nodes_the_same,
        _drop_the_signature,
        _mark_unsettled,
    ],
)
def test_a_tampered_job_fails_receipt_verification(settled, tamper):
    job = json.loads(json.dumps(settled["job"]))
    tamper(job)
    with pytest.raises(ReceiptInvalid):
        verify_receipt(job, registry_key=settled["registry_key"], inputs={"texts": TEXTS})


def test_a_receipt_fails_for_other_texts_or_another_registry_key(settled):
    with pytest.raises(ReceiptInvalid):
        verify_receipt(settled["job"], registry_key=settled["registry_key"], inputs={"texts": [*TEXTS[:2], "swapped"]})
    with pytest.raises(ReceiptInvalid):
        verify_receipt(settled["job"], registry_key=protocol.public_key_b64(protocol.new_private_key()), inputs={"texts": TEXTS})


def test_balances_after_settlement(settled):
    assert balance(settled["client"]) == {
        "credits_micro": 10 * MICRO - PRICE,
        "held_micro": 0,
        "earnings_micro": 0,
        "escrow_micro": 0,
    }
    paid = {n["node_id"] for n in settled["job"]["receipt"]["nodes"]}
    for keys in settled["nodes"]:
        owner_balance = balance(api(keys.node.owner))
        if str(keys.node.pk) in paid:
            # 40 % of 3,333 floors to 1,333; 10 % of that goes to escrow.
            assert owner_balance == {"credits_micro": 0, "held_micro": 0, "earnings_micro": 1200, "escrow_micro": 133}
        else:
            assert owner_balance["earnings_micro"] == owner_balance["escrow_micro"] == 0


# ---------------------------------------------------------------- nodes and licenses


def register(client: APIClient, subnet, public_key: str, **overrides: Any):
    body = {"public_key": public_key, "name": "box-1", "subnets": [subnet.slug], "env": {"os": "linux", "cpu_count": 4}}
    return client.post("/api/v1/nodes/", {**body, **overrides}, format="json")


def accept(client: APIClient, subnet, version: str):
    return client.post(f"/api/v1/subnets/{subnet.slug}/accept-license/", {"license_version": version}, format="json")


def test_node_registration_requires_the_subnets_license():
    subnet = SubnetFactory()
    client = api(UserFactory())
    key = protocol.public_key_b64(protocol.new_private_key())

    refused = register(client, subnet, key)
    assert refused.status_code == 403
    assert refused.json()["code"] == "license_not_accepted"
    assert Node.objects.count() == 0

    assert accept(client, subnet, subnet.license.version).status_code == 201
    created = register(client, subnet, key)
    assert created.status_code == 201
    node = created.json()
    assert node["public_key"] == key
    assert node["name"] == "box-1"
    assert node["os"] == "linux"
    assert node["subnets"] == [subnet.slug]
    assert node["is_online"] is False

    again = register(client, subnet, key, name="box-renamed")
    assert again.status_code == 200
    assert again.json()["id"] == node["id"]
    assert again.json()["name"] == "box-renamed"
    assert Node.objects.count() == 1
    assert Node.objects.get().ip_block == "127.0.0.0/24"


def test_a_public_key_belongs_to_one_account():
    subnet = SubnetFactory()
    first, second = api(UserFactory()), api(UserFactory())
    key = protocol.public_key_b64(protocol.new_private_key())
    for client in (first, second):
        accept(client, subnet, subnet.license.version)
    assert register(first, subnet, key).status_code == 201

    taken = register(second, subnet, key)

    assert taken.status_code == 409
    assert taken.json()["code"] == "public_key_taken"
    assert Node.objects.count() == 1


@pytest.mark.parametrize(
    "public_key",
    [
        pytest.param("not base64!", id="not-base64"),
        pytest.param(protocol.b64encode(b"k" * 31), id="31-bytes"),
        pytest.param(protocol.b64encode(b"k" * 33), id="33-bytes"),
        pytest.param("", id="empty"),
    ],
)
def test_node_registration_refuses_a_bad_public_key(public_key):
    subnet = SubnetFactory()
    client = api(UserFactory())
    accept(client, subnet, subnet.license.version)

    response = register(client, subnet, public_key)

    assert response.status_code == 400
    assert Node.objects.count() == 0


def test_node_registration_refuses_an_unknown_subnet():
    subnet = SubnetFactory()
    client = api(UserFactory())
    accept(client, subnet, subnet.license.version)
    key = protocol.public_key_b64(protocol.new_private_key())

    response = client.post("/api/v1/nodes/", {"public_key": key, "subnets": [subnet.slug, "nope"]}, format="json")

    assert response.status_code == 404
    assert response.json()["code"] == "unknown_subnet"
    assert Node.objects.count() == 0


def test_license_acceptance_needs_the_current_version_and_is_idempotent():
    subnet = served_subnet()
    user = UserFactory()
    client = api(user)

    wrong = accept(client, subnet, "1.0")
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "license_version_mismatch"
    assert not EulaAcceptance.objects.filter(user=user).exists()

    first = accept(client, subnet, subnet.license.version)
    assert first.status_code == 201
    assert first.json()["license"] == subnet.license.slug
    assert first.json()["version"] == subnet.license.version
    again = accept(client, subnet, subnet.license.version)
    assert again.status_code == 200
    assert again.json()["accepted_at"] == first.json()["accepted_at"]
    assert EulaAcceptance.objects.filter(user=user).count() == 1


def test_license_acceptance_for_an_unknown_subnet_is_not_found():
    response = accept(api(UserFactory()), SubnetFactory.build(slug="nope"), "2.0")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_subnet"


def test_the_subnet_list_shows_active_subnets_with_their_license():
    active = served_subnet()
    served_subnet(state=Subnet.State.PAUSED)

    listed = api(UserFactory()).get("/api/v1/subnets/").json()

    assert [s["slug"] for s in listed] == [active.slug]
    assert listed[0]["license"]["version"] == active.license.version
    assert listed[0]["manifest_url"] == f"/subnets/{active.slug}/manifest.json"
    assert listed[0]["tolerances"]["cosine_min"] == 0.9999


# ---------------------------------------------------------------- schema


def test_the_openapi_schema_documents_the_job_endpoints():
    response = APIClient().get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/jobs/", "/api/v1/jobs/{job_id}/", "/api/v1/nodes/"} <= set(schema["paths"])
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/jobs/"])

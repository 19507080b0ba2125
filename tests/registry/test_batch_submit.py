"""POST /api/v1/jobs/batch/: many jobs in one request, all or none. Each refusal names the
job at fault and leaves nothing behind (no job, no hold); a repeated batch returns the
jobs it submitted before; the SDK's submit_many sends it."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bim_core import protocol
from bim_core.money import MICRO
from ledger.models import Transfer
from registry.models import Job, JobEvent
from tests.factories import SubnetFactory, served_subnet, user_with_credits

pytestmark = pytest.mark.django_db

PRICE_ONE_TEXT = 333 + 1000  # SubnetFactory: per call + per item


def api(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def batch(subnet, count: int, *, prefix: str = "b", **overrides: Any) -> dict[str, Any]:
    jobs = [
        {"subnet": subnet.slug, "inputs": {"texts": [f"text {i}"]}, "idempotency_key": f"{prefix}-{i}"}
        for i in range(count)
    ]
    for index, fields in overrides.items():
        jobs[int(index.removeprefix("job"))].update(fields)
    return {"jobs": jobs}


def post(client: APIClient, body: dict[str, Any]):
    return client.post("/api/v1/jobs/batch/", body, format="json")


def nothing_written(user) -> bool:
    return not Job.objects.filter(user=user).exists() and not Transfer.objects.filter(kind="hold").exists()


def test_a_batch_submits_every_job_with_its_hold_in_one_transaction():
    subnet = served_subnet()
    user = user_with_credits(10)

    with CaptureQueriesContext(connection) as queries:
        response = post(api(user), batch(subnet, 50))

    assert response.status_code == 201
    jobs = response.json()["jobs"]
    assert [job["idempotency_key"] for job in jobs] == [f"b-{i}" for i in range(50)]
    assert all(job["created"] and job["state"] == "queued" for job in jobs)
    stored = {str(job.pk): job for job in Job.objects.filter(user=user)}
    assert set(stored) == {job["id"] for job in jobs}
    for job in jobs:
        assert job["contract_hash"] == protocol.contract_hash(stored[job["id"]].contract)
    assert Transfer.objects.filter(kind="hold").count() == 50
    assert sum(Transfer.objects.filter(kind="hold").values_list("amount", flat=True)) == 50 * PRICE_ONE_TEXT
    assert JobEvent.objects.filter(job__user=user, to_state="queued").count() == 50
    # Multi-row inserts: the statements do not grow with the jobs in the batch.
    assert len(queries) < 40, "\n".join(q["sql"][:100] for q in queries)


def test_a_repeated_batch_returns_the_same_jobs_and_holds_once():
    subnet = served_subnet()
    client = api(user_with_credits(10))
    first = post(client, batch(subnet, 3))

    again = post(client, batch(subnet, 3))

    assert (first.status_code, again.status_code) == (201, 200)
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    assert not any(j["created"] for j in again.json()["jobs"])
    assert Transfer.objects.filter(kind="hold").count() == 3


def test_a_batch_mixing_new_and_submitted_jobs_creates_only_the_new_ones():
    subnet = served_subnet()
    client = api(user_with_credits(10))
    post(client, batch(subnet, 2))

    response = post(client, batch(subnet, 4))

    assert response.status_code == 201
    assert [j["created"] for j in response.json()["jobs"]] == [False, False, True, True]
    assert Transfer.objects.filter(kind="hold").count() == 4


@pytest.mark.parametrize(
    ("overrides", "status", "code", "names"),
    [
        ({"job2": {"inputs": {"texts": []}}}, 400, "invalid_input", "jobs[2]"),
        ({"job1": {"subnet": "no-such-subnet"}}, 404, "unknown_subnet", "jobs[1]"),
        ({"job3": {"idempotency_key": "b-0"}}, 409, "idempotency_conflict", "jobs[3]"),
        ({"job1": {"session_key_pub": "not-a-key"}}, 400, "invalid_session_key", "jobs[1]"),
    ],
)
def test_one_bad_job_refuses_the_whole_batch_naming_it(overrides, status, code, names):
    subnet = served_subnet()
    user = user_with_credits(10)

    response = post(api(user), batch(subnet, 4, **overrides))

    assert response.status_code == status, response.json()
    assert response.json()["code"] == code
    assert names in response.json()["detail"]
    assert nothing_written(user)


def test_a_key_reused_for_different_inputs_refuses_the_batch():
    subnet = served_subnet()
    user = user_with_credits(10)
    client = api(user)
    post(client, batch(subnet, 1))

    response = post(client, batch(subnet, 2, job0={"inputs": {"texts": ["something else"]}}))

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_conflict"
    assert "jobs[0]" in response.json()["detail"]
    assert Job.objects.filter(user=user).count() == 1


def test_a_batch_the_credits_do_not_cover_is_refused_whole():
    subnet = served_subnet()
    user = user_with_credits(0)
    from ledger.services import credits_top_up

    credits_top_up(user=user, amount=3 * PRICE_ONE_TEXT, idempotency_key="three-jobs")  # 3 of the 4

    response = post(api(user), batch(subnet, 4))

    assert response.status_code == 402
    assert response.json()["code"] == "insufficient_credits"
    assert f"these 4 jobs cost {4 * PRICE_ONE_TEXT}" in response.json()["detail"]
    assert nothing_written(user)


@pytest.mark.parametrize("count", [0, protocol.JOBS_PER_BATCH_MAX + 1])
def test_an_empty_or_oversized_batch_is_refused(count):
    subnet = served_subnet()
    user = user_with_credits(100)

    response = post(api(user), batch(subnet, count))

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert nothing_written(user)


@pytest.mark.parametrize(
    "body",
    [
        {"jobs": "not a list"},
        {"jobs": [{"subnet": "x", "inputs": {"texts": ["a"]}}]},  # no idempotency key
        {"jobs": [{"subnet": "x", "inputs": {"texts": ["a"]}, "idempotency_key": 7}]},
        {"jobs": [["not", "an", "object"]]},
        {},
    ],
)
def test_a_malformed_batch_is_a_400(body):
    user = user_with_credits(10)

    response = post(api(user), body)

    assert response.status_code == 400
    assert "detail" in response.json()
    assert nothing_written(user)


def test_a_batch_for_a_subnet_nobody_serves_is_a_503_and_writes_nothing():
    subnet = SubnetFactory()  # no node at all
    user = user_with_credits(10)

    response = post(api(user), batch(subnet, 2))

    assert response.status_code == 503
    assert response.json()["code"] == "no_capacity"
    assert nothing_written(user)


def test_the_sdk_submits_many_jobs_in_batches(live_server):
    from bim_sdk import Client

    subnet = served_subnet()
    user = user_with_credits(100)
    token, _ = Token.objects.get_or_create(user=user)
    client = Client(live_server.url, token.key)
    inputs = [{"texts": [f"sdk text {i}"]} for i in range(protocol.JOBS_PER_BATCH_MAX + 5)]

    jobs = client.submit_many(subnet.slug, inputs, idempotency_key="many")
    again = client.submit_many(subnet.slug, inputs, idempotency_key="many")

    assert [job["idempotency_key"] for job in jobs] == [f"many:{i}" for i in range(len(inputs))]
    assert [job["id"] for job in again] == [job["id"] for job in jobs]
    assert Job.objects.filter(user=user).count() == len(inputs)
    assert Transfer.objects.filter(kind="hold").count() == len(inputs)
    assert user_balance_credits(user) == 100 * MICRO - len(inputs) * PRICE_ONE_TEXT


def user_balance_credits(user) -> int:
    from ledger.selectors import balance_totals

    return balance_totals(user=user)["credits_micro"]

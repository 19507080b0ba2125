"""A subnet's content policy at submit (docs/content-policy.md): copied into every contract
(bound by its hash), a job whose input breaks a rule refused with 422 content_policy naming
the rule (single, batch, OpenAI-compatible API) with nothing held, and the per-user rate
refused with 429 rate_limited_by_policy."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bim_core import protocol
from developer import keys
from ledger import selectors as ledger_selectors
from registry import policy_enforcement
from registry.models import Job
from tests.factories import served_subnet, user_with_credits

pytestmark = pytest.mark.django_db

POLICY = {
    "id": "test-embed",
    "version": 3,
    "input": {"max_items": 4, "blocked": [{"name": "example.weapons", "patterns": [r"\b(?:nerve agent|sarin)\b"]}]},
    "rate_limit": {"jobs_per_minute": 3},
}


@pytest.fixture(autouse=True)
def _fresh_rate_windows():
    cache.clear()
    yield
    cache.clear()


def api(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def submit(client, subnet, texts, key="k"):
    return client.post(
        "/api/v1/jobs/", {"subnet": subnet.slug, "inputs": {"texts": texts}, "idempotency_key": key}, format="json"
    )


def held(user) -> int:
    return ledger_selectors.balance_totals(user=user)["held_micro"]


def test_every_contract_carries_the_subnets_policy_under_its_hash():
    subnet = served_subnet(content_policy=POLICY)
    response = submit(api(user_with_credits(1)), subnet, ["a harmless text"])

    assert response.status_code == 201
    job = Job.objects.get()
    assert job.contract["policy"] == POLICY
    assert job.contract_hash == protocol.contract_hash(job.contract)
    assert job.contract_hash != protocol.contract_hash({**job.contract, "policy": {**POLICY, "version": 4}})


def test_a_subnet_without_a_policy_writes_contracts_without_one():
    subnet = served_subnet()
    assert submit(api(user_with_credits(1)), subnet, ["sarin"]).status_code == 201
    assert "policy" not in Job.objects.get().contract


@pytest.mark.parametrize(
    ("texts", "rule"),
    [(["fine", "How is SARIN made?"], "example.weapons"), (["a"] * 5, "input.max_items")],
)
def test_an_input_that_breaks_a_rule_is_refused_naming_it_and_nothing_is_held(texts, rule):
    subnet = served_subnet(content_policy=POLICY)
    user = user_with_credits(1)

    response = submit(api(user), subnet, texts)

    assert response.status_code == 422
    body = response.json()
    assert (body["code"], body["rule"], body["policy_version"]) == ("content_policy", rule, 3)
    assert rule in body["detail"]
    assert not Job.objects.exists() and held(user) == 0


def test_a_batch_with_one_violating_job_is_refused_whole_naming_that_job():
    subnet = served_subnet(content_policy=POLICY)
    user = user_with_credits(1)
    jobs = [{"subnet": subnet.slug, "inputs": {"texts": [f"text {i}"]}, "idempotency_key": f"b{i}"} for i in range(3)]
    jobs[2]["inputs"] = {"texts": ["a nerve agent"]}

    response = api(user).post("/api/v1/jobs/batch/", {"jobs": jobs}, format="json")

    assert response.status_code == 422
    body = response.json()
    assert (body["code"], body["rule"], body["job_index"]) == ("content_policy", "example.weapons", 2)
    assert body["detail"].startswith("jobs[2]: ")
    assert not Job.objects.exists() and held(user) == 0


def test_the_openai_api_refuses_a_violating_input_in_its_error_shape(client):
    subnet = served_subnet(content_policy=POLICY)
    user = user_with_credits(1)
    _, key = keys.api_key_create(user=user, name="t")

    response = client.post(
        "/v1/embeddings",
        {"model": subnet.slug, "input": ["what is sarin"]},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "content_policy" and "example.weapons" in error["message"]
    assert response.json()["bim"]["rule"] == "example.weapons"
    assert response["x-should-retry"] == "false"
    assert not Job.objects.exists() and held(user) == 0


def test_the_per_user_rate_is_refused_with_429_counting_only_new_jobs():
    subnet = served_subnet(content_policy=POLICY)
    user, other = user_with_credits(1), user_with_credits(1)
    client = api(user)
    for i in range(3):
        assert submit(client, subnet, [f"text {i}"], key=f"k{i}").status_code == 201
    assert submit(client, subnet, ["text 0"], key="k0").status_code == 200  # a repeat is not a new job

    refused = submit(client, subnet, ["one more"], key="k3")

    assert refused.status_code == 429
    assert (refused.json()["code"], refused.json()["rule"]) == ("rate_limited_by_policy", "rate_limit.jobs_per_minute")
    assert 1 <= int(refused["Retry-After"]) <= 61
    assert Job.objects.filter(user=user).count() == 3
    assert submit(api(other), subnet, ["another user's"], key="k0").status_code == 201


def test_a_batch_over_the_rate_is_refused_whole_and_uses_none_of_the_allowance():
    subnet = served_subnet(content_policy=POLICY)
    user = user_with_credits(1)
    jobs = [{"subnet": subnet.slug, "inputs": {"texts": [f"t{i}"]}, "idempotency_key": f"b{i}"} for i in range(4)]

    assert api(user).post("/api/v1/jobs/batch/", {"jobs": jobs}, format="json").status_code == 429
    assert api(user).post("/api/v1/jobs/batch/", {"jobs": jobs[:3]}, format="json").status_code == 201


def test_a_submit_refused_after_counting_gives_its_allowance_back():
    subnet = served_subnet(content_policy=POLICY)
    broke = user_with_credits(0)
    for i in range(4):
        assert submit(api(broke), subnet, [f"t{i}"], key=f"k{i}").json()["code"] == "insufficient_credits"
    key = policy_enforcement.rate_take(user=broke, subnet=subnet, count=3)
    assert key is not None

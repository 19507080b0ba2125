"""Hostile input never makes the API answer 500 or HTML: every refusal is a JSON 4xx with a
machine-readable code (`{"code", "detail"}`), whatever the database (PostgreSQL under
scripts/test.sh; SQLite when DATABASE_URL is unset). Driven through the real API client."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from registry.models import Job
from tests.factories import SubnetFactory, user_with_credits

pytestmark = pytest.mark.django_db


def api() -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user_with_credits(10))
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def post_raw(client: APIClient, body: bytes | str, **extra):
    return client.generic("POST", "/api/v1/jobs/", body, content_type="application/json", **extra)


def assert_json_refusal(response, status: int | None = None) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    assert set(body) == {"code", "detail"}, body
    assert isinstance(body["code"], str) and body["code"]
    if status is not None:
        assert response.status_code == status, body
    else:
        assert 400 <= response.status_code < 500, body
    return body


def text_subnet():
    return SubnetFactory(task_type="text", preprocessing={"max_new_tokens": 16})


# A lone surrogate is valid JSON text ("\ud800") but no UTF-8 string: it must be refused
# before it reaches a JSON column, a hash or a JSON renderer.
@pytest.mark.parametrize(
    "make_body",
    [
        pytest.param(lambda slug: '{"subnet": "SLUG", "inputs": {"texts": ["ok \\ud800"]}, "idempotency_key": "k"}'.replace("SLUG", slug), id="embedding-text"),
        pytest.param(lambda slug: '{"subnet": "SLUG", "inputs": {"texts": ["ok"], "\\udfff": 1}, "idempotency_key": "k"}'.replace("SLUG", slug), id="unknown-key"),
        pytest.param(lambda slug: '{"subnet": "SLUG", "inputs": {"texts": ["ok"]}, "idempotency_key": "k\\ud800"}'.replace("SLUG", slug), id="key"),
    ],
)
def test_a_lone_surrogate_in_an_embedding_job_is_a_json_400(make_body):
    subnet = SubnetFactory()
    response = post_raw(api(), make_body(subnet.slug))
    assert_json_refusal(response, 400)
    assert Job.objects.count() == 0


def test_a_lone_surrogate_in_a_text_prompt_is_a_json_400():
    subnet = text_subnet()
    body = '{"subnet": "SLUG", "inputs": {"prompt": "hi \\ud800", "max_tokens": 4}, "idempotency_key": "k"}'.replace("SLUG", subnet.slug)
    assert_json_refusal(post_raw(api(), body), 400)
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    "inputs",
    [pytest.param({"texts": ["a\x00b"]}, id="embedding"), pytest.param({"prompt": "a\x00b", "max_tokens": 4}, id="text")],
)
def test_a_nul_character_in_inputs_is_a_json_400(inputs):
    subnet = text_subnet() if "prompt" in inputs else SubnetFactory()
    response = api().post("/api/v1/jobs/", {"subnet": subnet.slug, "inputs": inputs, "idempotency_key": "k"}, format="json")
    assert_json_refusal(response, 400)
    assert Job.objects.count() == 0


def test_an_idempotency_key_longer_than_the_column_is_a_json_400():
    subnet = SubnetFactory()
    client = api()
    body = {"subnet": subnet.slug, "inputs": {"texts": ["a"]}}

    in_header = client.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY="k" * 300)
    in_body = client.post("/api/v1/jobs/", {**body, "idempotency_key": "k" * 300}, format="json")

    assert assert_json_refusal(in_header, 400)["code"] == "idempotency_key_invalid"
    assert_json_refusal(in_body, 400)
    assert Job.objects.count() == 0


def test_json_nested_ten_thousand_deep_is_a_json_400():
    deep = "[" * 10_000 + "]" * 10_000
    response = post_raw(api(), '{"subnet": "x", "inputs": {"texts": ' + deep + '}, "idempotency_key": "k"}')
    assert assert_json_refusal(response, 400)["code"] == "parse_error"


def test_malformed_json_is_a_json_400_with_a_code():
    assert assert_json_refusal(post_raw(api(), b"{not json"), 400)["code"] == "parse_error"


def test_a_body_over_the_upload_limit_is_a_json_413(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = '{"subnet": "x", "inputs": {"texts": ["' + "a" * 20_000 + '"]}, "idempotency_key": "k"}'
    assert assert_json_refusal(post_raw(api(), body), 413)["code"] == "request_too_large"


def test_an_unknown_url_under_the_api_is_a_json_404():
    for path in ("/api/v1/no-such-thing/", "/api/nothing", "/api/v1/jobs/not-a-uuid/"):
        assert assert_json_refusal(api().get(path), 404)["code"] == "not_found", path


def test_an_unknown_job_is_a_json_404_with_a_code():
    body = assert_json_refusal(api().get("/api/v1/jobs/00000000-0000-0000-0000-000000000000/"), 404)
    assert body["code"] == "not_found"


def test_api_refusals_from_drf_carry_a_code():
    anonymous = APIClient().get("/api/v1/jobs/")
    assert assert_json_refusal(anonymous, 401)["code"] == "not_authenticated"
    invalid = api().post("/api/v1/jobs/", {"inputs": "x"}, format="json")
    assert assert_json_refusal(invalid, 400)["code"] == "invalid"
    wrong_method = api().delete("/api/v1/balance/")
    assert assert_json_refusal(wrong_method, 405)["code"] == "method_not_allowed"


def test_pages_outside_the_api_keep_html_404s(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")

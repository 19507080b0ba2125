"""Refusals of the OpenAI-compatible API in OpenAI's error shape, before anything is held:
no key, a model of another family than the endpoint's, a subnet no node serves."""

from __future__ import annotations

import pytest

from developer import keys
from ledger import selectors as ledger_selectors
from registry.models import Job
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db(transaction=True)


def post(client, path: str, body: dict, key: str | None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
    return client.post(path, body, content_type="application/json", **headers)


def test_refusals_take_openais_error_shape_and_hold_nothing(client, settings):
    settings.BIM_RETRY_AFTER_S = 30
    embeddings, text = SubnetFactory(), SubnetFactory(task_type="text")
    online_node(text, ready=False)
    user = user_with_credits(5)
    _, key = keys.api_key_create(user=user, name="t")

    missing = post(client, "/v1/embeddings", {"model": embeddings.slug, "input": "x"}, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error" and missing["x-should-retry"] == "false"

    family = post(client, "/v1/embeddings", {"model": text.slug, "input": "x"}, key)
    assert (family.status_code, family.json()["error"]["code"]) == (400, "wrong_model_family")

    no_nodes = post(client, "/v1/embeddings", {"model": embeddings.slug, "input": "x"}, key)
    assert (no_nodes.status_code, no_nodes.json()["error"]["code"]) == (503, "no_capacity")
    assert no_nodes["Retry-After"] == "30" and no_nodes["x-should-retry"] == "true"

    assert not Job.objects.exists()
    assert ledger_selectors.balance_totals(user=user)["held_micro"] == 0

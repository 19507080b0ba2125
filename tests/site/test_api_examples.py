"""The request bodies the API docs page shows are bodies the API accepts: each example the
schema (/api/schema/, what Swagger UI at /api/docs/ renders) gives for POST /api/v1/jobs/ is
taken out of the generated schema and submitted as it is, with a developer's API key, to a
subnet with that slug, the real settings of its family and a node connected."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from developer.keys import api_key_create
from registry.models import Job
from subnets import defaults
from tests.factories import served_subnet, user_with_credits

# What the default subnet of each family is made of, as `manage.py` seeds it.
SUBNET_SETTINGS = {
    defaults.EMBEDDINGS_SLUG: defaults.embeddings_subnet_settings,
    defaults.TEXT_SLUG: defaults.text_subnet_settings,
    defaults.IMAGE_SLUG: defaults.image_subnet_settings,
}


def job_submit_examples() -> dict[str, dict[str, Any]]:
    answer = APIClient().get("/api/schema/", {"format": "json"})
    assert answer.status_code == 200
    body = json.loads(answer.content)["paths"]["/api/v1/jobs/"]["post"]["requestBody"]
    return {name: example["value"] for name, example in body["content"]["application/json"]["examples"].items()}


def test_the_docs_show_a_job_body_for_every_task_family():
    examples = job_submit_examples()

    assert {example["subnet"] for example in examples.values()} == set(SUBNET_SETTINGS)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(job_submit_examples()))
def test_the_api_accepts_the_documented_job_body(name):
    cache.clear()  # no throttle counts left from other tests
    body = job_submit_examples()[name]
    subnet = served_subnet(slug=body["subnet"], **SUBNET_SETTINGS[body["subnet"]]())
    user = user_with_credits(10)
    _, key = api_key_create(user=user, name="docs example")

    answer = APIClient().post("/api/v1/jobs/", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert answer.status_code == 201, answer.content
    job = Job.objects.get(pk=answer.json()["id"])
    assert (job.user, job.subnet, job.state) == (user, subnet, "queued")
    assert job.idempotency_key == body["idempotency_key"]

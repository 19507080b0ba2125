"""The dashboard offers a browser every subnet its engine computes (js/jobs.js TASK_TYPES):
an image subnet is served like an embedding one, each row with the cell where the page
shows the backend it will use; a family the engine lacks says so instead."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import SubnetFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_an_image_subnet_is_computable_in_a_browser_and_its_row_has_a_backend_cell(client):
    client.force_login(UserFactory(username="iris"))
    SubnetFactory(slug="embed-one")
    SubnetFactory(slug="upscale-2x", task_type="image")
    SubnetFactory(slug="some-future-family", task_type="audio")

    answer = client.get(reverse("contributor:dashboard"))
    config = {row["slug"]: row for row in answer.context["config"]["subnets"]}
    page = answer.content.decode()
    assert config["upscale-2x"]["unavailable"] == "" and config["upscale-2x"]["task_type"] == "image"
    assert config["embed-one"]["unavailable"] == ""
    assert config["some-future-family"]["unavailable"].startswith("browsers do not compute audio jobs yet")
    for slug in ("upscale-2x", "embed-one", "some-future-family"):
        assert f'data-testid="plan-{slug}"' in page

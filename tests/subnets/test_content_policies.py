"""A subnet's content policy is stored validated, and a changed policy takes a higher
version, so a version in a contract or receipt names one text of the policy."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from bim_core.errors import ServiceError
from subnets.content_policies import subnet_policy_set
from tests.factories import SubnetFactory

pytestmark = pytest.mark.django_db

V1 = {"id": "p", "version": 1, "input": {"max_chars": 100}}


def test_a_changed_policy_needs_a_higher_version():
    subnet = SubnetFactory(content_policy=V1)
    with pytest.raises(ServiceError) as refused:
        subnet_policy_set(subnet=subnet, policy={**V1, "input": {"max_chars": 50}})
    assert refused.value.code == "policy_version_not_raised"

    assert subnet_policy_set(subnet=subnet, policy=V1).content_policy == V1  # unchanged: fine
    v2 = {**V1, "version": 2, "input": {"max_chars": 50}}
    subnet_policy_set(subnet=subnet, policy=v2)
    subnet.refresh_from_db()
    assert subnet.content_policy == v2


def test_a_malformed_policy_is_refused_by_the_service_and_the_model():
    subnet = SubnetFactory()
    bad = {"id": "p", "version": 1, "input": {"blocked": [{"name": "a", "patterns": ["(a+)+b"]}]}}
    with pytest.raises(ServiceError) as refused:
        subnet_policy_set(subnet=subnet, policy=bad)
    assert refused.value.code == "invalid_policy"
    subnet.content_policy = bad
    with pytest.raises(ValidationError, match="content_policy"):
        subnet.full_clean()


def test_the_admin_form_refuses_a_changed_policy_without_a_higher_version(admin_client):
    subnet = SubnetFactory(content_policy=V1)
    url = f"/admin/subnets/subnet/{subnet.pk}/change/"
    page = admin_client.get(url)
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update({k: v for k, v in form.initial.items() if k not in data and v is not None})
    for name in ("determinism", "tolerances", "preprocessing", "routing_policy", "score_policy", "reputation_policy"):
        data[name] = form[name].value()
    for inline in page.context["inline_admin_formsets"]:  # artifacts, history: read-only
        management = inline.formset.management_form
        data.update({f"{management.prefix}-{name}": management[name].value() for name in management.fields})

    data["content_policy"] = '{"id": "p", "version": 1, "input": {"max_chars": 5}}'
    refused = admin_client.post(url, data)
    assert refused.status_code == 200 and "needs a version above 1" in refused.content.decode()

    data["content_policy"] = '{"id": "p", "version": 2, "input": {"max_chars": 5}}'
    assert admin_client.post(url, data).status_code == 302
    subnet.refresh_from_db()
    assert subnet.content_policy["version"] == 2

"""Subnets' data-handling terms and users' acknowledgements of them (issue 15, user opt-in
per subnet): versioned terms, a change bumps the version, acknowledgements record version,
time and address, withdrawal stamps and keeps the history."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bim_core.errors import ServiceError
from subnets import data_terms
from subnets.lifecycle import subnet_data_terms_set
from subnets.models import Subnet, UserDataAcknowledgement
from tests.factories import SubnetFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("task_type", "inputs"),
    [("embedding", "the texts you send"), ("text", "your prompts"), ("image", "the images you send")],
)
def test_each_family_has_default_terms_saying_what_contributors_see(task_type, inputs):
    subnet = SubnetFactory(task_type=task_type)

    text = data_terms.data_terms_text(subnet)

    assert subnet.data_terms == "" and subnet.data_terms_version == 1
    assert f"What contributors see: {inputs}" in text
    assert "What BIM keeps" in text
    assert inputs in data_terms.data_terms_summary(subnet)


def test_new_terms_bump_the_version_and_the_same_terms_do_not():
    subnet = SubnetFactory()

    subnet_data_terms_set(subnet=subnet, text="Contributors see everything.")
    assert (subnet.data_terms_version, data_terms.data_terms_text(subnet)) == (2, "Contributors see everything.")

    subnet_data_terms_set(subnet=subnet, text="Contributors see everything.")
    assert Subnet.objects.get(pk=subnet.pk).data_terms_version == 2

    # Back to blank is back to the default text: a change users must read again.
    subnet_data_terms_set(subnet=subnet, text="")
    assert Subnet.objects.get(pk=subnet.pk).data_terms_version == 3


def test_setting_the_default_text_explicitly_is_no_change():
    subnet = SubnetFactory(task_type="text")

    subnet_data_terms_set(subnet=subnet, text=data_terms.default_terms("text"))

    assert Subnet.objects.get(pk=subnet.pk).data_terms_version == 1


def test_an_acknowledgement_records_version_time_and_address_once():
    user, subnet = UserFactory(), SubnetFactory()

    first, created = data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=1, ip="203.0.113.9")
    again, created_again = data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=1, ip="198.51.100.1")

    assert created and not created_again and again.pk == first.pk
    assert (first.terms_version, first.ip, first.withdrawn_at) == (1, "203.0.113.9", None)
    assert first.accepted_at is not None
    assert data_terms.data_terms_acknowledged(user=user, subnet=subnet)


def test_a_stale_version_is_refused():
    user, subnet = UserFactory(), SubnetFactory()
    subnet_data_terms_set(subnet=subnet, text="new terms")

    with pytest.raises(ServiceError) as refused:
        data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=1, ip=None)

    assert refused.value.code == "data_terms_version_mismatch" and refused.value.status == 409
    assert not UserDataAcknowledgement.objects.exists()


def test_changed_terms_need_a_new_acknowledgement():
    user, subnet = UserFactory(), SubnetFactory()
    data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=1, ip=None)

    subnet_data_terms_set(subnet=subnet, text="Contributors also see your account name.")

    assert not data_terms.data_terms_acknowledged(user=user, subnet=subnet)
    data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=2, ip=None)
    assert data_terms.data_terms_acknowledged(user=user, subnet=subnet)


def test_withdrawing_stamps_the_row_and_acknowledging_again_adds_one():
    user, subnet = UserFactory(), SubnetFactory()
    first, _ = data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=1, ip=None)

    assert data_terms.data_terms_withdraw(user=user, subnet=subnet) == 1
    assert not data_terms.data_terms_acknowledged(user=user, subnet=subnet)
    assert data_terms.data_terms_withdraw(user=user, subnet=subnet) == 0

    second, created = data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=1, ip=None)
    assert created and second.pk != first.pk
    first.refresh_from_db()
    assert first.withdrawn_at is not None
    assert UserDataAcknowledgement.objects.filter(user=user, subnet=subnet).count() == 2


def test_acknowledgements_are_per_subnet_and_per_user():
    user, other = UserFactory(), UserFactory()
    subnet, second = SubnetFactory(), SubnetFactory()
    data_terms.data_terms_acknowledge(user=user, subnet=subnet, version=1, ip=None)

    assert not data_terms.data_terms_acknowledged(user=user, subnet=second)
    assert not data_terms.data_terms_acknowledged(user=other, subnet=subnet)


def test_the_bulk_check_answers_many_subnets_in_one_query():
    user = UserFactory()
    subnets = [SubnetFactory() for _ in range(4)]
    data_terms.data_terms_acknowledge(user=user, subnet=subnets[0], version=1, ip=None)
    data_terms.data_terms_acknowledge(user=user, subnet=subnets[2], version=1, ip=None)
    subnet_data_terms_set(subnet=subnets[2], text="changed")
    data_terms.data_terms_acknowledge(user=user, subnet=subnets[3], version=1, ip=None)
    data_terms.data_terms_withdraw(user=user, subnet=subnets[3])

    with CaptureQueriesContext(connection) as queries:
        acknowledged = data_terms.data_terms_acknowledged_many(user=user, subnets=subnets)

    assert acknowledged == {subnets[0].pk}
    assert len(queries.captured_queries) == 1


def test_an_operator_changing_the_terms_in_admin_bumps_the_version(admin_client):
    subnet = SubnetFactory()
    page = admin_client.get(f"/admin/subnets/subnet/{subnet.pk}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name in form.fields}
    data.update(
        {
            "license": subnet.license_id,
            "data_terms": "Contributors see your texts and keep nothing.",
        }
    )
    for inline in page.context["inline_admin_formsets"]:  # artifacts, history: read-only
        management = inline.formset.management_form
        data.update({f"{management.prefix}-{name}": management[name].value() for name in management.fields})
    for name, value in list(data.items()):
        if isinstance(value, dict | list):
            import json

            data[name] = json.dumps(value)

    response = admin_client.post(f"/admin/subnets/subnet/{subnet.pk}/change/", data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    subnet.refresh_from_db()
    assert subnet.data_terms == "Contributors see your texts and keep nothing."
    assert subnet.data_terms_version == 2
    logged = set(subnet.changes.values_list("field", flat=True))
    assert {"data_terms", "data_terms_version"} <= logged  # in the subnet's history, like any edit

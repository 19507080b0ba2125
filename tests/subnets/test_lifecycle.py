"""A subnet's states and its change log (subnets.lifecycle): draft → active ↔ paused →
retired, activation only with a benchmark reference for the current model, and every
field change recorded with who, when, before and after, in the change's transaction."""

from __future__ import annotations

import pytest

from bim_core.errors import ServiceError
from subnets.lifecycle import subnet_state_change, subnet_update
from subnets.models import Subnet, SubnetChange
from tests.factories import LicenseFactory, SubnetFactory, UserFactory, benchmark_reference

pytestmark = pytest.mark.django_db

State = Subnet.State


reference_for = benchmark_reference


def test_a_draft_is_activated_once_it_has_a_benchmark_reference():
    operator = UserFactory()
    subnet = SubnetFactory(state=State.DRAFT)

    with pytest.raises(ServiceError) as refused:
        subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=operator, reason="go")
    assert refused.value.code == "benchmark_reference_missing"
    assert "no benchmark reference" in refused.value.detail
    subnet.refresh_from_db()
    assert subnet.state == State.DRAFT and not subnet.changes.exists()

    reference_for(subnet)
    changed, before = subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=operator, reason="go")

    assert (before, changed.state) == (State.DRAFT, State.ACTIVE)
    change = subnet.changes.get()
    assert (change.operator, change.field, change.before, change.after, change.reason) == (operator, "state", "draft", "active", "go")


def test_a_reference_for_another_model_does_not_activate():
    subnet = SubnetFactory(state=State.DRAFT)
    reference_for(subnet, checksum="cd" * 32)
    with pytest.raises(ServiceError) as refused:
        subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=None, reason="go")
    assert refused.value.code == "benchmark_reference_stale"


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (State.ACTIVE, State.PAUSED),
        (State.PAUSED, State.ACTIVE),
        (State.ACTIVE, State.RETIRED),
        (State.PAUSED, State.RETIRED),
        (State.DRAFT, State.RETIRED),
    ],
)
def test_allowed_transitions(start, to):
    subnet = SubnetFactory(state=start)
    reference_for(subnet)
    subnet_state_change(subnet_id=subnet.pk, to=to, operator=None, reason="ops")
    subnet.refresh_from_db()
    assert subnet.state == to


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (State.RETIRED, State.ACTIVE),
        (State.RETIRED, State.PAUSED),
        (State.DRAFT, State.PAUSED),
        (State.ACTIVE, State.DRAFT),
        (State.PAUSED, State.PAUSED),
    ],
)
def test_it_refuses_transitions_the_lifecycle_does_not_allow(start, to):
    subnet = SubnetFactory(state=start)
    reference_for(subnet)
    with pytest.raises(ServiceError) as refused:
        subnet_state_change(subnet_id=subnet.pk, to=to, operator=None, reason="ops")
    assert refused.value.code == "invalid_transition" and refused.value.status == 409
    subnet.refresh_from_db()
    assert subnet.state == start and not subnet.changes.exists()


def test_a_state_change_needs_a_reason_and_a_real_state():
    subnet = SubnetFactory()
    with pytest.raises(ServiceError, match="say why"):
        subnet_state_change(subnet_id=subnet.pk, to=State.PAUSED, operator=None, reason="  ")
    with pytest.raises(ServiceError) as refused:
        subnet_state_change(subnet_id=subnet.pk, to="deleted", operator=None, reason="x")
    assert refused.value.code == "invalid_state"


def test_every_changed_field_is_logged_with_before_and_after():
    operator = UserFactory()
    subnet = SubnetFactory(price_per_item_micro=1000)
    other_license = LicenseFactory(slug="mit", version="1")

    updated, logged = subnet_update(
        subnet_id=subnet.pk,
        changes={
            "price_per_item_micro": 1500,
            "tolerances": {"cosine_min": 0.999, "norm_tolerance": 0.001},
            "price_per_call_micro": subnet.price_per_call_micro,  # unchanged: not logged
            "license_id": other_license.pk,
        },
        operator=operator,
        reason="new tariff",
    )

    assert updated.price_per_item_micro == 1500 and updated.license_id == other_license.pk
    rows = {c.field: (c.before, c.after) for c in SubnetChange.objects.filter(subnet=subnet)}
    assert rows == {
        "price_per_item_micro": (1000, 1500),
        "tolerances": ({"cosine_min": 0.9999, "norm_tolerance": 0.001}, {"cosine_min": 0.999, "norm_tolerance": 0.001}),
        "license": (subnet.license_id, other_license.pk),
    }
    assert {c.operator for c in logged} == {operator} and {c.reason for c in logged} == {"new tariff"}


def test_an_invalid_change_writes_nothing():
    subnet = SubnetFactory()
    with pytest.raises(ServiceError) as refused:
        subnet_update(subnet_id=subnet.pk, changes={"split_node_a_bp": 9000}, operator=None)
    assert refused.value.code == "invalid_subnet"
    subnet.refresh_from_db()
    assert subnet.split_node_a_bp == 4000 and not subnet.changes.exists()


@pytest.mark.parametrize("field", ["state", "model_checksum", "slug"])
def test_the_state_and_checksums_are_not_edited_as_fields(field):
    subnet = SubnetFactory()
    with pytest.raises(ServiceError) as refused:
        subnet_update(subnet_id=subnet.pk, changes={field: "paused"}, operator=None)
    assert refused.value.code == "field_not_editable"


@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_an_activation_without_a_reference_behind_the_service():
    from django.db import IntegrityError

    subnet = SubnetFactory(state=State.DRAFT)
    benchmark_reference(subnet, checksum="cd" * 32)  # for another model
    with pytest.raises(IntegrityError, match="benchmark reference"):
        Subnet.objects.filter(pk=subnet.pk).update(state=State.ACTIVE)
    Subnet.objects.filter(pk=subnet.pk).update(state=State.RETIRED)  # other moves are the service's business

    fresh = SubnetFactory(state=State.PAUSED)
    benchmark_reference(fresh)
    Subnet.objects.filter(pk=fresh.pk).update(state=State.ACTIVE)
    fresh.refresh_from_db()
    assert fresh.state == State.ACTIVE

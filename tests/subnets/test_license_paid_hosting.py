"""A license that forbids paid hosting (subnets.licensing): no subnet under it is active
with a price. Refused at activation, on a price or license change of an active subnet,
on turning the flag off while active priced subnets use the license, and by the database
behind the services."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from bim_core.errors import ServiceError
from subnets import licensing
from subnets.lifecycle import subnet_state_change, subnet_update
from subnets.models import License, Subnet
from tests.factories import LicenseFactory, SubnetFactory, UserFactory, benchmark_reference

pytestmark = pytest.mark.django_db

State = Subnet.State


@pytest.fixture
def no_paid() -> License:
    return LicenseFactory(slug="research-only", version="1", name="Research only", allows_paid_hosting=False)


def draft(license_: License, **prices: int) -> Subnet:
    subnet = SubnetFactory(state=State.DRAFT, license=license_, **prices)
    benchmark_reference(subnet)
    return subnet


def test_activating_a_priced_subnet_under_a_no_paid_hosting_license_is_refused(no_paid):
    subnet = draft(no_paid)

    with pytest.raises(ServiceError) as refused:
        subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=UserFactory(), reason="launch")

    assert refused.value.code == "license_forbids_paid_hosting" and refused.value.status == 409
    assert "research-only" in refused.value.detail and "forbids paid hosting" in refused.value.detail
    subnet.refresh_from_db()
    assert subnet.state == State.DRAFT and not subnet.changes.exists()


@pytest.mark.parametrize("prices", [{"price_per_call_micro": 1, "price_per_item_micro": 0}, {"price_per_call_micro": 0, "price_per_item_micro": 1}])
def test_either_price_makes_a_subnet_paid(no_paid, prices):
    subnet = draft(no_paid, **prices)
    with pytest.raises(ServiceError, match="forbids paid hosting"):
        subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=None, reason="launch")


def test_a_free_subnet_under_the_same_license_is_activated(no_paid):
    subnet = draft(no_paid, price_per_call_micro=0, price_per_item_micro=0)
    subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=None, reason="launch")
    subnet.refresh_from_db()
    assert subnet.state == State.ACTIVE


def test_resuming_a_paused_priced_subnet_is_refused_too(no_paid):
    subnet = draft(no_paid)
    Subnet.objects.filter(pk=subnet.pk).update(state=State.PAUSED)  # paused: the guard does not apply
    with pytest.raises(ServiceError, match="forbids paid hosting"):
        subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=None, reason="resume")


def test_pricing_an_active_free_subnet_is_refused(no_paid):
    subnet = SubnetFactory(license=no_paid, price_per_call_micro=0, price_per_item_micro=0)

    with pytest.raises(ServiceError) as refused:
        subnet_update(subnet_id=subnet.pk, changes={"price_per_item_micro": 5}, operator=None, reason="monetise")

    assert refused.value.code == "license_forbids_paid_hosting"
    subnet.refresh_from_db()
    assert subnet.price_per_item_micro == 0 and not subnet.changes.exists()


def test_a_paused_subnet_may_be_priced_but_not_resumed_so(no_paid):
    subnet = SubnetFactory(license=no_paid, state=State.PAUSED, price_per_call_micro=0, price_per_item_micro=0)
    benchmark_reference(subnet)
    subnet_update(subnet_id=subnet.pk, changes={"price_per_item_micro": 5}, operator=None)
    with pytest.raises(ServiceError, match="forbids paid hosting"):
        subnet_state_change(subnet_id=subnet.pk, to=State.ACTIVE, operator=None, reason="resume")


def test_moving_an_active_priced_subnet_to_a_no_paid_hosting_license_version_is_refused(no_paid):
    old = LicenseFactory(slug="research-only", version="0.9", name="Research only", allows_paid_hosting=True)
    subnet = SubnetFactory(license=old)

    with pytest.raises(ServiceError, match="forbids paid hosting"):
        subnet_update(subnet_id=subnet.pk, changes={"license_id": no_paid.pk}, operator=None, reason="new terms")

    subnet.refresh_from_db()
    assert subnet.license_id == old.pk
    # Free first, then the new version: allowed.
    subnet_update(
        subnet_id=subnet.pk,
        changes={"price_per_call_micro": 0, "price_per_item_micro": 0, "license_id": no_paid.pk},
        operator=None,
        reason="new terms, hosted for free",
    )
    subnet.refresh_from_db()
    assert subnet.license_id == no_paid.pk


def test_unrelated_edits_are_not_checked_against_the_license(no_paid):
    # A row that predates the rule (written behind the services) still takes other edits.
    subnet = SubnetFactory(license=no_paid, price_per_call_micro=0, price_per_item_micro=0)
    subnet_update(subnet_id=subnet.pk, changes={"latency_ms": 30_000}, operator=None)
    subnet.refresh_from_db()
    assert subnet.latency_ms == 30_000


def test_turning_paid_hosting_off_is_refused_while_active_priced_subnets_use_the_license():
    license_ = LicenseFactory(slug="custom", version="1", allows_paid_hosting=True)
    SubnetFactory(slug="paid-one", license=license_)
    SubnetFactory(slug="free-one", license=license_, price_per_call_micro=0, price_per_item_micro=0)
    SubnetFactory(slug="paused-one", license=license_, state=State.PAUSED)

    with pytest.raises(ServiceError) as refused:
        licensing.license_flags_check(license_, allows_paid_hosting=False)
    assert refused.value.code == "license_forbids_paid_hosting"
    assert "paid-one" in refused.value.detail
    assert "free-one" not in refused.value.detail and "paused-one" not in refused.value.detail

    Subnet.objects.filter(slug="paid-one").update(state=State.PAUSED)
    licensing.license_flags_check(license_, allows_paid_hosting=False)  # nothing active and priced: allowed


# ---------------------------------------------------------------- the database behind the services


@pytest.mark.django_db(transaction=True)
def test_the_database_refuses_an_active_priced_subnet_under_a_no_paid_hosting_license():
    no_paid = LicenseFactory(slug="research-only", version="1", allows_paid_hosting=False)
    subnet = draft(no_paid)
    with pytest.raises(IntegrityError, match="forbids paid hosting"), transaction.atomic():
        Subnet.objects.filter(pk=subnet.pk).update(state=State.ACTIVE)
    with pytest.raises(IntegrityError, match="forbids paid hosting"), transaction.atomic():
        SubnetFactory(license=no_paid)  # inserted active and priced
    free = SubnetFactory(license=no_paid, price_per_call_micro=0, price_per_item_micro=0)
    with pytest.raises(IntegrityError, match="forbids paid hosting"), transaction.atomic():
        Subnet.objects.filter(pk=free.pk).update(price_per_call_micro=10)
    paid_license = LicenseFactory(slug="apache-2.0", version="2.0")
    priced = SubnetFactory(license=paid_license)
    with pytest.raises(IntegrityError, match="forbids paid hosting"), transaction.atomic():
        Subnet.objects.filter(pk=priced.pk).update(license=no_paid)
    with pytest.raises(IntegrityError, match="forbids paid hosting"), transaction.atomic():
        License.objects.filter(pk=paid_license.pk).update(allows_paid_hosting=False)

    assert Subnet.objects.get(pk=subnet.pk).state == State.DRAFT
    assert Subnet.objects.get(pk=priced.pk).license_id == paid_license.pk
    assert License.objects.get(pk=paid_license.pk).allows_paid_hosting is True
    # What the rule allows goes through: a free active subnet, a paused priced one.
    Subnet.objects.filter(pk=free.pk).update(latency_ms=1000)
    Subnet.objects.filter(pk=priced.pk).update(state=State.PAUSED)
    License.objects.filter(pk=paid_license.pk).update(allows_paid_hosting=False)


def test_contracts_name_the_license_in_force(no_paid):
    subnet = SubnetFactory(license=no_paid, price_per_call_micro=0, price_per_item_micro=0)
    assert licensing.license_terms(subnet) == {"slug": "research-only", "version": "1"}

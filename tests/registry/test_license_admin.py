"""License enforcement on the admin pages: each refusal names its reason on the page and
changes nothing (subnets.licensing, through registry.subnet_admin and subnets.admin)."""

from __future__ import annotations

import pytest

from subnets.models import License, Subnet
from tests.factories import LicenseFactory, SubnetFactory, UserFactory, benchmark_reference
from tests.registry.test_subnet_admin import ADD_URL, change_form_data, change_url, logged_in, state_url

pytestmark = pytest.mark.django_db

State = Subnet.State


@pytest.fixture
def root():
    return logged_in(UserFactory(username="root", is_staff=True, is_superuser=True))


@pytest.fixture
def no_paid() -> License:
    return LicenseFactory(slug="research-only", version="1", name="Research only", allows_paid_hosting=False)


def test_the_state_page_refuses_to_activate_a_priced_subnet_under_a_no_paid_hosting_license(root, no_paid):
    subnet = SubnetFactory(state=State.DRAFT, license=no_paid)
    benchmark_reference(subnet)

    response = root.post(state_url(subnet), {"to": State.ACTIVE, "reason": "launch"})

    assert response.status_code == 409
    assert "forbids paid hosting" in response.content.decode()
    subnet.refresh_from_db()
    assert subnet.state == State.DRAFT and not subnet.changes.exists()


def test_the_change_form_refuses_a_price_the_license_forbids(root, no_paid):
    subnet = SubnetFactory(license=no_paid, price_per_call_micro=0, price_per_item_micro=0)
    data = change_form_data(root, subnet)
    data["price_per_item_micro"] = "500"

    response = root.post(change_url(subnet), data)

    assert response.status_code == 200
    assert "forbids paid hosting" in response.content.decode()
    subnet.refresh_from_db()
    assert subnet.price_per_item_micro == 0 and not subnet.changes.exists()


def test_the_change_form_refuses_a_license_version_that_forbids_the_subnets_price(root, no_paid):
    subnet = SubnetFactory()
    data = change_form_data(root, subnet)
    data["license"] = str(no_paid.pk)

    response = root.post(change_url(subnet), data)

    assert response.status_code == 200 and "forbids paid hosting" in response.content.decode()
    subnet.refresh_from_db()
    assert subnet.license.slug == "apache-2.0"


def test_the_license_page_refuses_to_forbid_paid_hosting_under_an_active_priced_subnet(root):
    license_ = LicenseFactory(slug="custom", version="1")
    SubnetFactory(slug="paid-one", license=license_)
    page = f"/admin/subnets/license/{license_.pk}/change/"
    data = {"slug": "custom", "version": "1", "name": "Custom", "url": "", "text": "", "allows_redistribution": "on"}

    response = root.post(page, data)

    assert response.status_code == 200
    text = response.content.decode()
    assert "paid-one" in text and "before forbidding paid hosting" in text
    license_.refresh_from_db()
    assert license_.allows_paid_hosting is True

    Subnet.objects.filter(slug="paid-one").update(state=State.PAUSED)
    assert root.post(page, data).status_code == 302
    license_.refresh_from_db()
    assert license_.allows_paid_hosting is False


def test_creating_a_priced_subnet_to_activate_under_a_no_paid_hosting_license_is_refused_on_the_form(root, no_paid):
    response = root.post(
        ADD_URL,
        {"package": "minilm-int8", "slug": "research", "license": str(no_paid.pk), "price_per_item_micro": "100", "activate": "on"},
    )

    assert response.status_code == 200
    assert "forbids paid hosting" in response.content.decode()
    assert not Subnet.objects.filter(slug="research").exists()

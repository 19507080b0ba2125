"""Careless or malicious operators (issue 11): a license acceptance is the record that a
user agreed to a model's terms; admin shows it and can neither edit nor delete it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from subnets.models import EulaAcceptance
from tests.factories import SubnetFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def acceptance() -> EulaAcceptance:
    subnet = SubnetFactory()
    return EulaAcceptance.objects.create(
        user=UserFactory(), subnet=subnet, license=subnet.license, license_version=subnet.license.version, ip="10.0.0.1"
    )


def test_a_superuser_cannot_delete_a_license_acceptance(superuser_client, acceptance):
    response = superuser_client.post(reverse("admin:subnets_eulaacceptance_delete", args=[acceptance.pk]), {"post": "yes"})

    assert response.status_code == 403
    assert EulaAcceptance.objects.filter(pk=acceptance.pk).exists()


def test_a_superuser_cannot_delete_license_acceptances_from_the_list(superuser_client, acceptance):
    superuser_client.post(
        reverse("admin:subnets_eulaacceptance_changelist"),
        {"action": "delete_selected", "_selected_action": [acceptance.pk], "post": "yes"},
    )

    assert EulaAcceptance.objects.filter(pk=acceptance.pk).exists()


def test_a_superuser_cannot_edit_a_license_acceptance(superuser_client, acceptance):
    other = UserFactory()
    url = reverse("admin:subnets_eulaacceptance_change", args=[acceptance.pk])

    response = superuser_client.post(url, {"user": other.pk, "license_version": "9.9", "ip": "10.9.9.9"})

    assert response.status_code == 403
    acceptance.refresh_from_db()
    assert (acceptance.user_id, acceptance.license_version, acceptance.ip) != (other.pk, "9.9", "10.9.9.9")
    assert acceptance.license_version == acceptance.license.version
    assert superuser_client.get(url).status_code == 200  # still shown
    assert superuser_client.get(reverse("admin:subnets_eulaacceptance_add")).status_code == 403

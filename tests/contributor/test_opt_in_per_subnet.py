"""Opting in is per subnet (issue 12): accepting a license for one subnet must not opt the
contributor into another subnet under the same license; opting out stops the owner's nodes
being offered the subnet's work at once; the dashboard says why a subnet is not served."""

from __future__ import annotations

import pytest
from django.urls import reverse

from bim_core import protocol
from registry import presence
from registry.models import NodeSubnet
from subnets.models import EulaAcceptance, License
from tests.factories import SubnetFactory, UserFactory, online_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def contributor(client):
    user = UserFactory(username="olga")
    client.force_login(user)
    return user


@pytest.fixture
def twins():
    """Two embedding subnets under one license (SubnetFactory shares apache-2.0 2.0)."""
    first, second = SubnetFactory(slug="embed-first"), SubnetFactory(slug="embed-second")
    assert first.license_id == second.license_id
    return first, second


def _opt_in(client, subnet):
    return client.post(reverse("contributor:opt-in", args=[subnet.slug]), {"license_version": subnet.license.version, "accept": "on"})


def _config(client):
    return {row["slug"]: row for row in client.get(reverse("contributor:dashboard")).context["config"]["subnets"]}


def test_accepting_a_license_for_one_subnet_leaves_its_twin_alone(client, contributor, twins):
    first, second = twins
    assert _opt_in(client, first).status_code == 302

    config = _config(client)
    assert config["embed-first"]["opted_in"] is True
    assert config["embed-second"]["opted_in"] is False
    key = protocol.public_key_b64(protocol.new_private_key())
    from bim_core.errors import ServiceError

    with pytest.raises(ServiceError) as refused:
        presence.node_register(owner=contributor, public_key=key, name="b", env={}, subnet_slugs=["embed-second"], ip=None)
    assert refused.value.code == "license_not_accepted"
    node, _ = presence.node_register(owner=contributor, public_key=key, name="b", env={}, subnet_slugs=["embed-first"], ip=None)
    assert list(node.subnets.values_list("slug", flat=True)) == ["embed-first"]


def test_a_node_registered_for_a_twin_cannot_ready_it_without_its_own_opt_in(twins):
    first, second = twins
    keys = online_node(first, ready=False)
    NodeSubnet.objects.create(node=keys.node, subnet=second)  # as a node registered before this change could be
    with pytest.raises(protocol.ProtocolError) as refused:
        presence.node_ready(node_id=keys.node.pk, subnet_slug="embed-second", model_checksum=second.model_checksum, max_concurrent=1)
    assert refused.value.code == "license_not_accepted"


def test_opting_out_stops_the_owners_nodes_at_once_and_keeps_the_record(client, contributor, twins):
    first, second = twins
    _opt_in(client, first)
    _opt_in(client, second)
    on_first = online_node(first, owner=contributor)
    on_second = online_node(second, owner=contributor)
    assert NodeSubnet.objects.filter(node__owner=contributor, ready_at__isnull=False).count() == 2

    response = client.post(reverse("contributor:opt-out", args=[first.slug]))

    assert response.status_code == 302 and response.url == reverse("contributor:dashboard")
    assert NodeSubnet.objects.get(node=on_first.node, subnet=first).ready_at is None
    assert NodeSubnet.objects.get(node=on_second.node, subnet=second).ready_at is not None  # the twin serves on
    with pytest.raises(protocol.ProtocolError) as refused:
        presence.node_ready(node_id=on_first.node.pk, subnet_slug=first.slug, model_checksum=first.model_checksum, max_concurrent=1)
    assert refused.value.code == "license_not_accepted"
    withdrawn = EulaAcceptance.objects.get(user=contributor, subnet=first)
    assert withdrawn.withdrawn_at is not None
    page = client.get(reverse("contributor:dashboard"))
    assert f'data-testid="opted-out-{first.slug}"'.encode() in page.content
    assert _config(client)[first.slug]["opted_in"] is False

    # Opting in again is a new record; the withdrawn one stays as it was.
    _opt_in(client, first)
    assert EulaAcceptance.objects.filter(user=contributor, subnet=first).count() == 2
    assert EulaAcceptance.objects.get(pk=withdrawn.pk).withdrawn_at == withdrawn.withdrawn_at
    presence.node_ready(node_id=on_first.node.pk, subnet_slug=first.slug, model_checksum=first.model_checksum, max_concurrent=1)
    assert NodeSubnet.objects.get(node=on_first.node, subnet=first).ready_at is not None


def test_opting_out_needs_a_post_a_login_and_a_real_subnet(client, twins):
    first, _ = twins
    url = reverse("contributor:opt-out", args=[first.slug])
    assert client.post(url).status_code == 302  # to the login page
    user = UserFactory()
    client.force_login(user)
    assert client.get(url).status_code == 405
    assert client.post(reverse("contributor:opt-out", args=["no-such-subnet"])).status_code == 404
    # Not opted in: nothing to withdraw, nothing written.
    assert client.post(url).status_code == 302
    assert not EulaAcceptance.objects.filter(user=user).exists()


def test_opting_in_twice_records_one_standing_acceptance(client, contributor, twins):
    first, _ = twins
    _opt_in(client, first)
    _opt_in(client, first)
    assert EulaAcceptance.objects.filter(user=contributor, subnet=first, withdrawn_at__isnull=True).count() == 1


def test_the_dashboard_says_why_a_subnet_is_not_served(client, contributor, twins):
    first, second = twins
    text = SubnetFactory(slug="smol-text", task_type="text")
    image = SubnetFactory(slug="upscale-image", task_type="image")
    _opt_in(client, first)
    _opt_in(client, second)
    # The second subnet moves to a new license version: the old acceptance no longer counts.
    second.license = License.objects.create(slug="apache-2.0", version="2.1", name="Apache License 2.0")
    second.save()

    config = _config(client)
    page = client.get(reverse("contributor:dashboard")).content.decode()
    assert config["embed-first"]["unavailable"] == ""
    assert config["embed-second"]["opted_in"] is False
    assert "license changed to apache-2.0 2.1 since you accepted 2.0" in config["embed-second"]["unavailable"]
    # Browsers compute every family: text (llama.cpp in WebAssembly) and images too.
    assert config["smol-text"]["unavailable"] == "" and config["smol-text"]["opted_in"] is False
    assert config["upscale-image"]["unavailable"] == "" and config["upscale-image"]["opted_in"] is False
    assert 'data-testid="unavailable-embed-second"' in page and 'data-testid="unavailable-upscale-image"' not in page
    assert text.slug in page and image.slug in page

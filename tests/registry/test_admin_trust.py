"""Trusted nodes in admin (issue 15): "trust" and "withdraw trust" are node actions with a
reason, each recorded as a NodeSanction with who and why and shown on the node page; they
need `registry.change_node` (a view-only user is offered neither and a forged post
changes nothing); the flag is read-only on the node form; the services refuse what does
not apply."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from bim_core.errors import ServiceError
from registry import routing_index, sanctions
from registry.models import Node, NodeSanction, SanctionKind
from tests.factories import SubnetFactory, UserFactory, online_node

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:registry_node_changelist"


def staff_with(*codenames: str):
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="registry", codename__in=codenames))
    return user


def post_action(client, action: str, nodes, **fields):
    data = {"action": action, "_selected_action": [str(node.pk) for node in nodes], **fields}
    return client.post(reverse(CHANGELIST), data)


@pytest.fixture
def subnet():
    return SubnetFactory(trusted=True, split_node_a_bp=3000, split_node_b_bp=3000, split_registry_bp=4000)


def routable(subnet) -> set[str]:
    return {c.node_id for c in routing_index.routable_index(subnet.pk).candidates}


def test_trust_is_given_with_a_reason_recorded_and_makes_the_node_routable(
    client, subnet, django_capture_on_commit_callbacks
):
    operator = staff_with("view_node", "change_node")
    client.force_login(operator)
    node = online_node(subnet).node
    assert str(node.pk) not in routable(subnet)

    form = post_action(client, "trust_nodes", [node])
    assert "admin/registry/node/sanction.html" in [t.name for t in form.templates]
    assert post_action(client, "trust_nodes", [node], apply="1", reason="  ").status_code == 200
    node.refresh_from_db()
    assert node.trusted is False and not NodeSanction.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(client, "trust_nodes", [node], apply="1", reason="rack 4, registry-owned")
    assert response.status_code == 302
    node.refresh_from_db()
    assert node.trusted is True
    sanction = NodeSanction.objects.get()
    assert (sanction.kind, sanction.reason, sanction.operator) == (SanctionKind.TRUST, "rack 4, registry-owned", operator)
    assert str(node.pk) in routable(subnet)  # the index was bumped, not left to age out

    page = client.get(reverse("admin:registry_node_change", args=[node.pk])).content.decode()
    assert "rack 4, registry-owned" in page and 'value="distrust_nodes"' in page and 'value="trust_nodes"' not in page


def test_withdrawing_trust_is_recorded_and_reports_nodes_not_trusted(client, subnet, django_capture_on_commit_callbacks):
    operator = staff_with("view_node", "change_node")
    client.force_login(operator)
    trusted = online_node(subnet, trusted=True).node
    plain = online_node(subnet).node
    assert str(trusted.pk) in routable(subnet)

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(client, "distrust_nodes", [trusted, plain], apply="1", reason="decommissioned")
    messages = [str(m) for m in response.wsgi_request._messages]
    assert "1 node(s) no longer trusted." in messages
    assert any("Refused" in m and plain.name in m and "is not trusted" in m for m in messages)
    trusted.refresh_from_db()
    assert trusted.trusted is False
    assert list(NodeSanction.objects.values_list("node_id", "kind", "reason")) == [
        (trusted.pk, SanctionKind.DISTRUST, "decommissioned")
    ]
    assert str(trusted.pk) not in routable(subnet)


@pytest.mark.parametrize("action", ["trust_nodes", "distrust_nodes"])
def test_a_view_only_staff_user_is_offered_no_trust_action_and_a_forged_post_changes_nothing(client, subnet, action):
    node = online_node(subnet, trusted=action == "distrust_nodes").node
    client.force_login(staff_with("view_node"))
    for body in (
        client.get(reverse(CHANGELIST)).content.decode(),
        client.get(reverse("admin:registry_node_change", args=[node.pk])).content.decode(),
    ):
        assert 'value="trust_nodes"' not in body and 'value="distrust_nodes"' not in body
    for forged in ({}, {"apply": "1", "reason": "forged"}):
        response = post_action(client, action, [node], **forged)
        assert "admin/registry/node/sanction.html" not in [t.name for t in response.templates]
    before = node.trusted
    node.refresh_from_db()
    assert node.trusted is before and not NodeSanction.objects.exists()


def test_the_trust_flag_is_read_only_on_the_node_form(client, subnet):
    root = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(root)
    node = online_node(subnet).node
    url = reverse("admin:registry_node_change", args=[node.pk])
    page = client.get(url).content.decode()
    assert 'name="trusted"' not in page
    client.post(url, {"name": node.name, "trusted": "on", "capabilities": "{}"})
    node.refresh_from_db()
    assert node.trusted is False and not NodeSanction.objects.exists()


def test_the_services_refuse_what_does_not_apply(subnet):
    operator = UserFactory(is_staff=True)
    node = online_node(subnet).node
    with pytest.raises(ServiceError) as refused:
        sanctions.node_trust(node_id=node.pk, operator=operator, reason="")
    assert refused.value.code == "reason_required"
    with pytest.raises(ServiceError) as refused:
        sanctions.node_distrust(node_id=node.pk, operator=operator, reason="why not")
    assert refused.value.code == "not_trusted"
    sanctions.node_trust(node_id=node.pk, operator=operator, reason="ours")
    with pytest.raises(ServiceError) as refused:
        sanctions.node_trust(node_id=node.pk, operator=operator, reason="again")
    assert refused.value.code == "already_trusted"
    with pytest.raises(ServiceError) as refused:
        sanctions.node_trust(node_id="00000000-0000-0000-0000-000000000000", operator=operator, reason="x")
    assert refused.value.code == "no_such_node"
    assert Node.objects.get(pk=node.pk).trusted is True
    assert NodeSanction.objects.filter(node=node).count() == 1

"""Soft strikes and time-boxed bans (paper sections 2 and 7): each active strike softens a
node's routing weight, enough active strikes ban it for a while, expired or lifted strikes
stop counting, and operators see strikes and lift bans in admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from registry import dispatch, reputation, routing_index, sanctions, submit
from registry.models import Node, Strike
from tests.factories import NodeKeys, SubnetFactory, UserFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db


def settled(keys: NodeKeys) -> NodeKeys:
    """Connected for its whole hour-long life: uptime exactly 1, so weights compare exactly."""
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Node.objects.filter(pk=keys.node.pk).update(created_at=an_hour_ago, connected_at=an_hour_ago)
    routing_index.index_forget()
    return keys


def weights(subnet) -> dict[str, float]:
    return {c.node_id: c.weight for c in routing_index.routable_index(subnet.pk).candidates}


def strike(keys: NodeKeys, subnet, capture, reason: str = "minority in adjudication") -> Strike:
    """A strike, committed: its index bump reaches the routing index."""
    with capture(execute=True):
        return reputation.node_strike(node_id=keys.node.pk, reason=reason, subnet=subnet)


def job_nodes(subnet, user, key: str) -> set:
    job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["strike test"]}, idempotency_key=key)
    dispatch.job_dispatch(job_id=job.id)
    return set(job.assignments.values_list("node_id", flat=True))


@pytest.fixture
def subnet():
    return SubnetFactory()


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(username="operator", is_staff=True, is_superuser=True))
    return client


# ---------------------------------------------------------------- strikes


def test_a_strike_halves_the_routing_weight(subnet, django_capture_on_commit_callbacks):
    struck, clean = settled(online_node(subnet)), settled(online_node(subnet))
    before = weights(subnet)
    assert before[str(struck.node.pk)] == pytest.approx(before[str(clean.node.pk)])

    record = strike(struck, subnet, django_capture_on_commit_callbacks)

    after = weights(subnet)  # no index_forget: the strike's bump must rebuild it
    assert after[str(struck.node.pk)] == pytest.approx(before[str(struck.node.pk)] / 2)
    assert after[str(clean.node.pk)] == pytest.approx(before[str(clean.node.pk)])
    struck.node.refresh_from_db()
    assert struck.node.strikes == 1 and struck.node.banned_until is None
    assert record.expires_at > timezone.now() + timedelta(hours=167)


def test_two_strikes_quarter_the_weight_below_the_ban(subnet, django_capture_on_commit_callbacks):
    struck, clean = settled(online_node(subnet)), settled(online_node(subnet))
    for _ in range(2):
        strike(struck, subnet, django_capture_on_commit_callbacks)
    after = weights(subnet)
    assert after[str(struck.node.pk)] == pytest.approx(after[str(clean.node.pk)] / 4)


def test_expired_and_lifted_strikes_do_not_lower_the_weight(subnet, django_capture_on_commit_callbacks):
    struck, clean = settled(online_node(subnet)), settled(online_node(subnet))
    old = strike(struck, subnet, django_capture_on_commit_callbacks)
    lifted = strike(struck, subnet, django_capture_on_commit_callbacks)
    Strike.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    Strike.objects.filter(pk=lifted.pk).update(lifted_at=timezone.now())
    routing_index.index_forget()
    after = weights(subnet)
    assert after[str(struck.node.pk)] == pytest.approx(after[str(clean.node.pk)])


# ---------------------------------------------------------------- bans


def test_enough_active_strikes_ban_the_node_and_its_jobs_go_elsewhere(subnet, django_capture_on_commit_callbacks):
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(3))}
    Node.objects.filter(pk__in=pool).update(jobs_agreed=10)  # past probation: 20 open offers each are fine
    user = user_with_credits(10)
    banned = pool[sorted(job_nodes(subnet, user, "before-ban"))[0]]  # a node jobs do go to
    others = [keys for pk, keys in pool.items() if pk != banned.node.pk]
    for n in range(3):
        before = timezone.now()
        strike(banned, subnet, django_capture_on_commit_callbacks, reason=f"failed honeypot {n}")
    banned.node.refresh_from_db()
    assert banned.node.strikes == 3
    assert before + timedelta(hours=23) < banned.node.banned_until <= timezone.now() + timedelta(hours=24)

    assert str(banned.node.pk) not in weights(subnet)
    others_ids = {keys.node.pk for keys in others}
    for i in range(20):
        assert job_nodes(subnet, user, f"after-ban-{i}") == others_ids


def test_two_strikes_do_not_ban(subnet, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    for _ in range(2):
        strike(keys, subnet, django_capture_on_commit_callbacks)
    keys.node.refresh_from_db()
    assert keys.node.banned_until is None
    assert str(keys.node.pk) in weights(subnet)


def test_the_subnet_policy_sets_strikes_to_ban_and_the_ban_length(django_capture_on_commit_callbacks):
    subnet = SubnetFactory(reputation_policy={"strikes_to_ban": 1, "ban_h": 2})
    keys = online_node(subnet)
    strike(keys, subnet, django_capture_on_commit_callbacks)
    keys.node.refresh_from_db()
    assert timezone.now() + timedelta(minutes=110) < keys.node.banned_until <= timezone.now() + timedelta(hours=2)
    assert str(keys.node.pk) not in weights(subnet)


def test_expired_strikes_do_not_count_toward_a_ban(subnet, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    for _ in range(2):
        strike(keys, subnet, django_capture_on_commit_callbacks)
    Strike.objects.filter(node=keys.node).update(expires_at=timezone.now() - timedelta(seconds=1))
    strike(keys, subnet, django_capture_on_commit_callbacks)
    keys.node.refresh_from_db()
    assert keys.node.strikes == 3  # strikes ever given
    assert keys.node.banned_until is None
    assert str(keys.node.pk) in weights(subnet)


def test_a_ban_is_time_boxed(subnet, django_capture_on_commit_callbacks):
    keys = settled(online_node(subnet))
    for _ in range(3):
        strike(keys, subnet, django_capture_on_commit_callbacks)
    assert str(keys.node.pk) not in weights(subnet)

    Node.objects.filter(pk=keys.node.pk).update(banned_until=timezone.now() - timedelta(seconds=1))
    routing_index.index_forget()  # the index is rebuilt at the latest after INDEX_MAX_AGE_S

    after = weights(subnet)
    assert str(keys.node.pk) in after
    # Its strikes are still active: routable again, but at an eighth of its weight.
    clean = settled(online_node(subnet))
    after = weights(subnet)
    assert after[str(keys.node.pk)] == pytest.approx(after[str(clean.node.pk)] / 8)


def test_lifting_a_ban_restores_the_node_at_full_weight(subnet, django_capture_on_commit_callbacks):
    keys, clean = settled(online_node(subnet)), settled(online_node(subnet))
    for _ in range(3):
        strike(keys, subnet, django_capture_on_commit_callbacks)
    assert str(keys.node.pk) not in weights(subnet)

    with django_capture_on_commit_callbacks(execute=True):
        sanctions.node_unban(node_id=keys.node.pk, operator=UserFactory(is_staff=True), reason="bad build, fixed")

    keys.node.refresh_from_db()
    assert keys.node.banned_until is None
    assert not Strike.objects.filter(node=keys.node, lifted_at__isnull=True).exists()
    after = weights(subnet)  # the lift's bump rebuilt the index
    assert after[str(keys.node.pk)] == pytest.approx(after[str(clean.node.pk)])
    # Lifted strikes no longer count: one new strike does not ban it again.
    strike(keys, subnet, django_capture_on_commit_callbacks)
    keys.node.refresh_from_db()
    assert keys.node.banned_until is None


# ---------------------------------------------------------------- admin


def test_the_admin_action_lifts_the_ban_of_the_selected_nodes_only(
    subnet, admin_client, django_capture_on_commit_callbacks
):
    lifted, kept = online_node(subnet), online_node(subnet)
    for keys in (lifted, kept):
        for _ in range(3):
            strike(keys, subnet, django_capture_on_commit_callbacks)

    response = admin_client.post(
        reverse("admin:registry_node_changelist"), {"action": "unban_nodes", "_selected_action": [str(lifted.node.pk)], "apply": "1", "reason": "false positive"}
    )

    assert response.status_code == 302
    lifted.node.refresh_from_db()
    kept.node.refresh_from_db()
    assert lifted.node.banned_until is None
    assert kept.node.banned_until is not None and kept.node.banned_until > timezone.now()
    assert Strike.objects.filter(node=lifted.node, lifted_at__isnull=False).count() == 3
    assert Strike.objects.filter(node=kept.node, lifted_at__isnull=True).count() == 3


def test_the_unban_action_needs_an_operator(subnet, client, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    for _ in range(3):
        strike(keys, subnet, django_capture_on_commit_callbacks)
    client.force_login(keys.node.owner)  # the node's own owner, not staff
    client.post(
        reverse("admin:registry_node_changelist"), {"action": "unban_nodes", "_selected_action": [str(keys.node.pk)], "apply": "1", "reason": "mine"}
    )
    keys.node.refresh_from_db()
    assert keys.node.banned_until is not None


def test_strikes_are_listed_in_admin_with_their_reason(subnet, admin_client, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    strike(keys, subnet, django_capture_on_commit_callbacks, reason="failed honeypot h-42")

    response = admin_client.get(reverse("admin:registry_strike_changelist"))
    assert response.status_code == 200
    assert "failed honeypot h-42" in response.content.decode()

    record = Strike.objects.get(node=keys.node)
    detail = admin_client.get(reverse("admin:registry_strike_change", args=[record.pk]))
    assert detail.status_code == 200
    assert admin_client.get(reverse("admin:registry_strike_add")).status_code == 403


def test_the_node_admin_shows_strikes_and_the_ban(subnet, admin_client, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    for _ in range(3):
        strike(keys, subnet, django_capture_on_commit_callbacks)
    response = admin_client.get(reverse("admin:registry_node_changelist"))
    assert response.status_code == 200
    assert keys.node.name in response.content.decode()
    assert admin_client.get(reverse("admin:registry_node_change", args=[keys.node.pk])).status_code == 200

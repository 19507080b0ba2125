"""Operators' sanctions (issue 14): a ban for a bounded time with a reason cuts a connected
node off at once and keeps it out of routing; an unban ends it early with its strikes;
clearing strikes restores the routing weight without touching a ban; every one is recorded
with who, when, why and until when, and a bad request is refused with nothing changed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from bim_core.errors import ServiceError
from registry import dispatch, reputation, routing_index, sanctions, submit
from registry.models import Node, NodeSanction, SanctionKind, Strike
from tests.factories import SubnetFactory, UserFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db


@pytest.fixture
def subnet():
    return SubnetFactory()


@pytest.fixture
def operator():
    return UserFactory(username="op", is_staff=True)


def routable(subnet) -> set[str]:
    return {c.node_id for c in routing_index.routable_index(subnet.pk).candidates}


def struck(keys, subnet, capture, times: int = 1) -> None:
    for _ in range(times):
        with capture(execute=True):
            reputation.node_strike(node_id=keys.node.pk, reason="minority", subnet=subnet)


def test_a_ban_cuts_a_connected_node_off_and_records_who_why_and_until(
    subnet, operator, django_capture_on_commit_callbacks, monkeypatch
):
    keys = online_node(subnet)
    assert str(keys.node.pk) in routable(subnet)
    sent = []
    monkeypatch.setattr("registry.effects.group_send", lambda group, event: sent.append((group, event)))

    with django_capture_on_commit_callbacks(execute=True):
        sanction = sanctions.node_ban(node_id=keys.node.pk, operator=operator, reason="  forged  results ", hours=24)

    keys.node.refresh_from_db()
    assert timezone.now() + timedelta(hours=23) < keys.node.banned_until <= timezone.now() + timedelta(hours=24)
    assert (sanction.kind, sanction.reason, sanction.operator, sanction.banned_until) == (
        SanctionKind.BAN, "forged results", operator, keys.node.banned_until
    )
    # Its socket is closed (the consumer's node.banned handler) and routing drops it now,
    # not when the index would have aged out.
    assert sent == [(f"node.{keys.node.pk}", {"type": "node.banned", "until": keys.node.banned_until.isoformat()})]
    assert str(keys.node.pk) not in routable(subnet)


def test_a_shorter_ban_keeps_the_longer_one_in_force(subnet, operator, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    sanctions.node_ban(node_id=keys.node.pk, operator=operator, reason="first", hours=168)
    keys.node.refresh_from_db()
    long_until = keys.node.banned_until

    sanction = sanctions.node_ban(node_id=keys.node.pk, operator=operator, reason="again", hours=1)

    keys.node.refresh_from_db()
    assert keys.node.banned_until == long_until == sanction.banned_until


@pytest.mark.parametrize("hours", [0, -1, sanctions.BAN_HOURS_MAX + 1, True, 1.5, "24"])
def test_a_ban_outside_its_bounds_is_refused(subnet, operator, hours):
    keys = online_node(subnet)
    with pytest.raises(ServiceError) as refused:
        sanctions.node_ban(node_id=keys.node.pk, operator=operator, reason="typo", hours=hours)
    assert refused.value.code == "bad_duration"
    keys.node.refresh_from_db()
    assert keys.node.banned_until is None and not NodeSanction.objects.exists()


@pytest.mark.parametrize("reason", ["", "   \n ", "x" * (sanctions.REASON_MAX + 1)])
def test_every_sanction_needs_a_reason(subnet, operator, reason):
    keys = online_node(subnet)
    for call in (
        lambda: sanctions.node_ban(node_id=keys.node.pk, operator=operator, reason=reason, hours=1),
        lambda: sanctions.node_unban(node_id=keys.node.pk, operator=operator, reason=reason),
        lambda: sanctions.node_strikes_clear(node_id=keys.node.pk, operator=operator, reason=reason),
    ):
        with pytest.raises(ServiceError) as refused:
            call()
        assert refused.value.code in ("reason_required", "reason_too_long")
    assert not NodeSanction.objects.exists()


def test_an_unknown_node_is_refused(operator):
    with pytest.raises(ServiceError) as refused:
        sanctions.node_ban(node_id="00000000-0000-0000-0000-000000000000", operator=operator, reason="x", hours=1)
    assert refused.value.code == "no_such_node"


def test_an_unban_ends_a_strike_ban_with_its_strikes(subnet, operator, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    struck(keys, subnet, django_capture_on_commit_callbacks, times=3)
    keys.node.refresh_from_db()
    assert keys.node.banned_until is not None

    with django_capture_on_commit_callbacks(execute=True):
        sanction = sanctions.node_unban(node_id=keys.node.pk, operator=operator, reason="false positive, bad build")

    keys.node.refresh_from_db()
    assert keys.node.banned_until is None
    assert (sanction.kind, sanction.strikes_lifted) == (SanctionKind.UNBAN, 3)
    assert not Strike.objects.filter(node=keys.node, lifted_at__isnull=True).exists()
    assert str(keys.node.pk) in routable(subnet)
    # Lifted strikes no longer count: one new strike does not ban it again.
    struck(keys, subnet, django_capture_on_commit_callbacks)
    keys.node.refresh_from_db()
    assert keys.node.banned_until is None


def test_unbanning_a_node_that_is_not_banned_is_refused(subnet, operator):
    keys = online_node(subnet)
    with pytest.raises(ServiceError) as refused:
        sanctions.node_unban(node_id=keys.node.pk, operator=operator, reason="why not")
    assert refused.value.code == "not_banned"
    assert not NodeSanction.objects.exists()


def test_clearing_strikes_restores_the_weight_and_keeps_a_ban(subnet, operator, django_capture_on_commit_callbacks):
    keys, clean = online_node(subnet), online_node(subnet)
    # Connected for their whole hour-long lives: uptime exactly 1, so weights compare exactly.
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Node.objects.filter(pk__in=[keys.node.pk, clean.node.pk]).update(created_at=an_hour_ago, connected_at=an_hour_ago)
    struck(keys, subnet, django_capture_on_commit_callbacks, times=2)
    weights = {c.node_id: c.weight for c in routing_index.routable_index(subnet.pk).candidates}
    assert weights[str(keys.node.pk)] == pytest.approx(weights[str(clean.node.pk)] / 4)

    with django_capture_on_commit_callbacks(execute=True):
        sanction = sanctions.node_strikes_clear(node_id=keys.node.pk, operator=operator, reason="honeypot was stale")

    assert (sanction.kind, sanction.strikes_lifted) == (SanctionKind.STRIKES_CLEARED, 2)
    weights = {c.node_id: c.weight for c in routing_index.routable_index(subnet.pk).candidates}
    assert weights[str(keys.node.pk)] == pytest.approx(weights[str(clean.node.pk)])
    keys.node.refresh_from_db()
    assert keys.node.strikes == 2  # strikes ever given: history

    struck(keys, subnet, django_capture_on_commit_callbacks, times=3)
    sanctions.node_strikes_clear(node_id=keys.node.pk, operator=operator, reason="again")
    keys.node.refresh_from_db()
    assert keys.node.banned_until is not None and keys.node.banned_until > timezone.now()


def test_clearing_no_strikes_is_refused(subnet, operator):
    keys = online_node(subnet)
    with pytest.raises(ServiceError) as refused:
        sanctions.node_strikes_clear(node_id=keys.node.pk, operator=operator, reason="tidy")
    assert refused.value.code == "no_active_strikes"
    assert not NodeSanction.objects.exists()


def test_a_banned_node_still_connected_gets_no_more_offers(subnet, operator, django_capture_on_commit_callbacks):
    banned, other = online_node(subnet).node, online_node(subnet).node
    with django_capture_on_commit_callbacks(execute=True):
        sanctions.node_ban(node_id=banned.pk, operator=operator, reason="abuse", hours=1)
    banned.refresh_from_db()
    assert banned.is_online  # its socket closes when the consumer gets node.banned; until then:
    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": ["x"]}, idempotency_key="b")

    dispatch.job_dispatch(job_id=job.id)

    assert not job.assignments.exists()  # one routable node is not a pair: the job waits

    with django_capture_on_commit_callbacks(execute=True):
        sanctions.node_unban(node_id=banned.pk, operator=operator, reason="appeal")
    dispatch.job_dispatch(job_id=job.id)
    assert set(job.assignments.values_list("node_id", flat=True)) == {banned.pk, other.pk}

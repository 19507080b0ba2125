"""Nodes in admin (issue 14): ban, unban and clear strikes are actions with a reason form
(a ban with a bounded duration), each recorded and shown on the node page; the node page
shows recent benchmarks and verdicts; the list shows standing in a few compact columns; a
staff user without `registry.change_node` is offered none of it and a forged post changes
nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from registry.models import Assignment, Benchmark, Node, NodeSanction, SanctionKind, Strike
from tests.factories import SubnetFactory, UserFactory, online_node
from tests.operator_seed import operator_market

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:registry_node_changelist"


def staff_with(*codenames: str):
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="registry", codename__in=codenames))
    assert user.user_permissions.count() == len(codenames)
    return user


@pytest.fixture
def subnet():
    return SubnetFactory()


@pytest.fixture
def operator(client):
    user = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


def post_action(client, action: str, nodes, **fields):
    data = {"action": action, "_selected_action": [str(node.pk) for node in nodes], **fields}
    return client.post(reverse(CHANGELIST), data)


def with_strikes(node: Node, count: int, *, banned: bool = False) -> Node:
    for _ in range(count):
        Strike.objects.create(node=node, reason="minority", expires_at=timezone.now() + timedelta(days=7))
    Node.objects.filter(pk=node.pk).update(
        strikes=count, banned_until=timezone.now() + timedelta(days=1) if banned else None
    )
    node.refresh_from_db()
    return node


# ---------------------------------------------------------------- ban


def test_the_ban_action_first_asks_for_a_reason_and_a_duration(client, operator, subnet):
    node = online_node(subnet).node

    page = post_action(client, "ban_nodes", [node])

    assert page.status_code == 200
    body = page.content.decode()
    assert 'name="reason"' in body and 'name="hours"' in body and 'value="720"' in body
    assert node.name in body
    node.refresh_from_db()
    assert node.banned_until is None and not NodeSanction.objects.exists()


def test_the_ban_action_bans_the_selected_nodes_with_the_reason(client, operator, subnet, django_capture_on_commit_callbacks):
    banned, spared = online_node(subnet).node, online_node(subnet).node

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(client, "ban_nodes", [banned], apply="1", reason="forged a tie-break", hours="72")

    assert response.status_code == 302
    banned.refresh_from_db()
    spared.refresh_from_db()
    assert timezone.now() + timedelta(hours=71) < banned.banned_until <= timezone.now() + timedelta(hours=72)
    assert spared.banned_until is None
    sanction = NodeSanction.objects.get()
    assert (sanction.node, sanction.kind, sanction.reason, sanction.operator) == (
        banned, SanctionKind.BAN, "forged a tie-break", operator
    )
    messages = [str(m) for m in client.get(reverse(CHANGELIST)).context["messages"]]
    assert "1 node(s) banned." in messages


@pytest.mark.parametrize(
    "fields",
    [
        {"reason": "", "hours": "24"},  # no reason
        {"reason": "x", "hours": "100000"},  # not one of the choices
        {"reason": "x", "hours": "-1"},
        {"reason": "x" * 301, "hours": "24"},
    ],
)
def test_a_ban_without_a_reason_or_with_a_duration_off_the_list_is_shown_the_form_again(client, operator, subnet, fields):
    node = online_node(subnet).node

    page = post_action(client, "ban_nodes", [node], apply="1", **fields)

    assert page.status_code == 200 and "errorlist" in page.content.decode()
    node.refresh_from_db()
    assert node.banned_until is None and not NodeSanction.objects.exists()


# ---------------------------------------------------------------- unban, clear strikes


def test_the_unban_action_needs_a_reason_and_reports_nodes_not_banned(client, operator, subnet):
    banned = with_strikes(online_node(subnet).node, 3, banned=True)
    free = online_node(subnet).node

    assert post_action(client, "unban_nodes", [banned], apply="1", reason=" ").status_code == 200
    banned.refresh_from_db()
    assert banned.banned_until is not None

    response = post_action(client, "unban_nodes", [banned, free], apply="1", reason="appeal upheld")

    assert response.status_code == 302
    banned.refresh_from_db()
    assert banned.banned_until is None
    assert not Strike.objects.filter(node=banned, lifted_at__isnull=True).exists()
    sanction = NodeSanction.objects.get()
    assert (sanction.node, sanction.kind, sanction.strikes_lifted, sanction.reason) == (
        banned, SanctionKind.UNBAN, 3, "appeal upheld"
    )
    messages = [str(m) for m in client.get(reverse(CHANGELIST)).context["messages"]]
    assert "1 node(s) unbanned." in messages
    assert f"Refused: {free.name}: {free.name} is not banned" in messages


def test_the_clear_strikes_action_lifts_active_strikes_and_keeps_the_ban(client, operator, subnet):
    node = with_strikes(online_node(subnet).node, 2, banned=True)

    response = post_action(client, "clear_strikes", [node], apply="1", reason="stale honeypot answer")

    assert response.status_code == 302
    node.refresh_from_db()
    assert node.banned_until is not None
    assert Strike.objects.filter(node=node, lifted_at__isnull=False).count() == 2
    assert NodeSanction.objects.get().kind == SanctionKind.STRIKES_CLEARED


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize("action", ["ban_nodes", "unban_nodes", "clear_strikes"])
def test_a_view_only_staff_user_is_offered_no_sanction_and_a_forged_post_changes_nothing(client, subnet, action):
    node = with_strikes(online_node(subnet).node, 2, banned=True)
    until = node.banned_until
    client.force_login(staff_with("view_node"))

    listing = client.get(reverse(CHANGELIST))
    page = client.get(reverse("admin:registry_node_change", args=[node.pk]))
    assert listing.status_code == 200 and page.status_code == 200
    for body in (listing.content.decode(), page.content.decode()):
        assert 'value="ban_nodes"' not in body and 'value="unban_nodes"' not in body and 'value="clear_strikes"' not in body

    for forged in ({}, {"apply": "1", "reason": "forged", "hours": "720"}):
        response = post_action(client, action, [node], **forged)
        # The list again, as if no action had been chosen: no reason form, nothing applied.
        assert "admin/registry/node/sanction.html" not in [t.name for t in response.templates]
    node.refresh_from_db()
    assert node.banned_until == until
    assert Strike.objects.filter(node=node, lifted_at__isnull=True).count() == 2
    assert not NodeSanction.objects.exists()


def test_a_sanction_started_on_the_node_page_returns_there(client, operator, subnet):
    node = with_strikes(online_node(subnet).node, 1)
    page_url = reverse("admin:registry_node_change", args=[node.pk])

    form = post_action(client, "clear_strikes", [node], from_node_page="1")
    assert 'name="from_node_page"' in form.content.decode()
    response = post_action(client, "clear_strikes", [node], from_node_page="1", apply="1", reason="stale honeypot")

    assert response.status_code == 302 and response.url == page_url
    page = client.get(page_url).content.decode()
    assert "stale honeypot" in page and "strikes cleared" in page


def test_a_staff_user_with_change_node_bans(client, subnet, django_capture_on_commit_callbacks):
    node = online_node(subnet).node
    client.force_login(staff_with("view_node", "change_node"))

    assert 'value="ban_nodes"' in client.get(reverse("admin:registry_node_change", args=[node.pk])).content.decode()
    post_action(client, "ban_nodes", [node], apply="1", reason="abuse report 17", hours="1")

    node.refresh_from_db()
    assert node.banned_until is not None and NodeSanction.objects.filter(node=node).exists()


def test_the_sanctions_log_is_read_only_even_for_a_superuser(client, operator, subnet):
    node = online_node(subnet).node
    post_action(client, "ban_nodes", [node], apply="1", reason="abuse", hours="1")
    sanction = NodeSanction.objects.get()

    assert client.get(reverse("admin:registry_nodesanction_changelist")).status_code == 200
    client.post(reverse("admin:registry_nodesanction_change", args=[sanction.pk]), {"reason": "rewritten"})
    assert client.post(reverse("admin:registry_nodesanction_delete", args=[sanction.pk]), {"post": "yes"}).status_code == 403

    sanction.refresh_from_db()
    assert sanction.reason == "abuse"


# ---------------------------------------------------------------- pages


@pytest.fixture
def market():
    return operator_market()


def test_the_node_page_shows_sanctions_verdicts_and_benchmarks(client, operator, market):
    forger = market.disputed.assignments.get(role="B").node
    url = reverse("admin:registry_node_change", args=[forger.pk])

    page = client.get(url)

    assert page.status_code == 200
    body = page.content.decode()
    # Sanctions: the ban the seed made, with who and why.
    assert "forged vectors on a tie-break; owner contacted" in body and ">operator<" in body
    # Verdicts: its jobs, newest first, with the outcome and the similarity recorded.
    verdicts = page.context["verdicts"]
    assert [v.assignment for v in verdicts] == list(Assignment.objects.filter(node=forger).order_by("-dispatched_at"))
    tie_break = next(v for v in verdicts if v.job == market.disputed)
    assert tie_break.assignment.state == "disagreed" and tie_break.compared_with == "B–C"
    assert tie_break.similarity == pytest.approx(market.disputed.verification["tie_break"]["b_c"]["worst"])
    assert f"{tie_break.similarity:.6f}" in body and "disagreed" in body
    # Benchmarks: newest first, with a link to the node's full list.
    benchmarks = page.context["benchmarks"]
    assert [b.issued_at for b in benchmarks] == sorted((b.issued_at for b in benchmarks), reverse=True)
    assert len(benchmarks) == Benchmark.objects.filter(node=forger).count() == 4
    assert "output 2 cosine 0.912" in body
    full_list = client.get(page.context["benchmarks_url"])
    assert full_list.status_code == 200 and full_list.context["cl"].result_count == 4
    assignments = client.get(page.context["verdicts_url"])
    assert assignments.status_code == 200
    assert assignments.context["cl"].result_count == Assignment.objects.filter(node=forger).count()
    # Sanction buttons for an operator who may use them.
    assert 'value="unban_nodes"' in body and f'value="{forger.pk}"' in body


def test_the_node_page_lists_a_bounded_number_of_benchmarks(client, operator, subnet):
    node = online_node(subnet).node
    Benchmark.objects.bulk_create(Benchmark(node=node, subnet=subnet, runs=3, session_key_pub="k") for _ in range(30))

    page = client.get(reverse("admin:registry_node_change", args=[node.pk]))

    assert len(page.context["benchmarks"]) == 20
    assert "the last 20" in page.content.decode()


def test_the_node_list_shows_standing_in_compact_columns(client, operator, market):
    forger = market.disputed.assignments.get(role="B").node

    listing = client.get(reverse(CHANGELIST))

    assert listing.status_code == 200
    body = listing.content.decode()
    headers = [h["text"] for h in listing.context["result_headers"]][1:]  # after the checkbox
    assert headers == ["node", "owner", "environment", "seen", "rep.", "strikes", "banned until", "agreed / failed"]
    assert "Windows 11 · chrome-131 · webgpu · nvidia-ada" in body
    rows = listing.context["cl"].result_list
    shown = next(row for row in rows if row.pk == forger.pk)
    assert shown.active_strike_count == 1  # the tie-break's strike
    assert timezone.localtime(forger.banned_until).strftime("%b %d %H:%M") in body
    Node.objects.filter(pk=forger.pk).update(is_online=False, last_seen=timezone.now() - timedelta(hours=3))
    assert "3\xa0hours ago" in client.get(reverse(CHANGELIST)).content.decode()


def test_the_node_list_sorts_by_active_strikes(client, operator, subnet):
    calm = online_node(subnet).node
    struck = with_strikes(online_node(subnet).node, 2)

    listing = client.get(reverse(CHANGELIST), {"o": "-6"})  # strikes, descending

    assert [row.pk for row in listing.context["cl"].result_list] == [struck.pk, calm.pk]


def test_the_node_page_and_list_cost_the_same_queries_whatever_the_history(client, operator, market):
    node = market.disputed.assignments.get(role="A").node
    page_url = reverse("admin:registry_node_change", args=[node.pk])

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    queries(page_url)  # the session's first request writes it
    before = queries(page_url), queries(reverse(CHANGELIST))
    Benchmark.objects.bulk_create(Benchmark(node=node, subnet=market.subnet, runs=3, session_key_pub="k") for _ in range(25))
    for index in range(3):
        keys = online_node(market.subnet)
        with_strikes(keys.node, index + 1, banned=bool(index))
    with_strikes(node, 2)

    assert (queries(page_url), queries(reverse(CHANGELIST))) == before

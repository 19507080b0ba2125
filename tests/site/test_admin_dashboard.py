"""The admin index is the market's health: each figure counts what the registry's tables
hold, links to the admin list of exactly those rows, and is shown only to operators who
may read jobs."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from registry import dashboard, submit
from registry.jobs import job_expire
from registry.models import AgreementStat, Job, JobState, Strike
from tests.factories import SubnetFactory, UserFactory, online_node, settle, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


@pytest.fixture
def market():
    """A day of a small market: settled jobs, two expiries with different causes, a
    honeypot catch, a drifting runtime pair."""
    subnet = SubnetFactory()
    nodes = [online_node(subnet, backend="wasm"), online_node(subnet, backend="webgpu")]
    user = user_with_credits(50)
    settled = []
    for i in range(3):
        job, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["a", "b"]}, idempotency_key=f"s{i}")
        settle(job.pk, nodes, unit_vectors(2, seed=i), unit_vectors(2, seed=i))
        settled.append(job.pk)
    never_dispatched, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["x"]}, idempotency_key="q")
    Job.objects.filter(pk=never_dispatched.pk).update(dispatched_at=None)
    job_expire(Job.objects.get(pk=never_dispatched.pk))
    unanswered, _ = submit.job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["y"]}, idempotency_key="d")
    from registry import dispatch

    dispatch.job_dispatch(job_id=unanswered.pk)
    job_expire(Job.objects.get(pk=unanswered.pk))
    Strike.objects.create(
        node=nodes[0].node, reason=dashboard.HONEYPOT_STRIKE_REASON, expires_at=timezone.now() + timedelta(days=1)
    )
    AgreementStat.objects.create(
        subnet=subnet, env_a="ort-web/wasm/cpu", env_b="ort-web/webgpu/nvidia", samples=40, passed=30, min_similarity=0.9991
    )
    return {"subnet": subnet, "nodes": nodes, "settled": settled}


def test_market_health_counts_what_the_tables_hold(market):
    health = dashboard.market_health()
    day = {f.filters["state__exact"]: f.value for f in health.jobs_by_state["day"]}
    assert day[JobState.SETTLED] == 3 and day[JobState.EXPIRED] == 2 and day[JobState.QUEUED] == 0
    assert sum(f.value for f in health.online_nodes) == 2
    assert {f.label.split(" · ")[1] for f in health.online_nodes} == {"wasm", "webgpu"}
    paths = {f.filters.get("path"): f.value for f in health.verification}
    assert paths["2-of-2"] == 3 and paths["2-of-3"] == 0
    causes = [f.value for f in health.expiries]
    assert causes == [1, 1, 0]  # one never dispatched, one whose nodes did not answer
    assert health.honeypot_catches.value == 1
    assert health.disputes_waiting.value == 0
    hour_now = health.hours[-1]
    assert hour_now.settled == 3 and hour_now.expired == 2 and sum(h.total for h in health.hours) == 5
    day_latency = next(row for row in health.latency if row.window == "day")
    assert day_latency.samples == 3 and 0 <= day_latency.p50_s <= day_latency.p95_s < 60
    drift = health.false_rejects[0]
    assert (drift.failed, drift.samples) == (10, 40) and drift.failed_share == pytest.approx(0.25)
    assert any("expired" in line for line in health.attention)


def test_a_quiet_market_renders_its_empty_dashboard(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get(reverse("admin:index"))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="market-health"' in html and "no node is online" in html
    assert "Balanced" in html


def _links(html: str) -> dict[str, str]:
    """The dashboard's figure links: {href: the text of the link}."""
    section = html[html.index('id="market-health"') : html.index("app-list") if "app-list" in html else None]
    return {unescape(href): text for href, text in re.findall(r'<a href="([^"]+)">([^<]*)</a>', section)}


def test_every_figure_links_to_the_admin_list_of_exactly_its_rows(client, market):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get(reverse("admin:index"))
    assert page.status_code == 200
    html = page.content.decode()
    bars = dashboard_bars(page.context["dashboard"])
    assert bars, "the dashboard shows figures"
    checked = 0
    for bar in bars:
        if not bar["href"]:
            continue
        listing = client.get(bar["href"])
        assert listing.status_code == 200, bar
        # An admin list refuses a lookup it does not allow by redirecting to ?e=1.
        assert "e=1" not in listing.get("Location", ""), bar
        assert listing.context["cl"].result_count == bar["value"], bar
        checked += 1
    assert checked >= 12
    assert any("/admin/registry/job/" in href for href in _links(html))
    for column in page.context["dashboard"]["hours"]["columns"][-1:]:
        listing = client.get(column["href"])
        assert listing.context["cl"].result_count == 5


def dashboard_bars(context: dict) -> list[dict]:
    bars = [*context["online_nodes"], *context["verification"], *context["expiries"]]
    for window in context["jobs_by_state"].values():
        bars.extend(window)
    bars.extend([context["honeypot_catches"], context["disputes_waiting"]])
    return bars


def test_the_ledger_card_shows_held_credits_and_the_books_balance(client, market):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    user = user_with_credits(7)
    submit.job_submit(user=user, subnet_slug=market["subnet"].slug, inputs={"texts": ["held"]}, idempotency_key="h")
    ledger = client.get(reverse("admin:index")).context["dashboard"]["ledger"]
    assert ledger["balanced"] is True
    held = next(row for row in ledger["rows"] if row["label"] == "held for jobs in flight")
    assert held["amount"] != "0" and held["href"].endswith("kind__exact=user_hold")
    revenue = next(row for row in ledger["rows"] if row["label"] == "registry revenue")
    assert client.get(revenue["href"]).status_code == 200


def test_staff_who_may_not_read_jobs_get_the_plain_index(client, market):
    clerk = UserFactory(is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_voucher"))
    client.force_login(clerk)
    page = client.get(reverse("admin:index"))
    assert page.status_code == 200
    assert "dashboard" not in page.context and 'id="market-health"' not in page.content.decode()


def test_links_are_left_out_where_the_operator_may_not_open_the_list(client, market):
    reader = UserFactory(is_staff=True)
    reader.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(reader)
    context = client.get(reverse("admin:index")).context["dashboard"]
    assert all(bar["href"] and "/registry/job/" in bar["href"] for bar in context["verification"])
    assert all(bar["href"] is None for bar in context["online_nodes"])  # no view_node
    assert context["ledger"]["accounts_href"] is None


def test_a_failed_periodic_ledger_check_heads_the_dashboard(client, market):
    from django.core.cache import cache

    from ledger.checks import LAST_CHECK_KEY

    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    cache.set(LAST_CHECK_KEY, {"checked_at": timezone.now().timestamp(), "violations": 2})
    try:
        context = client.get(reverse("admin:index")).context["dashboard"]
    finally:
        cache.delete(LAST_CHECK_KEY)
    assert context["attention"][0] == "the last full ledger check found 2 violation(s)"
    assert context["ledger"]["last_check"]["violations"] == 2

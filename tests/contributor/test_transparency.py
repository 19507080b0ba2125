"""Transparency for contributors (issue 15): the dashboard shows, per day of the last
seven, the compute time of the owner's nodes and an energy estimate (compute time x a
typical draw for each node's backend), and the data-handling terms of every subnet they
serve, as that subnet's users acknowledged them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contributor import transparency
from registry.models import Assignment, AssignmentState, Job
from subnets.lifecycle import subnet_data_terms_set
from tests.factories import SubnetFactory, UserFactory, online_node

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)


def computed(node, *, ms: int | None, at: datetime, state: str = AssignmentState.AGREED) -> Assignment:
    """A result the node sent at `at`, its compute taking `ms` milliseconds."""
    job = Job.objects.create(
        user=UserFactory(),
        subnet=node.subnets.first(),
        idempotency_key=str(uuid.uuid4()),
        contract={},
        contract_hash="0" * 64,
        inputs={"texts": ["x"]},
        item_count=1,
        price_micro=0,
        expires_at=at + timedelta(minutes=1),
    )
    return Assignment.objects.create(
        job=job, node=node, role="A", state=state, elapsed_ms=ms, submitted_at=at
    )


@pytest.fixture
def owner():
    return UserFactory()


@pytest.fixture
def nodes(owner):
    subnet = SubnetFactory()
    return {
        "webgpu": online_node(subnet, owner, backend="webgpu").node,
        "wasm": online_node(subnet, owner, backend="wasm").node,
        "odd": online_node(subnet, owner, backend="quantum").node,
    }


def test_compute_and_energy_are_summed_per_day_and_backend(owner, nodes):
    # Today: 90 s on WebGPU (40 W) and 120 s on WASM (15 W) in two results.
    computed(nodes["webgpu"], ms=90_000, at=NOW - timedelta(hours=1))
    computed(nodes["wasm"], ms=60_000, at=NOW - timedelta(hours=2))
    computed(nodes["wasm"], ms=60_000, at=NOW - timedelta(hours=3), state=AssignmentState.DISAGREED)
    # Two days ago: an hour on a backend the table does not know (30 W).
    computed(nodes["odd"], ms=3_600_000, at=NOW - timedelta(days=2))

    days = transparency.compute_by_day(user=owner, now=NOW)

    assert [d["day"].isoformat() for d in days] == [f"2026-11-{d}" for d in (28, 29, 30)] + [
        f"2026-12-0{d}" for d in (1, 2, 3, 4)
    ]
    today, two_days_ago = days[-1], days[-3]
    assert (today["results"], today["compute_s"]) == (3, 210.0)
    assert today["energy_wh"] == round(90 / 3600 * 40 + 120 / 3600 * 15, 2)  # 1.5
    assert (two_days_ago["results"], two_days_ago["compute_s"], two_days_ago["energy_wh"]) == (1, 3600.0, 30.0)
    assert all(d["results"] == 0 and d["energy_wh"] == 0 for d in days if d not in (today, two_days_ago))


def test_only_the_owners_nodes_the_last_seven_days_and_reported_times_count(owner, nodes):
    stranger = online_node(SubnetFactory(), UserFactory(), backend="webgpu").node
    computed(stranger, ms=50_000, at=NOW)  # someone else's node
    computed(nodes["webgpu"], ms=50_000, at=NOW - timedelta(days=7))  # eight days ago, counting today
    computed(nodes["webgpu"], ms=None, at=NOW)  # no compute time reported (lost)

    days = transparency.compute_by_day(user=owner, now=NOW)

    assert sum(d["results"] for d in days) == 0 and sum(d["compute_s"] for d in days) == 0


def test_served_subnets_come_with_their_current_terms(owner, nodes):
    served = nodes["webgpu"].subnets.first()
    subnet_data_terms_set(subnet=served, text="Contributors keep nothing after a job.")
    SubnetFactory()  # not served by this owner

    rows = transparency.served_subnets_terms(user=owner)

    assert [(r["subnet"].slug, r["version"], r["text"]) for r in rows] == [
        (served.slug, 2, "Contributors keep nothing after a job.")
    ]


def test_the_dashboard_shows_the_days_the_estimate_and_the_terms(client, owner, nodes):
    served = nodes["webgpu"].subnets.first()
    computed(nodes["webgpu"], ms=90_000, at=datetime.now(UTC))
    client.force_login(owner)

    page = client.get("/contribute/")

    assert page.status_code == 200
    html = page.content.decode()
    today = datetime.now(UTC).date().isoformat()
    assert f'data-testid="compute-{today}">90.0 s' in html
    assert f'data-testid="energy-{today}">≈ 1.0 Wh' in html
    assert "Energy is an estimate, not a measurement" in html and "webgpu 40 W" in html
    assert f'data-testid="data-terms-{served.slug}"' in html
    assert "What contributors see: the texts you send" in html
    assert len(page.context["compute_days"]) == 7

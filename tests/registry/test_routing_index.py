"""The in-memory routing index dispatch reads: reused while nothing changed, rebuilt after a
committed presence change (the version lives in Redis, shared by every dispatcher) or when
too old, never trusted for a node that went offline meanwhile, and weighted by scores and
reputations as they stand now (benchmark age and idle time decay them)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry import dispatch, presence, routing_index, submit
from registry.models import Benchmark, BenchmarkState, Node, NodeSubnet
from subnets.models import BenchmarkReference
from tests.factories import NodeKeys, SubnetFactory, online_node, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_index_versions(settings):
    """Versions under a key prefix no other test run shares (subnet ids repeat across
    databases), and no age-based rebuild unless a test asks for one."""
    assert settings.REDIS_URL, "these tests pin the Redis-backed index version"
    settings.INDEX_KEY_PREFIX = f"test-index:{uuid.uuid4().hex}"
    settings.INDEX_MAX_AGE_S = 3600


def settled(*all_keys: NodeKeys) -> None:
    """Connected for their whole hour-long lives: uptime exactly 1, weights stable over time."""
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Node.objects.filter(pk__in=[k.node.pk for k in all_keys]).update(created_at=an_hour_ago, connected_at=an_hour_ago)
    routing_index.index_forget()


def weights(subnet) -> dict[str, float]:
    return {c.node_id: c.weight for c in routing_index.routable_index(subnet.pk).candidates}


@pytest.fixture
def subnet():
    return SubnetFactory()


# ---------------------------------------------------------------- reuse and rebuild


def test_the_index_is_reused_while_nothing_changes(subnet):
    online_node(subnet)
    first = routing_index.routable_index(subnet.pk)
    assert routing_index.routable_index(subnet.pk) is first
    assert len(first) == 1


def test_a_committed_bump_increments_the_redis_version_and_rebuilds(subnet, django_capture_on_commit_callbacks):
    keys = online_node(subnet)
    first = routing_index.routable_index(subnet.pk)
    version = routing_index.index_version(subnet.pk)

    with django_capture_on_commit_callbacks(execute=True):
        routing_index.index_bump(subnet.pk)
        assert routing_index.index_version(subnet.pk) == version  # not before the commit

    assert routing_index.index_version(subnet.pk) == version + 1
    rebuilt = routing_index.routable_index(subnet.pk)
    assert rebuilt is not first
    assert [c.node_id for c in rebuilt.candidates] == [str(keys.node.pk)]
    assert routing_index.routable_index(subnet.pk) is rebuilt


def test_a_rolled_back_change_does_not_bump(subnet, django_capture_on_commit_callbacks):
    version = routing_index.index_version(subnet.pk)
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        routing_index.index_bump(subnet.pk)
        raise RuntimeError("roll back")
    assert callbacks == []
    assert routing_index.index_version(subnet.pk) == version


def test_the_version_is_per_subnet(subnet, django_capture_on_commit_callbacks):
    other = SubnetFactory()
    online_node(subnet)
    first = routing_index.routable_index(subnet.pk)
    with django_capture_on_commit_callbacks(execute=True):
        routing_index.index_bump(other.pk)
    assert routing_index.routable_index(subnet.pk) is first


def test_the_index_is_rebuilt_once_older_than_the_maximum_age(subnet, settings, monkeypatch):
    settings.INDEX_MAX_AGE_S = 5
    clock = [1000.0]
    monkeypatch.setattr(routing_index, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    online_node(subnet)
    first = routing_index.routable_index(subnet.pk)
    clock[0] += 4.9
    assert routing_index.routable_index(subnet.pk) is first
    clock[0] += 0.2
    second = routing_index.routable_index(subnet.pk)
    assert second is not first
    assert routing_index.routable_index(subnet.pk) is second


def test_a_zero_maximum_age_rebuilds_every_time(subnet, settings):
    settings.INDEX_MAX_AGE_S = 0
    online_node(subnet)
    assert routing_index.routable_index(subnet.pk) is not routing_index.routable_index(subnet.pk)


@pytest.mark.django_db(transaction=True)
def test_presence_changes_bump_the_version_when_they_commit():
    subnet = SubnetFactory()
    staying, leaving = online_node(subnet), online_node(subnet)
    first = routing_index.routable_index(subnet.pk)
    assert len(first) == 2
    version = routing_index.index_version(subnet.pk)

    presence.node_disconnect(node_id=leaving.node.pk, channel_name=f"test.{leaving.node.pk}")

    assert routing_index.index_version(subnet.pk) == version + 1
    rebuilt = routing_index.routable_index(subnet.pk)
    assert [c.node_id for c in rebuilt.candidates] == [str(staying.node.pk)]

    Node.objects.filter(pk=leaving.node.pk).update(is_online=True, channel_name="test.back")
    presence.node_ready(
        node_id=leaving.node.pk, subnet_slug=subnet.slug, model_checksum=subnet.model_checksum, max_concurrent=1
    )
    assert routing_index.index_version(subnet.pk) == version + 2
    assert len(routing_index.routable_index(subnet.pk)) == 2


# ---------------------------------------------------------------- who is in it


def test_only_ready_benchmarked_online_fresh_unbanned_nodes_are_routable(subnet):
    routable = online_node(subnet)
    online_node(subnet, ready=False)
    online_node(subnet, benchmarked=False)
    online_node(subnet, banned_until=timezone.now() + timedelta(hours=1))
    silent = online_node(subnet)
    Node.objects.filter(pk=silent.node.pk).update(last_seen=timezone.now() - timedelta(minutes=5))
    offline = online_node(subnet)
    Node.objects.filter(pk=offline.node.pk).update(is_online=False)
    # The cache has kept presence long enough to tell a silent node (a cache flushed a
    # moment ago, as the benchmarks' smoke tests do, counts every node fresh).
    routing_index.presence_cache_started(timezone.now() - timedelta(seconds=settings.NODE_STALE_S + 1))
    routing_index.index_forget()
    assert [c.node_id for c in routing_index.routable_index(subnet.pk).candidates] == [str(routable.node.pk)]


def due_for_re_benchmark(subnet, why: str) -> NodeKeys:
    """A connected node, not yet ready, whose passed benchmark is due for renewal."""
    vectors = unit_vectors(4, seed=3)
    BenchmarkReference.objects.create(
        subnet=subnet,
        inputs={"texts": ["a", "b", "c", "d"]},
        result=vectors.astype("<f4").tobytes(),
        shape=list(vectors.shape),
        model_checksum=subnet.model_checksum,
    )
    keys = online_node(subnet, ready=False)
    if why == "too-old":
        old = timezone.now() - timedelta(hours=subnet.benchmark_max_age_h + 1)
        NodeSubnet.objects.filter(node=keys.node).update(benchmarked_at=old)
    else:
        NodeSubnet.objects.filter(node=keys.node).update(jobs_since_benchmark=subnet.benchmark_every_jobs)
    return keys


@pytest.mark.parametrize("why", ["too-old", "enough-jobs"])
def test_a_node_due_for_re_benchmark_keeps_routing_while_it_re_benchmarks(
    subnet, why, django_capture_on_commit_callbacks
):
    keys = due_for_re_benchmark(subnet, why)
    with django_capture_on_commit_callbacks(execute=True):
        presence.node_ready(
            node_id=keys.node.pk, subnet_slug=subnet.slug, model_checksum=subnet.model_checksum, max_concurrent=1
        )
    assert Benchmark.objects.filter(node=keys.node, state=BenchmarkState.ISSUED).count() == 1
    routing_index.index_forget()
    assert [c.node_id for c in routing_index.routable_index(subnet.pk).candidates] == [str(keys.node.pk)]


@pytest.mark.parametrize("why", ["too-old", "enough-jobs"])
def test_a_node_due_for_re_benchmark_that_reports_ready_bumps_the_index(
    subnet, why, django_capture_on_commit_callbacks
):
    """Reporting ready makes such a node routable (it keeps its jobs while it re-benchmarks),
    so dispatchers must learn it at once, as they do for a node with a fresh benchmark."""
    keys = due_for_re_benchmark(subnet, why)
    assert len(routing_index.routable_index(subnet.pk)) == 0
    version = routing_index.index_version(subnet.pk)

    with django_capture_on_commit_callbacks(execute=True):
        presence.node_ready(
            node_id=keys.node.pk, subnet_slug=subnet.slug, model_checksum=subnet.model_checksum, max_concurrent=1
        )

    assert routing_index.index_version(subnet.pk) > version
    assert [c.node_id for c in routing_index.routable_index(subnet.pk).candidates] == [str(keys.node.pk)]


# ---------------------------------------------------------------- dispatch with a stale index


def test_a_node_gone_offline_after_the_index_was_built_is_not_dispatched(subnet):
    pool = [online_node(subnet) for _ in range(3)]
    settled(*pool)
    job, _ = submit.job_submit(
        user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["stale"]}, idempotency_key="stale"
    )
    stale = routing_index.routable_index(subnet.pk)
    favourite = stale.select(str(job.id), 2, distinct=subnet.routing_policy["distinct"])[0]
    # Offline behind the index's back: no bump, the cached index still lists it.
    Node.objects.filter(pk=favourite.node_id).update(is_online=False)
    assert routing_index.routable_index(subnet.pk) is stale

    created = dispatch.job_dispatch(job_id=job.id)

    assert len(created) == 2
    assert {str(a.node_id) for a in created} == {str(k.node.pk) for k in pool} - {favourite.node_id}
    rebuilt = routing_index.routable_index(subnet.pk)
    assert rebuilt is not stale and favourite.node_id not in {c.node_id for c in rebuilt.candidates}


# ---------------------------------------------------------------- weights as they stand now


def test_a_reference_node_weighs_its_reputation(subnet):
    keys = online_node(subnet, reputation=0.7)
    settled(keys)
    assert weights(subnet)[str(keys.node.pk)] == pytest.approx(0.7)


def test_idle_time_decays_the_reputation_in_the_weight(subnet):
    busy = online_node(subnet, reputation=0.8, last_job_at=timezone.now())
    idle = online_node(subnet, reputation=0.8, last_job_at=timezone.now() - timedelta(hours=72))
    long_idle = online_node(subnet, reputation=0.8, last_job_at=timezone.now() - timedelta(days=365))
    low = online_node(subnet, reputation=0.1, last_job_at=timezone.now() - timedelta(days=365))
    settled(busy, idle, long_idle, low)
    w = weights(subnet)
    assert w[str(busy.node.pk)] == pytest.approx(0.8, abs=1e-4)
    assert w[str(idle.node.pk)] == pytest.approx(0.2 + 0.6 / 2, abs=1e-4)  # one 72 h half-life
    assert w[str(long_idle.node.pk)] == pytest.approx(0.2, abs=1e-4)  # back to the starting value
    assert w[str(low.node.pk)] == pytest.approx(0.1)  # never lifted by idling
    # The stored reputation is untouched: decay is applied when weighing.
    assert Node.objects.get(pk=idle.node.pk).reputation == 0.8


def test_benchmark_age_decays_a_fast_nodes_edge_in_the_weight(subnet):
    fresh, day_old, ancient = (online_node(subnet) for _ in range(3))
    now = timezone.now()
    for keys, age in ((fresh, timedelta(0)), (day_old, timedelta(hours=24)), (ancient, timedelta(days=60))):
        # Twice the reference speed, half its latency: score 1 + 0.4 + 0.3 when fresh.
        NodeSubnet.objects.filter(node=keys.node).update(
            items_per_s=60.0, latency_p50_ms=125.0, benchmarked_at=now - age
        )
    settled(fresh, day_old, ancient)
    w = weights(subnet)
    reputation = 0.2
    assert w[str(fresh.node.pk)] == pytest.approx(1.7 * reputation, rel=1e-4)
    assert w[str(day_old.node.pk)] == pytest.approx(1.35 * reputation, rel=1e-4)  # half the edge after one half-life
    assert w[str(ancient.node.pk)] == pytest.approx(1.0 * reputation, rel=1e-4)


def test_failures_and_downtime_lower_the_weight(subnet):
    steady, flaky = online_node(subnet), online_node(subnet, jobs_assigned=10, jobs_failed=10)
    settled(steady, flaky)
    # Offline for half its life: closed sessions count, the open one started half-way.
    half = online_node(subnet)
    two_hours_ago, an_hour_ago = timezone.now() - timedelta(hours=2), timezone.now() - timedelta(hours=1)
    Node.objects.filter(pk=half.node.pk).update(created_at=two_hours_ago, connected_at=an_hour_ago)
    routing_index.index_forget()
    w = weights(subnet)
    assert w[str(flaky.node.pk)] == pytest.approx(w[str(steady.node.pk)] * (1 - 0.1 / 2))
    assert w[str(half.node.pk)] == pytest.approx(w[str(steady.node.pk)] * (1 - 0.2 / 2), rel=1e-3)

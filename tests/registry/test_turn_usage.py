"""The TURN server's own figures bound what a peer-to-peer job's peers say they relayed
(docs/p2p.md §6, registry.turn_usage): coturn publishes each ended allocation's bytes on
Redis, named by the TURN REST username the registry made for a job's user (`job-<id>`) or a
node's assignment (`asg-<id>`); the listener records each once; a job whose peers report
relayed bytes waits a moment at verification for the report and is charged the smaller
figure."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from django.conf import settings as django_settings

from bim_core import protocol
from ledger.models import Transfer
from registry import dispatch, p2p, results, turn_usage
from registry.models import Job, JobState, TurnAllocation
from registry.terms import JobTerms
from registry.verify import job_verify
from tests.factories import SubnetFactory, online_node, unit_vectors, user_with_credits
from tests.p2p_jobs import commit_message, p2p_submit

INPUTS = {"texts": ["relayed through TURN", "and bounded by it"]}
RELAYED = {"relayed": True, "bytes_sent": 1_000_000, "bytes_received": 500_000}


def channel(username: str, allocation: str = "001000000000000001") -> str:
    return f"turn/realm/bim.test/user/{username}/allocation/{allocation}/total_traffic"


@pytest.fixture
def relayed_job(settings, django_capture_on_commit_callbacks):
    """Makes a P2P job of a subnet with a relay surcharge (1,000 micro-credits a MB, 2 MB
    reserved) whose node A reports 1.5 MB relayed with its commit; both committed the same
    hash and the user confirmed it. `turn_stats`: BIM_TURN_STATS, as the test runs."""

    def make(turn_stats: bool = False):
        settings.P2P_TURN_STATS = turn_stats
        return _relayed_job(settings, django_capture_on_commit_callbacks)

    return make


def _relayed_job(settings, django_capture_on_commit_callbacks):
    settings.P2P_AUDIT_BP = 0
    subnet = SubnetFactory(relay_surcharge_micro_per_mb=1_000, relay_reserve_mb=2)
    nodes = {n.node.pk: n for n in (online_node(subnet) for _ in range(2))}
    user = user_with_credits(5)
    job = p2p_submit(user, subnet, INPUTS)
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.job_dispatch(job_id=job.id)
    job = Job.objects.get(pk=job.pk)
    vectors = unit_vectors(2)
    with django_capture_on_commit_callbacks(execute=True):
        for assignment in job.assignments.order_by("role"):
            keys = nodes[assignment.node_id]
            transport = RELAYED if assignment.role == "A" else {"relayed": False, "bytes_sent": 10, "bytes_received": 10}
            results.commit_record(node_id=keys.node.pk, message=commit_message(keys, job, assignment, vectors, transport=transport))
    a = job.assignments.get(role="A")
    with django_capture_on_commit_callbacks(execute=True):
        p2p.delivery_confirm(user=user, job_id=job.pk, assignment_id=a.pk, result_hash=protocol.sha256_hex(protocol.encode_vectors(vectors)))
    return Job.objects.get(pk=job.pk), a, JobTerms.of_subnet(subnet).price_for(2)


@pytest.mark.django_db
def test_an_allocation_is_recorded_once_for_the_job_its_username_names(relayed_job):
    job, a, _ = relayed_job()
    user_side = turn_usage.usage_record(channel(f"1796402360:job-{job.pk}"), "rcvp=109, rcvb=108459, sentp=107, sentb=8256")
    node_side = turn_usage.usage_record(channel(f"1796402360:asg-{a.pk}", "7"), "rcvp=1, rcvb=100, sentp=1, sentb=50")
    assert (user_side.job_id, user_side.party, user_side.bytes) == (job.pk, "user", 108459 + 8256)
    assert (node_side.job_id, node_side.party, node_side.bytes) == (job.pk, "node", 150)
    # The same allocation again, another application's user, a job nobody knows, bad figures.
    assert turn_usage.usage_record(channel(f"1796402360:job-{job.pk}"), "rcvp=1, rcvb=1, sentp=1, sentb=1") is None
    assert turn_usage.usage_record(channel("1796402360:alice"), "rcvp=1, rcvb=1, sentp=1, sentb=1") is None
    assert turn_usage.usage_record(channel(f"1796402360:job-{uuid.uuid4()}"), "rcvp=1, rcvb=1, sentp=1, sentb=1") is None
    assert turn_usage.usage_record(channel(f"1796402360:asg-{a.pk}", "8"), "rcvp=1, rcvb=oops") is None
    assert turn_usage.usage_record(f"turn/realm/x/user/1:job-{job.pk}/allocation/1/traffic", "rcvb=1, sentb=1") is None
    assert turn_usage.turn_bytes_reported(job) == 108459 + 8256 + 150


@pytest.mark.django_db
def test_a_job_waits_for_the_turn_report_and_is_charged_the_smaller_figure(relayed_job, django_capture_on_commit_callbacks):
    job, a, price = relayed_job(turn_stats=True)
    job_verify(job_id=job.pk)
    assert Job.objects.get(pk=job.pk).state == JobState.VERIFYING  # waiting for the TURN server's word

    with django_capture_on_commit_callbacks(execute=True):  # its report queues the verification
        turn_usage.usage_record(channel(f"1796402360:asg-{a.pk}"), "rcvp=300, rcvb=200000, sentp=300, sentb=100000")
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED and job.turn_bytes == 1_500_000
    # 300,000 bytes are what TURN saw: 0.3 MB at 1,000 a MB, not the 1.5 MB node A claimed.
    assert Transfer.objects.get(idempotency_key=f"job:{job.pk}:payout:relay").amount == 300
    assert Transfer.objects.get(job_id=job.pk, kind="capture").amount == price + 300


@pytest.mark.django_db
def test_without_a_report_in_time_the_peers_figure_stands(relayed_job, settings):
    settings.P2P_TURN_REPORT_S = 0
    job, _, price = relayed_job(turn_stats=True)
    job_verify(job_id=job.pk)
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.SETTLED
    assert Transfer.objects.get(idempotency_key=f"job:{job.pk}:payout:relay").amount == 1_500


@pytest.mark.django_db(transaction=True)
def test_the_listener_records_what_the_turn_server_publishes_on_redis(relayed_job):
    if not django_settings.REDIS_URL:
        pytest.fail("this test is about Redis: run it with REDIS_URL (make test does)")
    job, a, _ = relayed_job()
    stop = threading.Event()
    listener = threading.Thread(target=turn_usage.listen, args=(django_settings.REDIS_URL, "bim.test"), kwargs={"stop": stop})
    listener.start()
    try:
        publisher = redis.Redis.from_url(django_settings.REDIS_URL)
        deadline = time.monotonic() + 10
        while not TurnAllocation.objects.filter(job=job).exists() and time.monotonic() < deadline:
            # Published until heard: pub/sub delivers only to who listens at that moment.
            publisher.publish(channel(f"1796402360:asg-{a.pk}"), "rcvp=3, rcvb=3000, sentp=3, sentb=2000")
            publisher.publish(channel("1796402360:someone-else"), "rcvp=3, rcvb=3000, sentp=3, sentb=2000")
            time.sleep(0.2)
    finally:
        stop.set()
        listener.join(timeout=5)
    assert list(TurnAllocation.objects.filter(job=job).values_list("party", "bytes")) == [("node", 5000)]

"""Diversity-aware dispatch (paper section 7, Appendix C): a job's two nodes never share
what the subnet's routing policy names (by default owner, IP block and ASN; optionally OS
and GPU family), also when a vanished node is replaced; picks are stable per job key, and
owners of equal weight get equal shares. Driven through the dispatch service."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from bim_core.selection import Candidate
from registry import dispatch, presence, routing_index
from registry.models import AssignmentState, Job, JobState, Node
from registry.submit import job_submit
from tests.factories import NodeKeys, SubnetFactory, UserFactory, node_vanish, online_node, user_with_credits

pytestmark = pytest.mark.django_db

DEFAULT_POLICY = ("owner_id", "ip_block", "asn")
FULL_POLICY = ["owner_id", "ip_block", "asn", "os", "gpu_family"]
_hosts = itertools.count(1)


def node(
    subnet, owner=None, *, block: int, asn: int | None = None, os: str = "", gpu: str = "", **node_fields
) -> NodeKeys:
    """An online, routable node in the /24 172.16.<block>.0 (apart from the factory's 10/8),
    past probation: these tests hold many unanswered offers per node."""
    node_fields.setdefault("jobs_agreed", 10)
    return online_node(
        subnet, owner, ip=f"172.16.{block}.{next(_hosts) % 250 + 1}", asn=asn, os=os, gpu_family=gpu, **node_fields
    )


def settled(*all_keys: NodeKeys) -> None:
    """Connected for their whole hour-long lives: uptime exactly 1, weights stable over time."""
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Node.objects.filter(pk__in=[k.node.pk for k in all_keys]).update(created_at=an_hour_ago, connected_at=an_hour_ago)
    routing_index.index_forget()


def shared(a: Node, b: Node, policy=DEFAULT_POLICY) -> list[str]:
    """The policy attributes two nodes share, as routing sees them."""
    ca, cb = routing_index.candidate_for(a), routing_index.candidate_for(b)
    return [attr for attr in policy if getattr(ca, attr) == getattr(cb, attr)]


def submit(subnet, user, key: str) -> Job:
    job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["diversity"]}, idempotency_key=key)
    dispatch.job_dispatch(job_id=job.id)
    job.refresh_from_db()
    return job


def active_nodes(job: Job) -> list[Node]:
    return [
        a.node for a in job.assignments.filter(state=AssignmentState.DISPATCHED).select_related("node").order_by("role")
    ]


@pytest.fixture
def user():
    return user_with_credits(10)


# ---------------------------------------------------------------- the default policy


def test_the_default_policy_is_owner_ip_block_and_asn():
    assert tuple(SubnetFactory().routing_policy["distinct"]) == DEFAULT_POLICY


@pytest.mark.parametrize(
    "pair",
    [
        pytest.param({"same_owner": True, "blocks": (1, 2), "asns": (64500, 64501)}, id="same-owner"),
        pytest.param({"same_owner": False, "blocks": (3, 3), "asns": (None, None)}, id="same-24-no-asn"),
        pytest.param({"same_owner": False, "blocks": (3, 3), "asns": (64500, 64501)}, id="same-24-other-asns"),
        pytest.param({"same_owner": False, "blocks": (4, 5), "asns": (64500, 64500)}, id="same-asn-other-24s"),
    ],
)
def test_two_nodes_sharing_owner_block_or_asn_never_pair(pair, user):
    subnet = SubnetFactory()
    owner = UserFactory()
    first = node(subnet, owner, block=pair["blocks"][0], asn=pair["asns"][0])
    second = node(subnet, owner if pair["same_owner"] else None, block=pair["blocks"][1], asn=pair["asns"][1])

    job = submit(subnet, user, "waits")
    assert job.state == JobState.QUEUED and not job.assignments.exists()

    third = node(subnet, block=9, asn=64999)
    dispatch.job_dispatch(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED
    picked = active_nodes(job)
    assert len(picked) == 2 and third.node in picked
    assert shared(*picked) == []
    assert {first.node.pk, second.node.pk} & {n.pk for n in picked}


def test_when_only_same_block_nodes_are_online_the_job_stays_queued(user):
    subnet = SubnetFactory()
    for _ in range(4):
        node(subnet, block=7)  # four owners, four addresses, one /24
    job = submit(subnet, user, "one-block")
    assert job.state == JobState.QUEUED
    assert dispatch.jobs_dispatch_waiting(subnet_id=subnet.pk) == 0
    assert not job.assignments.exists()


def test_the_default_policy_ignores_os_and_gpu_family(user):
    subnet = SubnetFactory()
    for block in (1, 2):
        node(subnet, block=block, asn=64500 + block, os="linux", gpu="nvidia-ada")
    job = submit(subnet, user, "same-os")
    assert job.state == JobState.DISPATCHED
    assert len(active_nodes(job)) == 2


def test_nodes_with_an_unknown_asn_are_kept_apart_by_their_block(user):
    subnet = SubnetFactory()
    known = node(subnet, block=11, asn=64510)
    unknown = node(subnet, block=12)  # no ASN: routing keys it by its /24
    job = submit(subnet, user, "unknown-asn")
    assert {n.pk for n in active_nodes(job)} == {known.node.pk, unknown.node.pk}
    assert routing_index.candidate_for(unknown.node).asn == unknown.node.ip_block == "172.16.12.0/24"


# ---------------------------------------------------------------- a stricter policy


@pytest.mark.parametrize("attribute", ["os", "gpu_family"])
def test_a_policy_naming_os_and_gpu_family_keeps_them_apart(attribute, user):
    subnet = SubnetFactory(routing_policy={"distinct": FULL_POLICY})
    first = node(subnet, block=1, asn=64501, os="linux", gpu="nvidia-ada")
    second = node(
        subnet,
        block=2,
        asn=64502,
        os="linux" if attribute == "os" else "windows",
        gpu="nvidia-ada" if attribute == "gpu_family" else "amd-rdna3",
    )
    assert shared(first.node, second.node, FULL_POLICY) == [attribute]

    job = submit(subnet, user, "strict")
    assert job.state == JobState.QUEUED

    third = node(subnet, block=3, asn=64503, os="macos", gpu="apple-m3")
    dispatch.job_dispatch(job_id=job.id)
    job.refresh_from_db()
    picked = active_nodes(job)
    assert len(picked) == 2 and third.node in picked
    assert shared(*picked, FULL_POLICY) == []


@pytest.mark.parametrize("attribute", ["os", "gpu"])
def test_nodes_that_report_no_os_or_gpu_family_do_not_slip_past_the_rule(attribute, user):
    """An empty fingerprint field counts as a value: leaving it out must not be a way around
    the rule that constrains the nodes that do report it."""
    subnet = SubnetFactory(routing_policy={"distinct": FULL_POLICY})
    reported = {"os": "linux", "gpu": "nvidia-ada"}
    node(subnet, block=1, asn=64501, **{**reported, attribute: ""})
    node(subnet, block=2, asn=64502, **{"os": "windows", "gpu": "amd-rdna3", attribute: ""})
    job = submit(subnet, user, "unknown-env")
    assert job.state == JobState.QUEUED

    # A node that does report the field pairs with one that does not.
    third = node(subnet, block=3, asn=64503, os="macos", gpu="apple-m3")
    dispatch.job_dispatch(job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED and third.node in active_nodes(job)


def test_a_replacement_differs_from_the_remaining_partner_in_every_policy_attribute(user):
    subnet = SubnetFactory(routing_policy={"distinct": FULL_POLICY})
    gone = node(subnet, block=1, asn=64501, os="linux", gpu="nvidia-ada")
    partner = node(subnet, block=2, asn=64502, os="windows", gpu="amd-rdna3")
    jobs = [submit(subnet, user, f"replace-{i}") for i in range(10)]
    assert all({n.pk for n in active_nodes(job)} == {gone.node.pk, partner.node.pk} for job in jobs)

    # Spares that each share exactly one policy attribute with the partner, and one that
    # shares none: only that one may replace the vanished node.
    p = partner.node
    spares = [
        node(subnet, p.owner, block=21, asn=64521, os="os-21", gpu="gpu-21"),
        node(subnet, block=2, asn=64522, os="os-22", gpu="gpu-22"),
        node(subnet, block=23, asn=64502, os="os-23", gpu="gpu-23"),
        node(subnet, block=24, asn=64524, os="windows", gpu="gpu-24"),
        node(subnet, block=25, asn=64525, os="os-25", gpu="amd-rdna3"),
    ]
    for spare in spares:
        assert len(shared(spare.node, p, FULL_POLICY)) == 1
    eligible = node(subnet, block=30, asn=64530, os="macos", gpu="apple-m3")

    node_vanish(gone.node.pk)
    for job in jobs:
        dispatch.job_dispatch(job_id=job.id)
        picked = active_nodes(job)
        assert {n.pk for n in picked} == {partner.node.pk, eligible.node.pk}, job
        assert shared(*picked, FULL_POLICY) == []
        assert job.assignments.get(node=gone.node).state == AssignmentState.LOST


def test_a_vanished_node_with_no_eligible_replacement_leaves_its_role_open(user):
    subnet = SubnetFactory(routing_policy={"distinct": FULL_POLICY})
    gone = node(subnet, block=1, asn=64501, os="linux", gpu="nvidia-ada")
    partner = node(subnet, block=2, asn=64502, os="windows", gpu="amd-rdna3")
    job = submit(subnet, user, "no-replacement")
    node(subnet, block=3, asn=64503, os="windows", gpu="gpu-3")  # shares the partner's OS

    node_vanish(gone.node.pk)
    assert dispatch.job_dispatch(job_id=job.id) == []
    job.refresh_from_db()
    assert job.state == JobState.DISPATCHED
    assert [n.pk for n in active_nodes(job)] == [partner.node.pk]


# ---------------------------------------------------------------- many jobs


def pool_of_twelve(subnet) -> list[NodeKeys]:
    """Twelve nodes whose attributes collide often: 4 owners, 6 blocks, 3 ASNs, 3 OSes,
    2 GPU families, each attribute cycling at its own period."""
    owners = [UserFactory() for _ in range(4)]
    oses = ["linux", "windows", "macos"]
    gpus = ["nvidia-ada", "amd-rdna3"]
    return [
        node(subnet, owners[i % 4], block=40 + i % 6, asn=64600 + (i // 4), os=oses[i % 3], gpu=gpus[(i // 6) % 2])
        for i in range(12)
    ]


def test_two_hundred_jobs_over_twelve_nodes_never_break_the_policy(user):
    subnet = SubnetFactory(routing_policy={"distinct": FULL_POLICY})
    pool = pool_of_twelve(subnet)
    pairs = list(itertools.combinations([k.node for k in pool], 2))
    allowed = {frozenset((a.pk, b.pk)) for a, b in pairs if not shared(a, b, FULL_POLICY)}
    # The pool is hard: most pairs are forbidden, yet every node has an allowed partner.
    assert len(allowed) < len(pairs) / 3
    assert {pk for pair in allowed for pk in pair} == {k.node.pk for k in pool}

    used: Counter = Counter()
    for i in range(200):
        if i % 10 == 0:
            # Live nodes heartbeat every few seconds: on a loaded machine this loop outlasts
            # NODE_STALE_S, and silent nodes would drop out of routing (the job stays queued).
            presence.nodes_heartbeat([(k.node.pk, k.node.channel_name) for k in pool])
        job = submit(subnet, user, f"many-{i}")
        picked = active_nodes(job)
        assert job.state == JobState.DISPATCHED and len(picked) == 2, job
        assert shared(*picked, FULL_POLICY) == [], (job, picked)
        used[frozenset(n.pk for n in picked)] += 1
    assert set(used) <= allowed
    assert len(used) >= len(allowed) // 2  # the load spreads over the allowed pairs


# ---------------------------------------------------------------- stable and fair picks


def test_the_same_job_key_gets_the_same_picks_while_the_node_set_is_unchanged():
    subnet = SubnetFactory(routing_policy={"distinct": FULL_POLICY})
    pool = pool_of_twelve(subnet)
    settled(*pool)
    keys = [f"job-{i}" for i in range(50)]

    def picks(index) -> list[list[str]]:
        return [[c.node_id for c in index.select(key, 2, distinct=FULL_POLICY)] for key in keys]

    index = routing_index.routable_index(subnet.pk)
    first = picks(index)
    assert picks(index) == first
    assert all(len(p) == 2 for p in first)
    assert len({tuple(p) for p in first}) > 3

    routing_index.index_forget(subnet.pk)
    rebuilt = routing_index.routable_index(subnet.pk)
    assert rebuilt is not index
    assert picks(rebuilt) == first

    # A node joining moves only the jobs it wins.
    newcomer = node(subnet, block=99, asn=64999, os="freebsd", gpu="intel-arc")
    settled(newcomer)
    joined = picks(routing_index.routable_index(subnet.pk))
    for before, after in zip(first, joined, strict=True):
        if str(newcomer.node.pk) not in after:
            assert after == before


def test_owners_with_equal_total_weight_get_equal_shares():
    subnet = SubnetFactory()
    owners = [UserFactory() for _ in range(3)]
    # One node at reputation 0.6, two at 0.3, three at 0.2: 0.6 per owner in every case.
    layout = [(owners[0], 0.6, 1), (owners[1], 0.3, 2), (owners[2], 0.2, 3)]
    all_keys = []
    for block, (owner, reputation, count) in enumerate(layout):
        for i in range(count):
            all_keys.append(node(subnet, owner, block=60 + 3 * block + i, reputation=reputation))
    settled(*all_keys)
    index = routing_index.routable_index(subnet.pk)
    by_owner = {c.node_id: c.owner_id for c in index.candidates}
    assert {round(sum(c.weight for c in index.candidates if c.owner_id == str(o.pk)), 9) for o in owners} == {0.6}

    draws = 6000
    wins = Counter(by_owner[index.select(f"job-{i}", 1)[0].node_id] for i in range(draws))
    for owner in owners:
        assert wins[str(owner.pk)] / draws == pytest.approx(1 / 3, abs=0.03), wins


def test_weights_show_up_as_win_shares_between_nodes():
    subnet = SubnetFactory()
    heavy = node(subnet, block=80, reputation=0.6)
    light = node(subnet, block=81, reputation=0.2)
    settled(heavy, light)
    index = routing_index.routable_index(subnet.pk)
    draws = 4000
    wins = Counter(index.select(f"job-{i}", 1)[0].node_id for i in range(draws))
    assert wins[str(heavy.node.pk)] / draws == pytest.approx(0.75, abs=0.03)


def test_candidates_carry_the_node_attributes_routing_compares():
    subnet = SubnetFactory()
    keys = node(subnet, block=90, asn=64590, os="linux", gpu="nvidia-ada")
    (candidate,) = routing_index.routable_index(subnet.pk).candidates
    assert candidate == Candidate(
        node_id=str(keys.node.pk),
        owner_id=str(keys.node.owner_id),
        weight=candidate.weight,
        ip_block="172.16.90.0/24",
        asn="AS64590",
        os="linux",
        gpu_family="nvidia-ada",
    )
    assert candidate.weight > 0


def test_two_newcomers_are_never_a_jobs_only_pair_while_a_vouched_node_is_routable(user):
    """Two colluding newcomers would agree on anything: every job gets a node with a
    record of verified jobs first (and waits for one when all are busy)."""
    subnet = SubnetFactory()
    veteran = node(subnet, block=101, jobs_agreed=10)
    newcomers = [node(subnet, block=102 + i, jobs_agreed=0) for i in range(3)]
    settled(veteran, *newcomers)
    placed = 0
    for i in range(12):
        job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["t"]}, idempotency_key=f"v{i}")
        dispatch.job_dispatch(job_id=job.id)
        nodes = set(job.assignments.values_list("node_id", flat=True))
        # With the veteran's queue full (no escrow yet: a short queue) a job waits for it.
        assert veteran.node.pk in nodes or not nodes
        placed += bool(nodes)
    assert placed >= 1


def test_a_market_without_a_vouched_node_pairs_newcomers(user):
    subnet = SubnetFactory()
    newcomers = [node(subnet, block=120 + i, jobs_agreed=0) for i in range(2)]
    settled(*newcomers)
    job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["t"]}, idempotency_key="cold")
    assert len(dispatch.job_dispatch(job_id=job.id)) == 2


def test_a_tie_breaker_is_a_vouched_node_while_one_is_routable(user):
    """A newcomer breaking a tie between a vouched node and its colluding partner would
    out-vote the honest node: the third node has a record."""
    subnet = SubnetFactory()
    honest = node(subnet, block=130, jobs_agreed=10)
    colluders = [node(subnet, block=131 + i, jobs_agreed=0) for i in range(3)]
    referee = node(subnet, block=140, jobs_agreed=10)
    settled(honest, referee, *colluders)
    job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["t"]}, idempotency_key="tie")
    picked = dispatch._select_vouched_first(
        routing_index.routable_index(subnet.id), str(job.id), 1, had=[], saturated=[], distinct=list(DEFAULT_POLICY),
        partners=[routing_index.candidate_for(honest.node), routing_index.candidate_for(colluders[0].node)],
    )
    assert [p.node_id for p in picked] == [str(referee.node.pk)]

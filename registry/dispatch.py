"""Dispatch: give each missing role of a job to a node chosen by weighted rendezvous hashing
over the subnet's routing index, under its diversity policy and adaptive replication.
"""

from __future__ import annotations

import functools
import random
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from bim_core.selection import DIVERSITY_ATTRIBUTES, Candidate, NodeIndex

from . import effects, p2p, routing_index
from .jobs import (
    OPEN_ASSIGNMENT_STATES,
    PAIR_ROLES,
    ROLES_BY_STATE,
    job_expire,
    job_locked,
    job_step_isolated,
    job_transition,
    job_trusted_only,
)
from .models import (
    Assignment,
    Job,
    JobState,
    Node,
)
from .prepared import PreparedQuery


def job_dispatch(*, job_id: object) -> list[Assignment]:
    """Give every missing role of a job to a node. A queued job waits until two nodes its
    subnet's diversity policy allows together are online; a dispatched job whose node
    vanished gets a replacement that is no node it had before and shares no policy
    attribute with its remaining node; a job in adjudication gets its tie-breaker C, which
    shares no policy attribute with A or B."""
    with transaction.atomic():
        job = job_locked(job_id)
        if job is None:
            return []
        batch = DispatchBatch(job.subnet_id)
        created = _job_dispatch_locked(job, batch)
        batch.flush()
        return created


class DispatchBatch:
    """What placing jobs of one subnet reads once, however many jobs it places in one
    transaction: every online node's offer queue, the subnet's routing index and the rows
    of the nodes picked (each read when first needed; reading the index's version and the
    nodes job by job was a fifth of the worker's CPU in bench/throughput.py). Offers made in
    the batch are counted as they are made, so a node's queue fills within the batch as it
    would across calls. The nodes' offer counters are written once, by `flush`, in
    primary-key order: updated job by job, two batches (or a batch and a settlement, which
    locks nodes in that order too) deadlocked on the node rows."""

    def __init__(self, subnet_id: int) -> None:
        self.subnet_id = subnet_id
        self._slots: dict[str, routing_index.OfferSlots] | None = None
        self._index: NodeIndex | None = None
        self._online: dict[uuid.UUID, Node] = {}
        self.offers: Counter[uuid.UUID] = Counter()

    @property
    def slots(self) -> dict[str, routing_index.OfferSlots]:
        if self._slots is None:
            self._slots = routing_index.offer_slots(self.subnet_id)
        return self._slots

    def index(self) -> NodeIndex:
        if self._index is None:
            self._index = routing_index.routable_index(self.subnet_id)
        return self._index

    def index_stale(self) -> None:
        """A pick was not online after all: rebuild the index from the database."""
        routing_index.index_forget(self.subnet_id)
        self._index = None

    def online_nodes(self, node_ids: list[uuid.UUID], *, trusted_only: bool) -> dict[uuid.UUID, Node]:
        """The rows of those nodes that are online (and trusted, with `trusted_only`), read
        once in the batch: a node found online stays so for the batch's snapshot."""
        unread = [pk for pk in node_ids if pk not in self._online]
        if unread:
            self._online.update(Node.objects.filter(is_online=True).in_bulk(unread))
        found = {pk: self._online[pk] for pk in node_ids if pk in self._online}
        return {pk: node for pk, node in found.items() if node.trusted or not trusted_only}

    def free_slots(self) -> int:
        """Offers the online nodes can still take: at most this many jobs can be placed."""
        return sum(max(0, slots.limit - slots.open) for slots in self.slots.values())

    def saturated(self) -> list[str]:
        return [node_id for node_id, slots in self.slots.items() if slots.full]

    def offered(self, node_id: uuid.UUID) -> None:
        self.offers[node_id] += 1
        if (slots := self.slots.get(str(node_id))) is not None:
            slots.open += 1

    def flush(self) -> None:
        for node_id in sorted(self.offers):
            Node.objects.filter(pk=node_id).update(jobs_assigned=F("jobs_assigned") + self.offers[node_id])
        self.offers.clear()


def _job_dispatch_locked(job: Job, batch: DispatchBatch) -> list[Assignment]:
    if job.state not in ROLES_BY_STATE:
        return []
    if job.expires_at <= timezone.now():
        job_expire(job)
        return []
    # A queued job has none: its first assignments move it to dispatched in one step.
    assignments = [] if job.state == JobState.QUEUED else list(job.assignments.select_related("node"))
    active = [a for a in assignments if a.state in OPEN_ASSIGNMENT_STATES]
    if job.solo and job.state == JobState.DISPATCHED:
        # Its trusted node vanished: a replacement is not trusted, so back to a pair.
        job.solo = False
        job.save(update_fields=["solo"])
    missing = [role for role in ROLES_BY_STATE[job.state] if role not in {a.role for a in active}]
    if not missing:
        return []
    picks = _pick_nodes(job, assignments, active, len(missing), batch)
    if job.state == JobState.QUEUED and picks and _runs_solo(job, picks[0]):
        job.solo = True
        job.save(update_fields=["solo"])
        missing, picks = missing[:1], picks[:1]
    if len(picks) < len(missing) and job.state == JobState.QUEUED:
        return []  # wait for a full pair
    now = timezone.now()
    created = []
    for role, node in zip(missing, picks):
        created.append(
            Assignment(
                id=uuid.uuid4(),
                job=job,
                node=node,
                role=role,
                session_key_pub=node.session_key_pub,
                session_nonce=node.session_nonce,
                session_cert=node.session_cert,
                deadline=assignment_deadline(job, batch.slots.get(str(node.pk)), now),
            )
        )
    Assignment.objects.bulk_create(created)
    if created and job.state == JobState.QUEUED:
        job_transition(job, JobState.DISPATCHED, detail=f"nodes {[str(n.pk) for n in picks]}")
    for assignment in created:
        batch.offered(assignment.node_id)  # counted once written: a step that fails counts nothing
        effects.send_to_node(assignment.node_id, {"type": "job.offer", "message": _job_message(job, assignment)})
    return created


# A node is given this many times its benchmarked time for the job (behind the offers it
# already holds) before its role goes to another node: room for a slow run, not for silence.
ASSIGNMENT_SLACK = 4


def assignment_deadline(job: Job, slots: routing_index.OfferSlots | None, now: datetime) -> datetime:
    """When the registry stops waiting for a node on `job`: k x the node's expected time
    for the job's items at its benchmarked speed, counting the offers queued ahead of it
    (`slots`, its offer queue in the job's subnet), at least NODE_ASSIGNMENT_MIN_S, never
    past the job's own deadline (the outer bound)."""
    if slots is None or not slots.items_per_s:
        return job.expires_at  # never measured: only the job's deadline applies
    items = job.item_count
    expected_s = items / slots.items_per_s * (1 + slots.open / max(1, slots.max_concurrent))
    allowed_s = max(settings.NODE_ASSIGNMENT_MIN_S, ASSIGNMENT_SLACK * expected_s)
    return min(job.expires_at, now + timedelta(seconds=allowed_s))


def _runs_solo(job: Job, node: Node) -> bool:
    """Adaptive replication: a node with a long clean record runs the job alone unless the
    job's check coin (p = adaptive_check_bp, fixed per job id) sends it a second node."""
    subnet = job.subnet
    if not subnet.adaptive_replication:
        return False
    trusted = (
        node.jobs_agreed >= subnet.adaptive_min_jobs
        and node.reputation >= subnet.adaptive_min_reputation
        and (node.banned_until is None or node.banned_until < timezone.now())
        and not node.strike_records.filter(expires_at__gt=timezone.now(), lifted_at__isnull=True).exists()
    )
    return trusted and random.Random(job.id.int).random() * 10_000 >= subnet.adaptive_check_bp


def _pick_nodes(
    job: Job, assignments: list[Assignment], active: list[Assignment], count: int, batch: DispatchBatch
) -> list[Node]:
    """Nodes for the missing roles, by weighted rendezvous hashing over the subnet's routing
    index under its diversity policy: never a node the job had, and nothing the policy
    names (owner, IP block, ASN, OS, GPU family) shared with the job's other nodes."""
    distinct = [a for a in job.subnet.routing_policy.get("distinct", []) if a in DIVERSITY_ATTRIBUTES]
    partners = [routing_index.candidate_for(a.node) for a in active]
    had = [str(a.node_id) for a in assignments]
    # A trusted subnet's job (its user's job, a honeypot, a tie-breaker, a replacement:
    # all pass here) goes to registry-operated nodes only, whatever the index holds: the
    # selection filters, and the rows are read again, so trust withdrawn since the index
    # was built takes effect now. None available: the job waits, or expires as any other.
    trusted_only = job_trusted_only(job)
    # Nodes with a full queue (`saturated`) get no more offers now; the job waits for them
    # or others.
    saturated = batch.saturated()
    live: list[Node] = []
    for _ in range(2):
        index = batch.index()
        # A peer-to-peer job whose input comes over a data channel (none held here) goes to
        # nodes with WebRTC first: one without would make its user wait out the connection
        # timeout before falling back to the relay. Too few with it: one without.
        without_webrtc = index.without_webrtc if p2p.job_is_p2p(job) and not job.inputs else []
        picks = _select_vouched_first(
            index, str(job.id), count,
            had=had, saturated=saturated + without_webrtc, distinct=distinct, partners=partners, trusted_only=trusted_only,
        )
        if len(picks) < count and without_webrtc:
            picks = _select_vouched_first(
                index, str(job.id), count,
                had=had, saturated=saturated, distinct=distinct, partners=partners, trusted_only=trusted_only,
            )
        found = batch.online_nodes([uuid.UUID(p.node_id) for p in picks], trusted_only=trusted_only)
        live = [found[uuid.UUID(p.node_id)] for p in picks if uuid.UUID(p.node_id) in found]
        if len(live) == len(picks):
            return live
        batch.index_stale()  # rebuilt once
    return live


def _select_vouched_first(
    index: NodeIndex,
    key: str,
    count: int,
    *,
    had: list[str],
    saturated: list[str],
    distinct: list[str],
    partners: list[Candidate],
    trusted_only: bool = False,
) -> list[Candidate]:
    """Pick `count` nodes. A job's results are checked only against each other, so two
    nodes without a record of verified jobs must not be its only checkers (two colluding
    newcomers would agree on anything), nor may a newcomer break a tie (with a colluding
    partner it would out-vote the honest node): while the subnet has a vouched node the
    job has not had, a job without one, and every tie-breaker, gets one first, waiting for
    it when all are busy. A market with no vouched node yet (a cold start) picks from
    everyone."""
    excluded = had + saturated
    tie_breaker = len(partners) >= 2
    eligible = [c for c in index.candidates if c.trusted or not trusted_only]
    if count and (tie_breaker or not any(p.vouched for p in partners)):
        vouched = [c.node_id for c in eligible if c.vouched and c.node_id not in had]
        if vouched:
            newcomers = [c.node_id for c in eligible if not c.vouched]
            first = index.select(
                key, 1, exclude_node_ids=excluded + newcomers, distinct=distinct, avoid=partners, trusted_only=trusted_only
            )
            if not first:
                return []
            rest = index.select(
                key, count - 1, exclude_node_ids=excluded + [first[0].node_id], distinct=distinct,
                avoid=partners + first, trusted_only=trusted_only,
            )
            return first + rest
    return index.select(
        key, count, exclude_node_ids=excluded, distinct=distinct, avoid=partners, trusted_only=trusted_only
    )


def _job_message(job: Job, assignment: Assignment) -> dict[str, Any]:
    message = {
        "type": "job",
        "assignment_id": str(assignment.id),
        "job_id": str(job.id),
        "role": assignment.role,
        "contract": job.contract,
        "contract_hash": job.contract_hash,
        "inputs": job.inputs,
        # This node's own deadline: past it the role goes to another node.
        "deadline": (assignment.deadline or job.expires_at).isoformat(),
    }
    if p2p.job_is_p2p(job) and not job.inputs:
        # The input comes from the user over a data channel (docs/p2p.md): no inputs here,
        # the ICE servers to answer the user's offer with instead.
        del message["inputs"]
        message["transport"] = "p2p"
        message["ice_servers"] = p2p.ice_servers_for(f"asg-{assignment.id}")
        message["ice_transport_policy"] = settings.P2P_ICE_TRANSPORT_POLICY
        p2p.peer_assigned_notify(job, assignment)
    return message


# Jobs placed per transaction by `jobs_dispatch_waiting`: one commit and one read of the
# nodes' queues for up to this many jobs, short enough that the rows stay locked briefly.
DISPATCH_BATCH = 50
# Queued jobs in a row that find no node: the pass ends there, the rest would not either.
MISSES_ENDING_A_PASS = 3


def jobs_dispatch_waiting(*, subnet_id: int | None = None) -> int:
    """Place jobs that wait for nodes: dispatched ones missing a role (after a node
    vanished) first, their other node already working, then queued ones, oldest first, in
    batches. Queued on submit and whenever an offer slot frees (coalesced: one run for a
    burst of events) and run by the sweeper for every subnet. Its cost per job does not
    grow with the backlog: queued jobs are read oldest first through a partial index, a
    batch at a time, and a pass stops once a few jobs in a row find no capacity."""
    subnet_ids = (
        [subnet_id]
        if subnet_id is not None
        else list(Job.objects.filter(state__in=ROLES_BY_STATE.keys()).values_list("subnet_id", flat=True).distinct())
    )
    return sum(_subnet_dispatch_waiting(pk) for pk in subnet_ids)


def _subnet_dispatch_waiting(subnet_id: int) -> int:
    placed = 0
    short_handed = _short_handed_job_ids(subnet_id)
    while True:
        repairs, short_handed = short_handed[:DISPATCH_BATCH], short_handed[DISPATCH_BATCH:]
        with transaction.atomic():
            batch = DispatchBatch(subnet_id)
            if repairs:
                waiting, read = _repairs_locked(repairs), DISPATCH_BATCH
                if not waiting:
                    continue  # repaired or taken meanwhile: on to the rest
            else:
                # No more queued jobs than the free offer slots can take (each job takes at
                # least one), and the few misses that end the pass: the rows read per job
                # placed do not grow with the backlog.
                read = min(DISPATCH_BATCH, batch.free_slots() + MISSES_ENDING_A_PASS)
                waiting = _queued_locked(read).all(subnet_id) if read > MISSES_ENDING_A_PASS else []
                if not waiting:
                    return placed
            misses = 0
            for job in waiting:
                made = job_step_isolated(job.pk, "dispatch", lambda job=job, batch=batch: _job_dispatch_locked(job, batch)) or []
                placed += len(made)
                # Once a few in a row find no capacity, the rest will not either.
                misses = 0 if made else misses + 1
                if misses == MISSES_ENDING_A_PASS and not repairs:
                    batch.flush()
                    return placed
            batch.flush()
        if not repairs and len(waiting) < read:
            return placed


# Both reads of every dispatcher run, compiled once (registry.prepared): building them
# was a tenth of the worker's CPU in bench/throughput.py, where a run places a few jobs.
_short_handed = PreparedQuery(
    lambda subnet_id: Job.objects.filter(subnet_id=subnet_id, state__in=(JobState.DISPATCHED, JobState.ADJUDICATING))
    .annotate(open_roles=Count("assignments", filter=Q(assignments__state__in=OPEN_ASSIGNMENT_STATES)))
    .filter(
        Q(state=JobState.DISPATCHED, open_roles__lt=len(PAIR_ROLES))
        | Q(state=JobState.ADJUDICATING, open_roles__lt=len(PAIR_ROLES) + 1)
    )
    .order_by("created_at")
    .only("pk")[:500],
    (int,),
)


def _locked() -> QuerySet[Job]:
    return Job.objects.select_for_update(skip_locked=True, no_key=True, of=("self",)).select_related("subnet", "user")


@functools.cache
def _queued_locked(limit: int) -> PreparedQuery[Job]:
    """The oldest `limit` queued jobs of a subnet, row-locked (one compiled statement per
    limit: a LIMIT is part of the SQL, not a parameter)."""
    return PreparedQuery(
        lambda subnet_id: _locked().filter(subnet_id=subnet_id, state=JobState.QUEUED).order_by("created_at")[:limit],
        (int,),
    )


def _short_handed_job_ids(subnet_id: int) -> list[object]:
    """Jobs under way that miss a role: a node vanished or gave up, or a tie-breaker is due.
    As many as are in flight, never the queued backlog."""
    return [job.pk for job in _short_handed.all(subnet_id)]


def _repairs_locked(job_ids: list[object]) -> list[Job]:
    """Those of the jobs still under way, row-locked; rows another dispatcher holds are
    skipped (it places them), so two workers running this share the work instead of
    queueing on it (as the queued jobs of `_queued_locked`)."""
    return list(_locked().filter(pk__in=job_ids, state__in=ROLES_BY_STATE.keys()).order_by("created_at"))

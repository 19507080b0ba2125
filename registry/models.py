"""Registry: contributor nodes, jobs, their assignments and the job state machine."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from subnets.models import Subnet


class Node(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="nodes")
    name = models.CharField(max_length=100)
    public_key = models.CharField(max_length=64, unique=True, help_text="long-term Ed25519, base64")
    # Environment fingerprint: what diversity rules and drift statistics are keyed by.
    os = models.CharField(max_length=50, blank=True)
    runtime = models.CharField(max_length=50, blank=True)
    backend = models.CharField(max_length=30, blank=True)
    gpu_family = models.CharField(max_length=50, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    ip_block = models.CharField(max_length=64, blank=True, help_text="/24 (IPv4) or /48 (IPv6)")
    asn = models.PositiveIntegerField(null=True, blank=True)
    subnets = models.ManyToManyField(Subnet, through="NodeSubnet", related_name="nodes")
    # Routing weight = per-subnet benchmark score x reputation (bim_core.scoring).
    reputation = models.FloatField(default=0.2)
    strikes = models.PositiveIntegerField(default=0, help_text="strikes ever given")
    banned_until = models.DateTimeField(null=True, blank=True)
    # Operated by the registry: the only nodes a trusted subnet's jobs go to. Set and cleared
    # by an operator's recorded action (registry.sanctions.node_trust / node_distrust), never
    # from anything a node sends.
    trusted = models.BooleanField(default=False, help_text="registry-operated: may run trusted subnets' jobs")
    jobs_assigned = models.PositiveIntegerField(default=0)
    jobs_agreed = models.PositiveIntegerField(default=0)
    jobs_failed = models.PositiveIntegerField(default=0, help_text="lost, given up or disagreed")
    last_job_at = models.DateTimeField(null=True, blank=True)
    online_seconds = models.FloatField(default=0.0, help_text="closed sessions only")
    # Current websocket session, replaced on every connect.
    is_online = models.BooleanField(default=False)
    channel_name = models.CharField(max_length=200, blank=True)
    session_key_pub = models.CharField(max_length=64, blank=True)
    session_nonce = models.CharField(max_length=64, blank=True)
    session_cert = models.CharField(max_length=100, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["is_online", "last_seen"])]

    def __str__(self) -> str:
        return f"{self.name} ({str(self.id)[:8]})"


    def uptime(self, now: Any) -> float:
        """Share of the node's life it has spent connected."""
        online = self.online_seconds
        if self.is_online and self.connected_at is not None:
            online += (now - self.connected_at).total_seconds()
        lifetime = max((now - self.created_at).total_seconds(), online)
        return 1.0 if lifetime <= 0 else min(1.0, online / lifetime)


class NodeSubnet(models.Model):
    """A node's opt-in to a subnet; `ready_at` is set while it holds the verified model, and
    the node is routable once it has also passed the subnet's benchmark (`score` > 0)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE)
    subnet = models.ForeignKey(Subnet, on_delete=models.CASCADE)
    ready_at = models.DateTimeField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(default=1)
    score = models.FloatField(default=0.0)
    items_per_s = models.FloatField(null=True, blank=True)
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    benchmarked_at = models.DateTimeField(null=True, blank=True)
    jobs_since_benchmark = models.PositiveIntegerField(default=0)
    # What the registry saw on real jobs (offer to result, on its own clock), exponentially
    # weighted: routing trusts these over any figure the node reported about itself.
    observed_items_per_s = models.FloatField(null=True, blank=True)
    observed_latency_ms = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["node", "subnet"], name="node_subnet_unique")]


class JobState(models.TextChoices):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    VERIFYING = "verifying"
    ADJUDICATING = "adjudicating"
    SETTLED = "settled"
    FAILED = "failed"
    EXPIRED = "expired"


TERMINAL_STATES = frozenset({JobState.SETTLED, JobState.FAILED, JobState.EXPIRED})

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.QUEUED: frozenset({JobState.DISPATCHED, JobState.FAILED, JobState.EXPIRED}),
    JobState.DISPATCHED: frozenset({JobState.VERIFYING, JobState.FAILED, JobState.EXPIRED}),
    JobState.VERIFYING: frozenset({JobState.SETTLED, JobState.ADJUDICATING, JobState.FAILED}),
    JobState.ADJUDICATING: frozenset({JobState.SETTLED, JobState.FAILED, JobState.EXPIRED}),
    JobState.SETTLED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.EXPIRED: frozenset(),
}


class JobTransport(models.TextChoices):
    RELAY = "relay"
    P2P = "p2p"


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    subnet = models.ForeignKey(Subnet, on_delete=models.PROTECT, related_name="jobs")
    idempotency_key = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    # The Appendix A contract: written once at submit; a database trigger refuses updates.
    contract = models.JSONField()
    contract_hash = models.CharField(max_length=64)
    inputs = models.JSONField()
    item_count = models.PositiveIntegerField()
    price_micro = models.PositiveBigIntegerField()
    # The subnet's economic terms at submit (prices, split, escrow rule, solo price): an
    # operator's later change applies to new jobs only (registry.terms). Empty: a job from
    # before terms were recorded, settled on the subnet's current ones.
    terms = models.JSONField(default=dict, blank=True)
    verification = models.JSONField(default=dict, blank=True)
    receipt = models.JSONField(default=dict, blank=True)
    failure_reason = models.CharField(max_length=200, blank=True)
    warnings = models.JSONField(default=list, blank=True, help_text="told to the user at submit")
    # Decided at dispatch under adaptive replication: one trusted node ("solo") or two.
    solo = models.BooleanField(default=False)
    # How the input and results travel (docs/p2p.md): through the registry, or peer to peer,
    # the registry holding only the contract's input summary until an upload or a fallback
    # brings it the inputs (`inputs` stays {} until then).
    transport = models.CharField(max_length=8, choices=JobTransport.choices, default=JobTransport.RELAY)
    # Why a peer-to-peer job's input came through the registry after all ("" when it did not).
    fallback_reason = models.CharField(max_length=100, blank=True)
    # Payload bytes that passed through the registry (relay inputs and results, uploads) and
    # that TURN relayed between peers (as the peers' stats report): H3's cost, per job.
    relay_bytes = models.PositiveBigIntegerField(default=0)
    turn_bytes = models.PositiveBigIntegerField(default=0)
    # A registry job with a known answer; never on the wire (nodes see an ordinary job).
    honeypot = models.ForeignKey(
        "Honeypot", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    dispatched_at = models.DateTimeField(null=True, blank=True)
    verifying_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "idempotency_key"], name="job_idempotency_key_per_user")
        ]
        indexes = [
            models.Index(fields=["state", "expires_at"]),
            models.Index(fields=["user", "-created_at"]),
            # The dispatcher reads a subnet's queued jobs oldest first, a batch at a time:
            # without this its cost grew with the backlog.
            models.Index(fields=["subnet", "created_at"], condition=Q(state="queued"), name="job_queued_by_age"),
            # The admin dashboard counts the jobs submitted and ended in the last hour and day
            # (registry.dashboard): ranges on these, not scans of the whole table.
            models.Index(fields=["created_at"], name="job_created_at"),
            models.Index(fields=["finished_at"], name="job_finished_at"),
        ]

    def __str__(self) -> str:
        return f"job {self.id} ({self.state})"


class AssignmentRole(models.TextChoices):
    A = "A"
    B = "B"
    C = "C"


class AssignmentState(models.TextChoices):
    DISPATCHED = "dispatched"  # offered to the node, result not yet in
    SUBMITTED = "submitted"  # signed result recorded, waiting for its partner
    AGREED = "agreed"  # verified and paid
    DISAGREED = "disagreed"  # verification failed; nothing paid
    LOST = "lost"  # node vanished or gave up before answering; role re-dispatched
    CANCELLED = "cancelled"  # the job ended before this node answered


ACTIVE_ASSIGNMENT_STATES = (
    AssignmentState.DISPATCHED,
    AssignmentState.SUBMITTED,
    AssignmentState.AGREED,
    AssignmentState.DISAGREED,
)


class Assignment(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="assignments")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="assignments")
    role = models.CharField(max_length=1, choices=AssignmentRole.choices)
    state = models.CharField(
        max_length=16, choices=AssignmentState.choices, default=AssignmentState.DISPATCHED
    )
    # The node's session as certified at dispatch: lets anyone check the result signature later.
    session_key_pub = models.CharField(max_length=64)
    session_nonce = models.CharField(max_length=64)
    session_cert = models.CharField(max_length=100)
    result = models.BinaryField(null=True, blank=True)
    result_shape = models.JSONField(null=True, blank=True)
    result_hash = models.CharField(max_length=64, blank=True)
    signature = models.CharField(max_length=100, blank=True)
    elapsed_ms = models.PositiveIntegerField(null=True, blank=True)
    failure_reason = models.CharField(max_length=200, blank=True)
    dispatched_at = models.DateTimeField(auto_now_add=True)
    # When the registry stops waiting for this node (registry.dispatch.assignment_deadline):
    # the sweeper then gives the role to another node. Never later than the job's deadline.
    deadline = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    # Peer-to-peer jobs (docs/p2p.md): a committed result has its hash and signature but no
    # `result` until the registry asks for it (`upload_reason`, by `upload_due`); the user
    # confirms receiving it (`delivered_at`); the node's transport stats come with the commit.
    # A confirmation can overtake the commit (the node sends the user its bytes first): its
    # hash waits in `delivered_hash` and is judged when the commit arrives.
    result_size = models.PositiveIntegerField(null=True, blank=True)
    upload_reason = models.CharField(max_length=20, blank=True)
    upload_due = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivered_hash = models.CharField(max_length=64, blank=True)
    transport_stats = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            # A node never runs the same job twice (it would verify itself).
            models.UniqueConstraint(fields=["job", "node"], name="assignment_node_once_per_job"),
            models.UniqueConstraint(
                fields=["job", "role"],
                condition=Q(state__in=ACTIVE_ASSIGNMENT_STATES),
                name="assignment_one_active_per_role",
            ),
        ]
        indexes = [models.Index(fields=["node", "state"]), models.Index(fields=["state", "deadline"])]

    def __str__(self) -> str:
        return f"{self.role} of {self.job_id} on {self.node_id}"


class JobEvent(models.Model):
    """Audit trail: one row per state change, written in the same transaction."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    from_state = models.CharField(max_length=16)
    to_state = models.CharField(max_length=16)
    detail = models.CharField(max_length=300, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]


class BenchmarkState(models.TextChoices):
    ISSUED = "issued"
    PASSED = "passed"
    REFUSED = "refused"
    EXPIRED = "expired"


class Benchmark(models.Model):
    """One run of the registry's benchmark suite by one node: fixed inputs, several runs,
    outputs checked against the registry's reference before any figure counts."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="benchmarks")
    subnet = models.ForeignKey(Subnet, on_delete=models.CASCADE, related_name="benchmarks")
    state = models.CharField(max_length=10, choices=BenchmarkState.choices, default=BenchmarkState.ISSUED)
    runs = models.PositiveIntegerField()
    session_key_pub = models.CharField(max_length=64)
    # The suite drawn for this benchmark (the reference's own, or one of its pool).
    inputs = models.JSONField(default=dict, blank=True)
    pool_item = models.ForeignKey(
        "subnets.BenchmarkInput", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    timings_ms = models.JSONField(default=list, blank=True)
    items_per_s = models.FloatField(null=True, blank=True)
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    min_cosine = models.FloatField(null=True, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    issued_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["node", "subnet", "-issued_at"])]


class SessionKey(models.Model):
    """Every session key a hello certified, by its decoded bytes: a session key is single-use
    (docs/protocol.md §2), so a hello with one seen before, from any node, is refused."""

    key = models.CharField(max_length=44, unique=True, help_text="base64 of the raw 32 bytes")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="+")
    used_at = models.DateTimeField(auto_now_add=True, db_index=True)


class Strike(models.Model):
    """A soft strike: it lowers the node's routing weight while active; enough active
    strikes ban the node for a while. Operators see and lift them in admin."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="strike_records")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="strikes")
    reason = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["node", "expires_at"])]


class Honeypot(models.Model):
    """Inputs whose answer the registry computed itself with the subnet's model: sent to
    nodes as ordinary jobs, so a node that forges or skips work is caught."""

    subnet = models.ForeignKey(Subnet, on_delete=models.CASCADE, related_name="honeypots")
    inputs = models.JSONField(help_text="job inputs, as a user of the subnet's task family sends them")
    result = models.BinaryField(help_text="the trusted answer, encoded as the task family's nodes encode it")
    shape = models.JSONField()
    model_checksum = models.CharField(max_length=64)
    uses = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)


class ServiceHeartbeat(models.Model):
    """When a registry-side service that is not a web or Celery process last said it runs
    (the honeypot peer, registry.honeypot_peer): in the database, so every process sees it,
    the embedded default's too."""

    name = models.CharField(max_length=50, primary_key=True)
    seen_at = models.DateTimeField()


class TurnAllocation(models.Model):
    """One TURN allocation's traffic as the TURN server itself reported it when the allocation
    ended (coturn's statistics over Redis, registry.turn_usage): what bounds the relayed bytes
    a peer-to-peer job's peers say they moved. Its username names the job or assignment whose
    credential it was (registry.p2p.ice_servers_for)."""

    username = models.CharField(max_length=120)
    allocation = models.CharField(max_length=40)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="turn_allocations")
    party = models.CharField(max_length=10, help_text="user or node")
    bytes = models.PositiveBigIntegerField(help_text="received from and sent to the party by the TURN server")
    reported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["username", "allocation"], name="turn_allocation_once")]


class AgreementStat(models.Model):
    """How closely verified results of two environments agree, per subnet: every compared
    pair adds one sample, so operators set τ from data (WebGPU vs WASM vs native)."""

    subnet = models.ForeignKey(Subnet, on_delete=models.CASCADE, related_name="agreement_stats")
    env_a = models.CharField(max_length=160, help_text="runtime/backend/GPU family")
    env_b = models.CharField(max_length=160, help_text="runtime/backend/GPU family (env_a <= env_b)")
    samples = models.PositiveBigIntegerField(default=0)
    passed = models.PositiveBigIntegerField(default=0)
    min_similarity = models.FloatField(null=True, blank=True)
    sum_similarity = models.FloatField(default=0.0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subnet", "env_a", "env_b"], name="agreement_stat_per_env_pair")
        ]

    @property
    def mean_similarity(self) -> float | None:
        return self.sum_similarity / self.samples if self.samples else None


class SentinelRun(models.Model):
    """A settled job re-run by the registry's trusted runner, and how far the settled result
    drifted from it."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="sentinel_runs")
    similarity = models.FloatField(null=True, blank=True)
    passed = models.BooleanField()
    detail = models.CharField(max_length=200, blank=True)
    ran_at = models.DateTimeField(auto_now_add=True)


class Dispute(models.Model):
    """A settled result the registry no longer believes (a sentinel drifted beyond tolerance):
    open until an operator resolves it."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="dispute")
    sentinel = models.ForeignKey(SentinelRun, on_delete=models.PROTECT, related_name="disputes")
    reason = models.CharField(max_length=300)
    opened_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=300, blank=True)

    def __str__(self) -> str:
        return f"dispute on job {str(self.job_id)[:8]} ({'resolved' if self.resolved_at else 'open'})"


class SanctionKind(models.TextChoices):
    BAN = "ban", "ban"
    UNBAN = "unban", "unban"
    STRIKES_CLEARED = "strikes_cleared", "strikes cleared"
    TRUST = "trust", "trusted"
    DISTRUST = "distrust", "trust withdrawn"


class NodeSanction(models.Model):
    """An operator's decision about a node's standing (a ban, an early unban, strikes
    cleared, trust given or withdrawn): who, when, why and until when. Written by `registry.sanctions` in the same
    transaction as the change itself and never edited: it is the audit trail an owner's
    complaint is answered from."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="sanctions")
    kind = models.CharField(max_length=16, choices=SanctionKind.choices)
    reason = models.CharField(max_length=300)
    operator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    banned_until = models.DateTimeField(null=True, blank=True, help_text="a ban: until when it holds")
    strikes_lifted = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["node", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} of {self.node_id}"

"""Subnets: one model build each, with its policy, prices, license and artifacts."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from bim_core.content_policy import PolicyInvalid, validate_policy
from bim_core.job_inputs import SubnetLimits


class License(models.Model):
    slug = models.SlugField(max_length=64)
    version = models.CharField(max_length=32)
    name = models.CharField(max_length=200)
    url = models.URLField(blank=True)
    text = models.TextField(blank=True)
    allows_paid_hosting = models.BooleanField(default=True)
    allows_redistribution = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["slug", "version"], name="license_slug_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.version})"


def default_routing_policy() -> dict:
    return {"distinct": ["owner_id", "ip_block", "asn"]}


def validate_content_policy(value: object) -> None:
    try:
        validate_policy(value)
    except PolicyInvalid as exc:
        raise ValidationError(str(exc)) from None


class Subnet(models.Model):
    class State(models.TextChoices):
        # draft → active ↔ paused → retired (final); only subnets.lifecycle moves it, and
        # draft → active only with a benchmark reference for the current model.
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        RETIRED = "retired", "Retired"

    class Setup(models.TextChoices):
        """Where creation from a package stands (admin shows it; empty: created otherwise)."""

        NONE = "", "—"
        PENDING = "pending", "Queued"
        RUNNING = "running", "Packaging and computing the benchmark reference"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class TaskType(models.TextChoices):
        EMBEDDING = "embedding", "Embeddings"
        TEXT = "text", "Text generation"
        IMAGE = "image", "Image"

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    task_type = models.CharField(max_length=16, choices=TaskType.choices)
    model_id = models.CharField(max_length=200)
    model_checksum = models.CharField(max_length=64, help_text="SHA-256 of the model file")
    runtime_id = models.CharField(max_length=100)
    quantization = models.CharField(max_length=32, blank=True)
    tokenizer_id = models.CharField(max_length=200, blank=True)
    tokenizer_checksum = models.CharField(max_length=64, blank=True)
    # Contract fields copied into every job: {"temperature": 0, "top_p": 1, "seed": 0}.
    determinism = models.JSONField(default=dict, blank=True)
    # {"cosine_min": 0.9999, "norm_tolerance": 0.001} for embeddings.
    tolerances = models.JSONField(default=dict, blank=True)
    preprocessing = models.JSONField(default=dict, blank=True)
    # The declared result shape: every result (and benchmark answer) must have rows this
    # wide, so two nodes that agree on truncated vectors are refused, not settled.
    output_dim = models.PositiveIntegerField(
        null=True, blank=True, help_text="width of each result row (an embedding's dimension); empty: not checked"
    )
    price_per_call_micro = models.PositiveBigIntegerField(default=0)
    price_per_item_micro = models.PositiveBigIntegerField(default=0)
    # Peer-to-peer jobs (docs/p2p.md §6): what a megabyte relayed for the job costs the user
    # (TURN, or the registry relay after a fallback or an upload), paid to the registry,
    # which pays for the relays; a p2p job's hold reserves `relay_reserve_mb` of it.
    relay_surcharge_micro_per_mb = models.PositiveBigIntegerField(
        default=0, help_text="micro-credits per MB relayed (TURN or registry) for a peer-to-peer job; 0: none"
    )
    relay_reserve_mb = models.PositiveIntegerField(
        default=2, help_text="MB of relaying a peer-to-peer job's hold covers (the most its surcharge can be)"
    )
    # Payout split in basis points; the database refuses a split that does not sum to 100 %.
    split_node_a_bp = models.PositiveIntegerField(default=4000)
    split_node_b_bp = models.PositiveIntegerField(default=4000)
    split_registry_bp = models.PositiveIntegerField(default=2000)
    # Escrow rule: this share of each node payout goes to escrow until it reaches the requirement.
    escrow_share_bp = models.PositiveIntegerField(default=1000)
    escrow_required_micro = models.PositiveBigIntegerField(default=0)
    # Escrow policy: while a node's escrow is below the requirement, at most this many
    # unanswered offers per job it runs at once (0: no restriction).
    queue_depth_below_escrow = models.PositiveIntegerField(default=0)
    max_items_per_job = models.PositiveIntegerField(default=64)
    max_chars_per_item = models.PositiveIntegerField(default=4000)
    latency_ms = models.PositiveIntegerField(default=60_000, help_text="job deadline")
    # Which attributes a job's nodes must not share (bim_core.selection.DIVERSITY_ATTRIBUTES).
    routing_policy = models.JSONField(default=default_routing_policy, blank=True)
    score_policy = models.JSONField(default=dict, blank=True, help_text="bim_core.scoring.ScorePolicy fields")
    reputation_policy = models.JSONField(
        default=dict, blank=True, help_text="bim_core.scoring.ReputationPolicy fields"
    )
    # Re-benchmark after this many jobs or hours.
    benchmark_every_jobs = models.PositiveIntegerField(default=500)
    benchmark_max_age_h = models.PositiveIntegerField(default=24)
    benchmark_runs = models.PositiveIntegerField(default=3)
    # Honeypot jobs per 10,000 user jobs (docs/honeypots.md explains the default), and the
    # share of a node's escrow slashed when it fails one.
    honeypot_rate_bp = models.PositiveIntegerField(default=500)
    # Adaptive replication (beyond the paper): a trusted node runs a job alone with
    # probability 1 - p and is checked by a second node with probability p; the user pays
    # solo_price_bp of the pair price for a solo job.
    adaptive_replication = models.BooleanField(default=False)
    adaptive_check_bp = models.PositiveIntegerField(default=1000)
    adaptive_min_jobs = models.PositiveIntegerField(default=200)
    adaptive_min_reputation = models.FloatField(default=0.8)
    solo_price_bp = models.PositiveIntegerField(default=6000)
    honeypot_slash_bp = models.PositiveIntegerField(default=5000)
    # A trusted subnet (paper §9, sensitive workloads): its jobs go only to nodes the
    # registry operates (`registry.Node.trusted`), and the registry's share of each job is
    # at least settings.TRUSTED_MIN_REGISTRY_BP (`clean`). Its contract and receipt say so.
    trusted = models.BooleanField(
        default=False, help_text="jobs only on registry-operated nodes, with a higher registry share"
    )
    license = models.ForeignKey(License, on_delete=models.PROTECT, related_name="subnets")
    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT)
    setup_status = models.CharField(max_length=16, choices=Setup.choices, default=Setup.NONE, blank=True)
    setup_detail = models.TextField(blank=True, help_text="what creation from a package did, or why it failed")
    # Copied into every job's contract (docs/content-policy.md); a change takes a new version.
    content_policy = models.JSONField(
        default=dict, blank=True, validators=[validate_content_policy], help_text="bim_core.content_policy document"
    )
    # What users of the subnet agree contributors see (subnets.data_terms); blank: the task
    # family's default text. subnets.lifecycle.subnet_update bumps the version on a change.
    data_terms = models.TextField(blank=True, help_text="data-handling terms users acknowledge; blank: the default")
    data_terms_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(
                    split_registry_bp=10000 - models.F("split_node_a_bp") - models.F("split_node_b_bp")
                ),
                name="subnet_split_sums_to_100_percent",
            ),
            models.CheckConstraint(
                condition=Q(escrow_share_bp__lte=10000), name="subnet_escrow_share_at_most_100"
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    def clean(self) -> None:
        super().clean()
        minimum = settings.TRUSTED_MIN_REGISTRY_BP
        if self.trusted and self.split_registry_bp < minimum:
            # Running a subnet on the registry's own nodes costs the registry: the share
            # that pays for it is not optional (and not the ordinary default).
            raise ValidationError(
                {
                    "split_registry_bp": f"a trusted subnet gives the registry at least {minimum} bp "
                    f"({minimum / 100:g} %) of each job; this split gives it {self.split_registry_bp} bp"
                }
            )

    @property
    def is_active(self) -> bool:
        return self.state == self.State.ACTIVE

    @property
    def split_bp(self) -> tuple[int, int, int]:
        return (self.split_node_a_bp, self.split_node_b_bp, self.split_registry_bp)

    def price_for(self, units: int) -> int:
        """Per call plus per unit: an item (a text, an image) or a generated token, as the
        subnet's task family counts them."""
        return self.price_per_call_micro + self.price_per_item_micro * units

    def limits(self) -> SubnetLimits:
        return SubnetLimits(
            max_items=self.max_items_per_job, max_chars=self.max_chars_per_item, preprocessing=self.preprocessing
        )


class SubnetChange(models.Model):
    """One change of one subnet field (a price, a tolerance, a policy, the state...): who,
    when, before and after, written in the transaction of the change. Jobs carry the terms
    of their submit (contract and `Job.terms`), so a change applies to new jobs only."""

    subnet = models.ForeignKey(Subnet, on_delete=models.CASCADE, related_name="changes")
    operator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="subnet_changes"
    )
    at = models.DateTimeField(auto_now_add=True)
    field = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["subnet", "-at"], name="subnet_change_by_time")]

    def __str__(self) -> str:
        return f"{self.subnet_id}.{self.field}"


class Chunk(models.Model):
    """A content-addressed blob on disk under ARTIFACT_ROOT; its name is its SHA-256."""

    sha256 = models.CharField(max_length=64, primary_key=True)
    size = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.sha256


class Artifact(models.Model):
    class Role(models.TextChoices):
        MODEL = "model", "Model"
        TOKENIZER = "tokenizer", "Tokenizer"

    subnet = models.ForeignKey(Subnet, on_delete=models.CASCADE, related_name="artifacts")
    role = models.CharField(max_length=16, choices=Role.choices)
    name = models.CharField(max_length=200)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    chunk_size = models.PositiveIntegerField()
    source = models.CharField(max_length=300, help_text="package and path it was packaged from")
    chunks = models.ManyToManyField(Chunk, through="ArtifactChunk", related_name="artifacts")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subnet", "role"], name="artifact_one_per_role")
        ]

    def __str__(self) -> str:
        return f"{self.subnet.slug}/{self.name}"


class ArtifactChunk(models.Model):
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="chunk_links")
    chunk = models.ForeignKey(Chunk, on_delete=models.PROTECT)
    index = models.PositiveIntegerField()

    class Meta:
        ordering = ["index"]
        constraints = [
            models.UniqueConstraint(fields=["artifact", "index"], name="artifact_chunk_index_unique")
        ]


class EulaAcceptance(models.Model):
    """A user's acceptance of a subnet's license, at the version they were shown: the opt-in
    to that subnet alone (another subnet under the same license needs its own). Opting out
    stamps `withdrawn_at`; opting in again is a new row, so the history stays whole."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="eula_acceptances"
    )
    subnet = models.ForeignKey(Subnet, on_delete=models.PROTECT, related_name="acceptances")
    license = models.ForeignKey(License, on_delete=models.PROTECT, related_name="acceptances")
    license_version = models.CharField(max_length=32)
    accepted_at = models.DateTimeField(auto_now_add=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "subnet", "license", "license_version"],
                condition=Q(withdrawn_at__isnull=True),
                name="eula_one_active_per_subnet_version",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} accepted {self.license} for {self.subnet_id}"


class BenchmarkReference(models.Model):
    """The benchmark suite's fixed inputs and the outputs of a trusted run of the subnet's
    model: a node's benchmark counts only if its outputs match these."""

    subnet = models.OneToOneField(Subnet, on_delete=models.CASCADE, related_name="benchmark_reference")
    inputs = models.JSONField(help_text="job inputs, as a user of the subnet's task family sends them")
    result = models.BinaryField(help_text="the trusted answer, encoded as the task family's nodes encode it")
    shape = models.JSONField()
    model_checksum = models.CharField(max_length=64)
    computed_at = models.DateTimeField(auto_now=True)


class BenchmarkInput(models.Model):
    """One more benchmark suite in the reference's pool, with the subnet's own outputs for
    it: each benchmark draws a suite at random, so a node cannot replay a memorised answer
    and must compute whatever it was sent."""

    reference = models.ForeignKey(BenchmarkReference, on_delete=models.CASCADE, related_name="pool")
    inputs = models.JSONField(help_text="job inputs, as a user of the subnet's task family sends them")
    result = models.BinaryField(help_text="the trusted answer, encoded as the task family's nodes encode it")
    shape = models.JSONField()


class UserDataAcknowledgement(models.Model):
    """A user's acknowledgement of a subnet's data-handling terms (contributors see the
    inputs and outputs of their jobs), at the version they were shown: the user's opt-in to
    submitting to that subnet, as `EulaAcceptance` is a contributor's. Withdrawing stamps
    `withdrawn_at`; acknowledging again is a new row, so the history stays whole."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="data_acknowledgements"
    )
    subnet = models.ForeignKey(Subnet, on_delete=models.PROTECT, related_name="data_acknowledgements")
    terms_version = models.PositiveIntegerField()
    accepted_at = models.DateTimeField(auto_now_add=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "subnet", "terms_version"],
                condition=Q(withdrawn_at__isnull=True),
                name="data_ack_one_active_per_subnet_version",
            )
        ]
        indexes = [models.Index(fields=["user", "subnet"])]

    def __str__(self) -> str:
        return f"{self.user} acknowledged {self.subnet_id} data terms v{self.terms_version}"

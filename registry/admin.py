from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from ledger.admin import ReadOnlyMixin

from . import reputation, subnet_admin  # noqa: F401 - registers the subnet lifecycle pages
from .models import (
    AgreementStat,
    Assignment,
    Benchmark,
    Dispute,
    Honeypot,
    Job,
    JobEvent,
    Node,
    NodeSubnet,
    SentinelRun,
    Strike,
)
from .sentinels import dispute_resolve


def _link(obj: object, label: str | None = None) -> str:
    if obj is None:
        return "-"
    meta = obj._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


class HistoryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """A record of what happened (jobs, assignments, strikes, benchmarks, statistics,
    sentinel runs): shown, never added, edited or deleted in admin, not even by a
    superuser. An edit rewrites the past behind the services' back (a honeypot set on a
    settled job strikes and slashes its honest nodes); a deletion hides it."""


class NodeSubnetInline(admin.TabularInline):
    """A node's readiness and benchmark results per subnet: earned by benchmarks, not typed in."""

    model = NodeSubnet
    fields = ["subnet", "ready_at", "score", "items_per_s", "latency_p50_ms", "latency_p95_ms", "benchmarked_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "owner",
        "os",
        "runtime",
        "backend",
        "gpu_family",
        "ip_block",
        "is_online",
        "last_seen",
        "reputation",
        "strikes",
        "banned_until",
        "jobs_agreed",
        "jobs_failed",
    ]
    list_filter = ["is_online", "os", "runtime", "backend", "gpu_family", "subnets"]
    search_fields = ["name", "owner__username", "public_key", "ip", "id"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    # The owner is who the node's earnings belong to: changing it would move them with no
    # transfer. Standing and counters come from the node's history; a ban is lifted by the
    # action below, which lifts its strikes with it.
    readonly_fields = [
        "id",
        "owner",
        "reputation",
        "strikes",
        "banned_until",
        "jobs_assigned",
        "jobs_agreed",
        "jobs_failed",
        "last_job_at",
        "online_seconds",
        "public_key",
        "is_online",
        "channel_name",
        "session_key_pub",
        "session_nonce",
        "session_cert",
        "connected_at",
        "last_seen",
        "created_at",
    ]
    inlines = [NodeSubnetInline]
    actions = ["lift_ban"]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # its earnings, escrow and history name it

    def has_lift_ban_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("registry.change_node")

    @admin.action(description="Lift the ban (and active strikes) of selected nodes", permissions=["lift_ban"])
    def lift_ban(self, request: HttpRequest, queryset: Any) -> None:
        for node in queryset:
            reputation.node_ban_lift(node_id=node.pk, operator=request.user)
        self.message_user(request, f"lifted {queryset.count()} node(s)")


class AssignmentInline(admin.TabularInline):
    model = Assignment
    fields = ["role", "node_link", "state", "result_hash", "elapsed_ms", "submitted_at", "failure_reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="node")
    def node_link(self, assignment: Assignment) -> str:
        return _link(assignment.node)

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class JobEventInline(admin.TabularInline):
    model = JobEvent
    fields = ["at", "from_state", "to_state", "detail"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(HistoryAdmin):
    list_display = ["id", "subnet", "user", "state", "item_count", "price_micro", "created_at", "finished_at"]
    list_filter = ["state", "subnet"]
    search_fields = ["id", "user__username", "idempotency_key", "contract_hash"]
    list_select_related = ["subnet", "user"]
    date_hierarchy = "created_at"
    # Contracts are immutable (a database trigger refuses updates), and the rest is the job's
    # history, written by its state machine: nothing here is editable.
    readonly_fields = [
        "id",
        "user",
        "subnet",
        "idempotency_key",
        "state",
        "contract",
        "contract_hash",
        "inputs",
        "item_count",
        "price_micro",
        "verification",
        "receipt",
        "failure_reason",
        "warnings",
        "solo",
        "honeypot",
        "created_at",
        "expires_at",
        "dispatched_at",
        "verifying_at",
        "finished_at",
    ]
    inlines = [AssignmentInline, JobEventInline]


@admin.register(Assignment)
class AssignmentAdmin(HistoryAdmin):
    list_display = ["id", "job_link", "role", "node", "state", "elapsed_ms", "dispatched_at", "submitted_at"]
    list_filter = ["state", "role", "job__subnet"]
    search_fields = ["id", "job__id", "node__name", "result_hash"]
    list_select_related = ["job", "node"]
    exclude = ["result"]
    readonly_fields = [
        "id",
        "job",
        "node",
        "role",
        "state",
        "session_key_pub",
        "session_nonce",
        "session_cert",
        "result_shape",
        "result_hash",
        "signature",
        "elapsed_ms",
        "failure_reason",
        "dispatched_at",
        "submitted_at",
    ]

    @admin.display(description="job")
    def job_link(self, assignment: Assignment) -> str:
        return _link(assignment.job, str(assignment.job_id)[:8])


@admin.register(Benchmark)
class BenchmarkAdmin(HistoryAdmin):
    list_display = ["id", "node", "subnet", "state", "items_per_s", "latency_p50_ms", "latency_p95_ms", "min_cosine", "issued_at"]
    list_filter = ["state", "subnet"]
    search_fields = ["node__name", "=node__id"]
    list_select_related = ["node", "subnet"]
    readonly_fields = [f.name for f in Benchmark._meta.fields]


@admin.register(Strike)
class StrikeAdmin(HistoryAdmin):
    list_display = ["id", "node", "job", "reason", "created_at", "expires_at", "lifted_at"]
    list_filter = ["lifted_at"]
    search_fields = ["node__name", "=node__id", "reason"]
    list_select_related = ["node", "job"]
    raw_id_fields = ["node", "job"]
    readonly_fields = ["node", "job", "reason", "created_at", "expires_at", "lifted_at"]


@admin.register(Honeypot)
class HoneypotAdmin(admin.ModelAdmin):
    list_display = ["id", "subnet", "uses", "model_checksum", "created_at"]
    list_filter = ["subnet"]
    readonly_fields = ["subnet", "inputs", "shape", "model_checksum", "uses", "created_at"]
    exclude = ["result"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AgreementStat)
class AgreementStatAdmin(HistoryAdmin):
    """Where honest nodes drift apart: the data to set a subnet's τ from."""

    list_display = ["subnet", "env_a", "env_b", "samples", "passed", "min_similarity", "mean"]
    list_filter = ["subnet"]
    search_fields = ["env_a", "env_b"]
    readonly_fields = ["subnet", "env_a", "env_b", "samples", "passed", "min_similarity", "sum_similarity"]

    @admin.display(description="mean similarity")
    def mean(self, stat: AgreementStat) -> str:
        return "-" if stat.mean_similarity is None else f"{stat.mean_similarity:.9f}"


@admin.register(SentinelRun)
class SentinelRunAdmin(HistoryAdmin):
    list_display = ["id", "job", "similarity", "passed", "ran_at"]
    list_filter = ["passed"]
    list_select_related = ["job"]
    readonly_fields = ["job", "similarity", "passed", "detail", "ran_at"]


@admin.register(Dispute)
class DisputeAdmin(admin.ModelAdmin):
    list_display = ["id", "job", "reason", "opened_at", "resolved_at"]
    list_filter = ["resolved_at"]
    list_select_related = ["job"]
    readonly_fields = ["job", "sentinel", "reason", "opened_at", "resolved_at"]
    fields = ["job", "sentinel", "reason", "opened_at", "resolved_at", "resolution"]

    def get_readonly_fields(self, request: HttpRequest, obj: Dispute | None = None) -> list[str]:
        # A resolution stands once written: the form offers it only while the dispute is open.
        resolved = obj is not None and obj.resolved_at is not None
        return [*self.readonly_fields, "resolution"] if resolved else self.readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Dispute, form: Any, change: bool) -> None:
        # Writing a resolution resolves the dispute, through the service.
        if obj.resolution and obj.resolved_at is None:
            dispute_resolve(dispute=obj, resolution=f"{request.user}: {obj.resolution}")

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html

from bim_core.money import micro_to_text
from ledger.admin import ReadOnlyMixin

from . import dashboard, disputes, subnet_admin  # noqa: F401 - subnet_admin registers the subnet lifecycle pages
from .admin_nodes import NodeAdmin, NodeSanctionAdmin
from .models import (
    AgreementStat,
    Assignment,
    Benchmark,
    Dispute,
    Honeypot,
    Job,
    JobEvent,
    JobState,
    SentinelRun,
    Strike,
)
from .sentinels import dispute_resolve

__all__ = ["NodeAdmin", "NodeSanctionAdmin"]  # registered with the site on import


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


class VerificationPathFilter(admin.SimpleListFilter):
    """How a job was decided (its verification record's path): the dashboard's
    verification figures link here."""

    title = "verification"
    parameter_name = "path"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return dashboard.VERIFICATION_PATHS

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        if self.value():
            return queryset.filter(verification__path=self.value())
        return queryset


@admin.register(Job)
class JobAdmin(HistoryAdmin):
    list_display = ["short_id", "subnet", "user", "state", "item_count", "price", "created_at", "settle_time"]
    list_filter = ["state", VerificationPathFilter, "subnet"]
    search_fields = ["id", "user__username", "idempotency_key", "contract_hash"]
    list_select_related = ["subnet", "user"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]  # the newest first: what an operator looks for is what just happened
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        # Submit to settle, as a column the list can sort by.
        return (
            super()
            .get_queryset(request)
            .annotate(settle_duration=ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField()))
        )

    @admin.display(description="job", ordering="created_at")
    def short_id(self, job: Job) -> str:
        return str(job.pk)[:8]

    @admin.display(description="price", ordering="price_micro")
    def price(self, job: Job) -> str:
        return micro_to_text(job.price_micro)

    @admin.display(description="submit to settle", ordering="settle_duration")
    def settle_time(self, job: Job) -> str:
        if job.state != JobState.SETTLED or job.finished_at is None:
            return "-"
        return _duration(job.finished_at - job.created_at)


def _duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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
    list_display = ["id", "job_link", "subnet", "reason", "opened_at", "resolved_at"]
    list_filter = ["resolved_at", "job__subnet"]
    list_select_related = ["job", "job__subnet"]
    ordering = ["-opened_at"]
    readonly_fields = ["job_link", "sentinel_verdict", "reason", "opened_at", "resolved_at"]
    # The results side by side go between the two (the template): read, then decide.
    fieldsets = [
        (None, {"fields": ["job_link", "sentinel_verdict", "reason", "opened_at"]}),
        ("Resolution", {"fields": ["resolved_at", "resolution"]}),
    ]
    change_form_template = "admin/registry/dispute/change_form.html"

    @admin.display(description="job")
    def job_link(self, dispute: Dispute) -> str:
        return _link(dispute.job, f"{str(dispute.job_id)[:8]} ({dispute.job.state})")

    @admin.display(description="subnet", ordering="job__subnet")
    def subnet(self, dispute: Dispute) -> str:
        return str(dispute.job.subnet)

    @admin.display(description="sentinel")
    def sentinel_verdict(self, dispute: Dispute) -> str:
        run = dispute.sentinel
        similarity = "-" if run.similarity is None else f"{run.similarity:.6f}"
        verdict = "passed" if run.passed else "failed"
        return format_html(
            "{}: {}, similarity {} to the registry's own re-run{}{}",
            _link(run, f"run {run.pk}"),
            verdict,
            similarity,
            ": " if run.detail else "",
            run.detail,
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        dispute = self.get_object(request, object_id)
        if dispute is not None:
            extra_context = {**(extra_context or {}), "comparison": disputes.dispute_comparison(dispute=dispute)}
        return super().change_view(request, object_id, form_url, extra_context)

    formfield_overrides = {models.CharField: {"widget": forms.Textarea(attrs={"rows": 3, "cols": 80})}}

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

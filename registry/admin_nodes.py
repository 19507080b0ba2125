"""Nodes in admin: a list that fits a laptop screen with standing in view (reputation,
active strikes, ban), sanctions as actions with a reason (ban for a bounded time, unban,
clear strikes: `registry.sanctions`), and a node page with its recent benchmarks, verdicts
and sanctions. Imported by `registry.admin`, which registers everything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from bim_core.errors import ServiceError
from ledger.admin import ReadOnlyMixin

from . import node_history, sanctions
from .models import Node, NodeSanction, NodeSubnet


class NodeSubnetInline(admin.TabularInline):
    """A node's readiness and benchmark results per subnet: earned by benchmarks, not typed in."""

    model = NodeSubnet
    fields = ["subnet", "ready_at", "score", "items_per_s", "latency_p50_ms", "latency_p95_ms", "benchmarked_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=sanctions.REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept with the node's history and shown on its page.",
    )


class BanForm(ReasonForm):
    hours = forms.TypedChoiceField(coerce=int, choices=sanctions.BAN_HOURS_CHOICES, initial=24, label="Duration")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    # Fits 1366 px with both sidebars open: the environment is one column, presence another
    # ("online" or how long ago), the job counts a third, the short id sits under the name.
    list_display = [
        "name_and_id",
        "owner",
        "environment",
        "seen",
        "reputation_short",
        "active_strikes",
        "ban",
        "jobs",
    ]
    list_filter = ["is_online", "trusted", "os", "runtime", "backend", "gpu_family", "subnets"]
    search_fields = ["name", "owner__username", "public_key", "ip", "id"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    # The owner is who the node's earnings belong to: changing it would move them with no
    # transfer. Standing and counters come from the node's history; bans, unbans and
    # cleared strikes go through the actions below, which record who did it and why.
    readonly_fields = [
        "id",
        "owner",
        "reputation_display",
        "active_strikes_display",
        "reputation",
        "strikes",
        "banned_until",
        "trusted",
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
    # Standing first, where an operator deciding on a sanction looks; the session's
    # cryptographic details folded away.
    fieldsets = [
        (None, {"fields": [("name", "owner"), ("id", "created_at")]}),
        (
            "Standing",
            {
                "fields": [
                    ("reputation_display", "active_strikes_display", "banned_until", "trusted"),
                    ("jobs_assigned", "jobs_agreed", "jobs_failed", "last_job_at"),
                ]
            },
        ),
        ("Environment", {"fields": [("os", "runtime", "backend", "gpu_family"), ("ip", "ip_block", "asn"), "capabilities"]}),
        (
            "Connection",
            {
                "classes": ["collapse"],
                "fields": [
                    ("is_online", "connected_at", "last_seen", "online_seconds"),
                    "public_key",
                    "channel_name",
                    "session_key_pub",
                    "session_nonce",
                    "session_cert",
                ],
            },
        ),
    ]
    inlines = [NodeSubnetInline]
    actions = ["ban_nodes", "unban_nodes", "clear_strikes", "trust_nodes", "distrust_nodes"]
    change_form_template = "admin/registry/node/change_form.html"

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # its earnings, escrow and history name it

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        now = timezone.now()
        return (
            super()
            .get_queryset(request)
            .annotate(
                active_strike_count=Count(
                    "strike_records",
                    filter=Q(strike_records__expires_at__gt=now, strike_records__lifted_at__isnull=True),
                )
            )
        )

    # ------------------------------------------------------------ list columns

    @admin.display(description="node", ordering="name")
    def name_and_id(self, node: Node) -> str:
        return format_html("{} <small style=\"color:#888\">{}</small>", node.name, str(node.pk)[:8])

    @admin.display(description="environment", ordering="runtime")
    def environment(self, node: Node) -> str:
        parts = [node.os, node.runtime, node.backend, node.gpu_family]
        return " · ".join(part for part in parts if part) or "-"

    @admin.display(description="seen", ordering="last_seen")
    def seen(self, node: Node) -> str:
        if node.is_online:
            return format_html('<span style="color:#107c10">{}</span>', "online")
        if node.last_seen is None:
            return "never"
        return f"{timesince(node.last_seen, depth=1)} ago"

    @admin.display(description="rep.", ordering="reputation")
    def reputation_short(self, node: Node) -> str:
        return f"{node.reputation:.3f}"

    @admin.display(description="strikes", ordering="active_strike_count")
    def active_strikes(self, node: Node) -> str:
        """Active / ever given."""
        return f"{node.active_strike_count} / {node.strikes}"

    @admin.display(description="banned until", ordering="banned_until")
    def ban(self, node: Node) -> str:
        if node.banned_until is None or node.banned_until <= timezone.now():
            return "-"
        until = timezone.localtime(node.banned_until)
        return format_html(
            '<strong style="color:#ba2121;white-space:nowrap" title="{}">{}</strong>',
            until.isoformat(timespec="minutes"),
            until.strftime("%b %d %H:%M"),
        )

    @admin.display(description="reputation")
    def reputation_display(self, node: Node) -> str:
        return f"{node.reputation:.4f}"

    @admin.display(description="active strikes")
    def active_strikes_display(self, node: Node) -> str:
        return f"{node.active_strike_count} (of {node.strikes} ever given)"

    @admin.display(description="agreed / failed", ordering="jobs_agreed")
    def jobs(self, node: Node) -> str:
        return f"{node.jobs_agreed} / {node.jobs_failed}"

    # ------------------------------------------------------------ node page

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        node = self.get_object(request, object_id)
        if node is not None:
            extra_context = {**(extra_context or {}), **self._history_context(request, node)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _history_context(self, request: HttpRequest, node: Node) -> dict[str, Any]:
        by_node = urlencode({"node__id__exact": node.pk})
        return {
            "benchmarks": node_history.node_benchmarks_recent(node=node),
            "benchmarks_url": f"{reverse('admin:registry_benchmark_changelist')}?{by_node}",
            "verdicts": node_history.node_verdicts_recent(node=node),
            "verdicts_url": f"{reverse('admin:registry_assignment_changelist')}?{by_node}",
            "sanctions": node_history.node_sanctions(node=node),
            "history_limit": node_history.RECENT,
            # The page's sanction buttons post the list's actions for this one node.
            "sanction_actions": [
                (name, label) for name, label, offered in self._sanction_buttons(node) if offered and name in self.get_actions(request)
            ],
            "changelist_url": reverse("admin:registry_node_changelist"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }

    @staticmethod
    def _sanction_buttons(node: Node) -> list[tuple[str, str, bool]]:
        """The node page offers what applies to the node now (the list offers them all)."""
        banned = node.banned_until is not None and node.banned_until > timezone.now()
        return [
            ("ban_nodes", "Ban…", True),
            ("unban_nodes", "Unban…", banned),
            ("clear_strikes", "Clear strikes…", node.active_strike_count > 0),
            ("trust_nodes", "Trust…", not node.trusted),
            ("distrust_nodes", "Withdraw trust…", node.trusted),
        ]

    # ------------------------------------------------------------ sanctions

    @admin.action(description="Ban selected nodes…", permissions=["change"])
    def ban_nodes(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        return self._sanction(
            request,
            queryset,
            form_class=BanForm,
            title="Ban nodes",
            explain="A banned node is cut off now (its open work goes to other nodes) and its hellos are "
            "refused until the ban ends. A longer ban already in force is kept.",
            apply=lambda node, data: sanctions.node_ban(
                node_id=node.pk, operator=request.user, reason=data["reason"], hours=data["hours"]
            ),
            done="banned",
        )

    @admin.action(description="Unban selected nodes…", permissions=["change"])
    def unban_nodes(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        return self._sanction(
            request,
            queryset,
            form_class=ReasonForm,
            title="Unban nodes",
            explain="Ends the ban now and lifts the node's active strikes with it (left in place, the next "
            "strike would ban it again at once).",
            apply=lambda node, data: sanctions.node_unban(node_id=node.pk, operator=request.user, reason=data["reason"]),
            done="unbanned",
        )

    @admin.action(description="Clear active strikes of selected nodes…", permissions=["change"])
    def clear_strikes(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        return self._sanction(
            request,
            queryset,
            form_class=ReasonForm,
            title="Clear strikes",
            explain="Lifts the nodes' active strikes (each divides its routing weight). A ban in force stays: "
            "unban for that.",
            apply=lambda node, data: sanctions.node_strikes_clear(node_id=node.pk, operator=request.user, reason=data["reason"]),
            done="cleared of strikes",
        )

    @admin.action(description="Trust selected nodes (registry-operated)…", permissions=["change"])
    def trust_nodes(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        return self._sanction(
            request,
            queryset,
            form_class=ReasonForm,
            title="Trust nodes",
            explain="Only for nodes the registry itself operates: trusted subnets' jobs (their users' "
            "sensitive inputs) go to trusted nodes only.",
            apply=lambda node, data: sanctions.node_trust(node_id=node.pk, operator=request.user, reason=data["reason"]),
            done="trusted",
        )

    @admin.action(description="Withdraw trust from selected nodes…", permissions=["change"])
    def distrust_nodes(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        return self._sanction(
            request,
            queryset,
            form_class=ReasonForm,
            title="Withdraw trust",
            explain="The nodes get no more trusted subnets' jobs; the offers of such jobs they hold go to "
            "trusted nodes now, and a result they send for one is refused.",
            apply=lambda node, data: sanctions.node_distrust(node_id=node.pk, operator=request.user, reason=data["reason"]),
            done="no longer trusted",
        )

    def _sanction(
        self,
        request: HttpRequest,
        queryset: QuerySet[Node],
        *,
        form_class: type[forms.Form],
        title: str,
        explain: str,
        apply: Callable[[Node, dict[str, Any]], object],
        done: str,
    ) -> HttpResponse | None:
        """An action with an intermediate page: the first post (from the list or the node
        page) shows the form; the second, with `apply`, calls the service once per node.
        Returning None sends the operator back to the list with the outcome; a sanction
        started from a node's page returns to that page."""
        form = form_class(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            succeeded, refused = 0, []
            for node in queryset:
                try:
                    apply(node, form.cleaned_data)
                    succeeded += 1
                except ServiceError as exc:
                    refused.append(f"{node.name}: {exc.detail}")
            if succeeded:
                self.message_user(request, f"{succeeded} node(s) {done}.", messages.SUCCESS)
            if refused:
                self.message_user(request, "Refused: " + "; ".join(refused), messages.WARNING)
            nodes = list(queryset.values_list("pk", flat=True)[:2])
            if request.POST.get("from_node_page") and len(nodes) == 1:
                # Back where the operator clicked, to see the sanction in the node's history.
                return HttpResponseRedirect(reverse("admin:registry_node_change", args=[nodes[0]]))
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "explain": explain,
            "form": form,
            "nodes": queryset,
            "action": request.POST.get("action", ""),
            "from_node_page": bool(request.POST.get("from_node_page")),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/registry/node/sanction.html", context)


@admin.register(NodeSanction)
class NodeSanctionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """The sanctions log: written by the node actions only, read here."""

    list_display = ["created_at", "node", "kind", "banned_until", "strikes_lifted", "operator", "reason"]
    list_filter = ["kind"]
    search_fields = ["node__name", "=node__id", "reason", "operator__username"]
    list_select_related = ["node", "operator"]
    readonly_fields = ["node", "kind", "reason", "operator", "banned_until", "strikes_lifted", "created_at"]

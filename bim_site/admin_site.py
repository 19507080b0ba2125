"""The admin operators live in: Django's own admin, whose index opens on the market's
health (registry.dashboard, ledger.selectors) above the usual list of models.

Django's admin with a custom index rather than a theme such as django-unfold: every page
operators already use keeps working unchanged, the dashboard is one template, and its
charts are drawn on the server (CSS bars and an inline SVG) because the site's
Content-Security-Policy allows no inline script, which a charting library would need."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse

from bim_core.money import micro_to_text
from ledger.selectors import ledger_check_last, totals_by_kind
from registry.dashboard import Figure, HourColumn, MarketHealth, market_health

CHART_HEIGHT = 96  # px of the hourly chart's tallest column
COLUMN_WIDTH = 18
COLUMN_GAP = 4


def _admin_list(request: HttpRequest, model: str, filters: dict[str, str]) -> str | None:
    """The admin list behind a figure, or None where this operator may not view it."""
    app_label, model_name = model.split(".")
    if not request.user.has_perm(f"{app_label}.view_{model_name}"):
        return None
    try:
        url = reverse(f"admin:{app_label}_{model_name}_changelist")
    except NoReverseMatch:
        return None
    return f"{url}?{urlencode(filters)}" if filters else url


def _bars(request: HttpRequest, figures: list[Figure]) -> list[dict[str, Any]]:
    """Figures as rows of a bar chart, each bar's width relative to the largest."""
    top = max((f.value for f in figures), default=0) or 1
    return [
        {"label": f.label, "value": f.value, "width": round(100 * f.value / top, 1), "href": _admin_list(request, f.model, f.filters)}
        for f in figures
    ]


def _hour_columns(request: HttpRequest, hours: list[HourColumn]) -> dict[str, Any]:
    """The last day as stacked columns (settled below, failed, expired on top) in SVG units."""
    top = max((h.total for h in hours), default=0) or 1
    columns = []
    for i, hour in enumerate(hours):
        x = i * (COLUMN_WIDTH + COLUMN_GAP)
        y = CHART_HEIGHT
        parts = []
        for kind, count in (("settled", hour.settled), ("failed", hour.failed), ("expired", hour.expired)):
            height = round(CHART_HEIGHT * count / top, 1)
            y -= height
            parts.append({"kind": kind, "y": round(y, 1), "height": height})
        end = hour.start.replace(minute=59, second=59)
        columns.append(
            {
                "x": x,
                "parts": parts,
                "title": f"{hour.start:%H}:00 UTC: {hour.settled} settled, {hour.failed} failed, {hour.expired} expired",
                "href": _admin_list(
                    request, "registry.job", {"finished_at__gte": hour.start.isoformat(), "finished_at__lte": end.isoformat()}
                ),
                "label": f"{hour.start:%H}" if i % 3 == 0 else "",
            }
        )
    return {
        "columns": columns,
        "width": len(hours) * (COLUMN_WIDTH + COLUMN_GAP),
        "height": CHART_HEIGHT,
        "column_width": COLUMN_WIDTH,
        "top": top,
    }


def _ledger(request: HttpRequest) -> dict[str, Any]:
    totals = totals_by_kind()
    last_check = ledger_check_last()  # the periodic full invariant check (ledger.tasks)
    shown = [
        ("user_hold", "held for jobs in flight"),
        ("node_escrow", "escrow held"),
        ("registry_revenue", "registry revenue"),
        ("user_credits", "users' credits"),
        ("node_earnings", "nodes' earnings"),
    ]
    return {
        "balanced": sum(totals.values()) == 0,
        "imbalance": micro_to_text(sum(totals.values())),
        "rows": [
            {"label": label, "amount": micro_to_text(totals[kind]), "href": _admin_list(request, "ledger.account", {"kind__exact": kind})}
            for kind, label in shown
        ],
        "accounts_href": _admin_list(request, "ledger.account", {}),
        "last_check": None
        if last_check is None
        else {"violations": last_check["violations"], "at": datetime.fromtimestamp(last_check["checked_at"], tz=UTC)},
    }


def dashboard_context(request: HttpRequest, health: MarketHealth) -> dict[str, Any]:
    ledger = _ledger(request)
    attention = list(health.attention)
    if not ledger["balanced"]:
        attention.insert(0, f"the ledger's accounts sum to {ledger['imbalance']} credits, not zero")
    if ledger["last_check"] and ledger["last_check"]["violations"]:
        attention.insert(0, f"the last full ledger check found {ledger['last_check']['violations']} violation(s)")
    return {
        "at": health.at,
        "attention": attention,
        "online_nodes": _bars(request, health.online_nodes),
        "online_total": sum(f.value for f in health.online_nodes),
        "jobs_by_state": {window: _bars(request, figures) for window, figures in health.jobs_by_state.items()},
        "hours": _hour_columns(request, health.hours),
        "latency": health.latency,
        "verification": _bars(request, health.verification),
        "false_rejects": [
            {"pair": pair, "href": _admin_list(request, "registry.agreementstat", pair.filters)} for pair in health.false_rejects
        ],
        "expiries": _bars(request, health.expiries),
        "honeypot_catches": _bars(request, [health.honeypot_catches])[0],
        "disputes_waiting": _bars(request, [health.disputes_waiting])[0],
        "ledger": ledger,
    }


class BimAdminSite(admin.AdminSite):
    site_header = "BIM registry"
    site_title = "BIM admin"
    index_title = "Market health"
    index_template = "admin/bim_index.html"

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        context = dict(extra_context or {})
        # The health of the whole market is for operators who may read its jobs; a staff
        # member with narrower permissions gets Django's plain index.
        if request.user.has_perm("registry.view_job"):
            context["dashboard"] = dashboard_context(request, market_health())
        return super().index(request, context)

"""Contributor pages: sign up, log in, the dashboard that computes, per-subnet opt-in, and
the two small JSON endpoints the dashboard's script calls with its session cookie (and
CSRF token for the POST). Thin: parse, call a service or selector, answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from bim_core.errors import ServiceError
from bim_core.money import micro_to_text
from bim_core.net import client_ip
from subnets import selectors as subnet_selectors

from . import selectors, services, transparency
from .forms import OptInForm, PayoutDestinationForm, SignUpForm, WithdrawForm


def _json_error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)


def _json_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A script gets 401 JSON, not a redirect to the login page it cannot follow."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return _json_error("not_authenticated", "log in first", 401)
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("contributor:dashboard")
    return render(request, "contributor/home.html")


@require_http_methods(["GET", "POST"])
def sign_up(request: HttpRequest) -> HttpResponse:
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = services.account_sign_up(form=form)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.username}. Opt into a subnet to start contributing.")
        return redirect("contributor:dashboard")
    return render(request, "registration/signup.html", {"form": form})


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    subnets = selectors.subnets_with_opt_in(user=request.user)
    config = {
        "subnets": [
            {
                "slug": row["subnet"].slug,
                "name": row["subnet"].name,
                "task_type": row["subnet"].task_type,
                "model_checksum": row["subnet"].model_checksum,
                "manifest_url": subnet_selectors.manifest_url(row["subnet"]),
                "opted_in": row["acceptance"] is not None,
                "unavailable": row["unavailable"],
            }
            for row in subnets
        ],
        "register_url": reverse("contributor:node-register"),
        "status_url": reverse("contributor:status"),
        "socket_path": "/ws/node/",
        "username": request.user.get_username(),
    }
    return render(
        request,
        "contributor/dashboard.html",
        {
            "subnets": subnets,
            "config": config,
            "compute_days": transparency.compute_by_day(user=request.user),
            "served_terms": transparency.served_subnets_terms(user=request.user),
            "backend_watts": transparency.BACKEND_WATTS,
            "default_watts": transparency.DEFAULT_WATTS,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def subnet_opt_in(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        subnet = selectors.subnet_for_opt_in(slug=slug)
    except ServiceError as exc:
        return render(request, "contributor/not_found.html", {"detail": exc.detail}, status=404)
    form = OptInForm(request.POST or None, initial={"license_version": subnet.license.version})
    if request.method == "POST" and form.is_valid():
        try:
            acceptance, _ = services.subnet_opt_in(
                user=request.user,
                subnet_slug=slug,
                license_version=form.cleaned_data["license_version"],
                ip=client_ip(request.META),
            )
        except ServiceError as exc:
            form.add_error(None, exc.detail)
        else:
            messages.success(
                request,
                f"You accepted {acceptance.license.name} version {acceptance.license_version} "
                f"for {subnet.slug}; this browser can now take its jobs.",
            )
            return redirect("contributor:dashboard")
    return render(
        request,
        "contributor/opt_in.html",
        {"subnet": subnet, "license": subnet.license, "form": form, "terms": selectors.opt_in_terms(subnet=subnet)},
    )


@login_required
@require_POST
def subnet_opt_out(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        withdrawn = services.subnet_opt_out(user=request.user, subnet_slug=slug)
    except ServiceError as exc:
        return render(request, "contributor/not_found.html", {"detail": exc.detail}, status=exc.status)
    if withdrawn:
        messages.success(request, f"You opted out of {slug}: your nodes get none of its jobs from now on.")
    else:
        messages.info(request, f"You were not opted into {slug}.")
    return redirect("contributor:dashboard")


@_json_login_required
@require_POST
def node_register(request: HttpRequest) -> JsonResponse:
    """Body: {"public_key", "env", "subnets": [slug, ...], "name"?}. 201 new, 200 known."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return _json_error("bad_request", "the body is not JSON", 400)
    if not isinstance(body, dict) or not isinstance(body.get("public_key"), str):
        return _json_error("bad_request", "public_key (base64 of 32 bytes) is required", 400)
    slugs = body.get("subnets")
    env = body.get("env") or {}
    if not (isinstance(slugs, list) and slugs and all(isinstance(s, str) for s in slugs)) or not isinstance(env, dict):
        return _json_error("bad_request", "subnets must be a non-empty list of slugs and env an object", 400)
    try:
        node, created = services.browser_node_register(
            owner=request.user,
            public_key=body["public_key"],
            env=env,
            subnet_slugs=slugs,
            ip=client_ip(request.META),
            name=str(body.get("name") or ""),
        )
    except ServiceError as exc:
        return _json_error(exc.code, exc.detail, exc.status)
    return JsonResponse(
        {"id": str(node.pk), "name": node.name, "subnets": [s.slug for s in node.subnets.all()]},
        status=201 if created else 200,
    )


@_json_login_required
@require_GET
def status(request: HttpRequest) -> JsonResponse:
    """The owner's ledger balances and, with ?node=<id> of one of their nodes, its work."""
    node = None
    if request.GET.get("node"):
        node = selectors.node_of_owner(user=request.user, node_id=request.GET["node"])
        if node is None:
            return _json_error("unknown_node", "no node of yours has that id", 404)
    return JsonResponse(
        {
            "balances": selectors.owner_balances(user=request.user, node=node),
            "node": selectors.node_status(node=node) if node is not None else None,
        }
    )


def _earnings_page(request: HttpRequest, *, form: WithdrawForm | None = None, destination_form: PayoutDestinationForm | None = None) -> HttpResponse:
    nodes = selectors.owner_nodes_with_balances(user=request.user)
    return render(
        request,
        "contributor/earnings.html",
        {
            "nodes": nodes,
            "form": form or WithdrawForm(nodes=[row["node"] for row in nodes]),
            "destination": selectors.payout_destination_of(user=request.user),
            "destination_form": destination_form or PayoutDestinationForm(),
            "withdrawals": selectors.withdrawals_of_owner(user=request.user),
            "minimum": micro_to_text(settings.LEDGER_MIN_WITHDRAWAL_MICRO),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def earnings(request: HttpRequest) -> HttpResponse:
    """Earnings and escrow per node, a Withdraw form (minimum and fee stated), the payout
    destination and the history of withdrawals with their states."""
    if request.method == "GET":
        return _earnings_page(request)
    form = WithdrawForm(request.POST, nodes=selectors.owner_nodes(user=request.user))
    if form.is_valid():
        try:
            services.earnings_withdraw(
                user=request.user, node=form.cleaned_data["node"], amount=form.cleaned_data["credits"]
            )
        except ServiceError as exc:
            form.add_error(None, exc.detail)
        else:
            messages.success(request, "Withdrawal requested: an operator approves it, then it is paid out.")
            return redirect("contributor:earnings")
    return _earnings_page(request, form=form)


@login_required
@require_POST
def payout_destination(request: HttpRequest) -> HttpResponse:
    form = PayoutDestinationForm(request.POST)
    if form.is_valid():
        try:
            destination = services.payout_destination_set(user=request.user, **form.cleaned_data)
        except ServiceError as exc:
            form.add_error(None, exc.detail)
        else:
            messages.success(request, f"Withdrawals are now paid to {destination}.")
            return redirect("contributor:earnings")
    return _earnings_page(request, destination_form=form)

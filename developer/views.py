"""The developer page: credits, API keys (create, shown once; revoke), vouchers, and each
subnet's data-handling terms to acknowledge. Thin: parse, call one service, answer."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import services as billing
from bim_core.errors import ServiceError
from bim_core.money import micro_to_text
from bim_core.net import client_ip
from ledger import selectors as ledger_selectors
from subnets import data_terms
from subnets import selectors as subnet_selectors

from . import keys
from .forms import ApiKeyForm, DataTermsForm, VoucherForm
from .models import ApiKey


@login_required
@require_GET
def developer(request: HttpRequest) -> HttpResponse:
    balance = ledger_selectors.balance_totals(user=request.user)
    subnets = list(subnet_selectors.subnet_list_active())
    acknowledged = data_terms.data_terms_acknowledged_many(user=request.user, subnets=subnets)
    return render(
        request,
        "developer/developer.html",
        {
            "keys": ApiKey.objects.filter(user=request.user),
            "key_form": ApiKeyForm(),
            "voucher_form": VoucherForm(),
            "credits": micro_to_text(balance["credits_micro"]),
            "held": micro_to_text(balance["held_micro"]),
            "new_key": request.session.pop("new_api_key", None),
            "api_base": request.build_absolute_uri("/v1"),
            "payments": bool(settings.STRIPE_SECRET_KEY),
            "subnets": [{"subnet": s, "acknowledged": s.pk in acknowledged} for s in subnets],
        },
    )


@login_required
@require_POST
def key_create(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Name the key.")
        return redirect("developer:home")
    try:
        row, key = keys.api_key_create(user=request.user, name=form.cleaned_data["name"])
    except ServiceError as exc:
        messages.error(request, exc.detail)
        return redirect("developer:home")
    # Shown once, on the next page only (POST-redirect-GET): never stored, never in a URL.
    request.session["new_api_key"] = {"name": row.name, "key": key}
    return redirect("developer:home")


@login_required
@require_POST
def key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        row = keys.api_key_revoke(user=request.user, key_id=key_id)
    except ServiceError as exc:
        messages.error(request, exc.detail)
    else:
        messages.success(request, f"Key {row.name} ({row.prefix}…) revoked: requests with it now get 401.")
    return redirect("developer:home")


@login_required
@require_POST
def voucher_redeem(request: HttpRequest) -> HttpResponse:
    form = VoucherForm(request.POST)
    if form.is_valid():
        try:
            voucher = billing.voucher_redeem(user=request.user, code=form.cleaned_data["code"])
        except ServiceError as exc:
            messages.error(request, exc.detail)
        else:
            messages.success(request, f"{micro_to_text(voucher.amount_micro)} credits added.")
    return redirect("developer:home")


@login_required
@require_http_methods(["GET", "POST"])
def data_terms_page(request: HttpRequest, slug: str) -> HttpResponse:
    """A subnet's data-handling terms: acknowledge them (the version shown) or withdraw."""
    try:
        subnet = subnet_selectors.subnet_get_active(slug=slug)
    except ServiceError as exc:
        return render(request, "contributor/not_found.html", {"detail": exc.detail}, status=404)
    form = DataTermsForm(request.POST or None, initial={"version": subnet.data_terms_version})
    if request.method == "POST" and request.POST.get("withdraw"):
        if data_terms.data_terms_withdraw(user=request.user, subnet=subnet):
            messages.success(request, f"Acknowledgement withdrawn: jobs on {subnet.slug} are refused until you acknowledge again.")
        return redirect("developer:data-terms", slug=subnet.slug)
    if request.method == "POST" and form.is_valid():
        try:
            data_terms.data_terms_acknowledge(
                user=request.user, subnet=subnet, version=form.cleaned_data["version"], ip=client_ip(request.META)
            )
        except ServiceError as exc:
            form.add_error(None, exc.detail)
        else:
            messages.success(request, f"Acknowledged: your jobs on {subnet.slug} are taken from now on.")
            return redirect("developer:data-terms", slug=subnet.slug)
    return render(
        request,
        "developer/data_terms.html",
        {
            "subnet": subnet,
            "text": data_terms.data_terms_text(subnet),
            "summary": data_terms.data_terms_summary(subnet),
            "acknowledgement": data_terms.data_terms_acknowledgement(user=request.user, subnet=subnet),
            "form": form,
        },
        status=400 if form.errors else 200,
    )

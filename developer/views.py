"""The developer page: credits, API keys (create, shown once; revoke) and vouchers.
Thin: parse, call one service, answer."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from billing import services as billing
from bim_core.errors import ServiceError
from bim_core.money import micro_to_text
from ledger import selectors as ledger_selectors

from . import keys
from .forms import ApiKeyForm, VoucherForm
from .models import ApiKey


@login_required
@require_GET
def developer(request: HttpRequest) -> HttpResponse:
    balance = ledger_selectors.balance_totals(user=request.user)
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

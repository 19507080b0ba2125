"""Operators' billing tools: grant credits to a user by name, mint voucher batches (codes
shown once), and read vouchers and payments (history: read-only)."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path

from bim_core.errors import ServiceError
from bim_core.money import credits_to_micro, micro_to_text

from . import services
from .models import Payment, Voucher


class CreditsField(forms.CharField):
    def to_python(self, value: Any) -> int:
        text = super().to_python(value)
        try:
            micro = credits_to_micro(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if micro <= 0:
            raise forms.ValidationError("more than zero credits")
        return micro


class GrantForm(forms.Form):
    username = forms.CharField(max_length=150)
    credits = CreditsField(help_text="e.g. 10 or 2.5")
    reason = forms.CharField(max_length=200)
    request_id = forms.CharField(widget=forms.HiddenInput)


class MintForm(forms.Form):
    batch = forms.CharField(max_length=100, help_text="what the vouchers are for")
    credits = CreditsField(help_text="each voucher's worth")
    count = forms.IntegerField(min_value=1, max_value=services.MAX_VOUCHERS_PER_BATCH)
    expires_at = forms.DateTimeField(required=False, help_text="optional, e.g. 2027-01-31 23:59")


class ReadOnlyHistory(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Voucher)
class VoucherAdmin(ReadOnlyHistory):
    list_display = ("prefix", "batch", "worth", "created_by", "created_at", "expires_at", "redeemed_by", "redeemed_at")
    list_filter = ("batch",)
    search_fields = ("prefix", "batch", "redeemed_by__username")
    change_list_template = "admin/billing/voucher/change_list.html"

    @admin.display(description="credits")
    def worth(self, voucher: Voucher) -> str:
        return micro_to_text(voucher.amount_micro)

    def get_urls(self) -> list[Any]:
        return [
            path("mint/", self.admin_site.admin_view(self.mint_view), name="billing_voucher_mint"),
            path("grant/", self.admin_site.admin_view(self.grant_view), name="billing_grant"),
            *super().get_urls(),
        ]

    def _require(self, request: HttpRequest, permission: str) -> None:
        if not request.user.has_perm(permission):
            raise PermissionDenied(f"needs the permission {permission}")

    def mint_view(self, request: HttpRequest) -> HttpResponse:
        self._require(request, "billing.add_voucher")
        form = MintForm(request.POST or None)
        codes: list[str] = []
        if request.method == "POST" and form.is_valid():
            try:
                codes = services.voucher_batch_mint(
                    operator=request.user,
                    batch=form.cleaned_data["batch"],
                    amount_micro=form.cleaned_data["credits"],
                    count=form.cleaned_data["count"],
                    expires_at=form.cleaned_data["expires_at"],
                )
            except ServiceError as exc:
                form.add_error(None, exc.detail)
        context = {**self.admin_site.each_context(request), "title": "Mint vouchers", "form": form, "codes": codes}
        return TemplateResponse(request, "admin/billing/mint.html", context)

    def grant_view(self, request: HttpRequest) -> HttpResponse:
        self._require(request, "billing.grant_credits")
        form = GrantForm(request.POST or None, initial={"request_id": uuid.uuid4().hex})
        if request.method == "POST" and form.is_valid():
            try:
                user = services.operator_grant(
                    operator=request.user,
                    username=form.cleaned_data["username"],
                    amount_micro=form.cleaned_data["credits"],
                    reason=form.cleaned_data["reason"],
                    request_id=form.cleaned_data["request_id"],
                )
            except ServiceError as exc:
                form.add_error(None, exc.detail)
            else:
                messages.success(request, f"Granted {micro_to_text(form.cleaned_data['credits'])} credits to {user}.")
                return redirect("admin:billing_grant")
        context = {**self.admin_site.each_context(request), "title": "Grant credits", "form": form}
        return TemplateResponse(request, "admin/billing/grant.html", context)


@admin.register(Payment)
class PaymentAdmin(ReadOnlyHistory):
    list_display = ("provider", "event_id", "user", "paid_minor", "currency", "created_at")
    search_fields = ("event_id", "checkout_id", "user__username")

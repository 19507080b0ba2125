from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from . import errors, services, withdrawals
from .checks import ledger_violations
from .models import Account, PendingDelta, SettlementBatch, Slash, Transfer, Withdrawal, WithdrawalState


def _ledger_health(request: HttpRequest) -> None:
    """The invariant check, shown on every ledger page an operator opens."""
    problems = ledger_violations()
    if problems:
        messages.error(request, f"Ledger health: {len(problems)} violation(s): " + "; ".join(problems[:5]))
    else:
        messages.info(request, "Ledger health: balanced; every invariant holds.")


class HealthLineMixin:
    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if request.method == "GET":
            _ledger_health(request)
        return super().changelist_view(request, extra_context)


class ReadOnlyMixin:
    """Shown, never added, changed or deleted in admin: the ledger's books and the
    registry's history change only through their services."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(HealthLineMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "kind", "user", "node_id", "current_balance", "unit", "append_only", "created_at"]
    list_filter = ["kind", "append_only"]
    search_fields = ["user__username", "=node_id", "=id"]
    list_select_related = ["user"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Account]:
        return super().get_queryset(request).annotate(pending_sum=Sum("pending__amount"))

    @admin.display(description="balance (incl. pending)", ordering="balance")
    def current_balance(self, account: Account) -> int:
        return account.balance + (account.pending_sum or 0)


class AccountFilter(admin.SimpleListFilter):
    """Transfers touching one account, on either side: ?account=<id>."""

    title = "account"
    parameter_name = "account"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(a.pk), str(a)) for a in Account.objects.filter(append_only=True).order_by("pk")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Transfer]) -> QuerySet[Transfer]:
        if self.value():
            return queryset.filter(Q(debit_id=self.value()) | Q(credit_id=self.value()))
        return queryset


@admin.register(Transfer)
class TransferAdmin(HealthLineMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "kind", "amount", "debit", "credit", "job_id", "reason", "created_at"]
    list_filter = ["kind", AccountFilter, "debit__kind", "credit__kind"]
    search_fields = ["idempotency_key", "=job_id", "reason"]
    list_select_related = ["debit", "credit"]
    actions = ["reverse_selected"]

    def has_reverse_permission(self, request: HttpRequest) -> bool:
        # A reversal posts an adjustment: the same permission as a manual adjustment.
        return request.user.has_perm("ledger.add_adjustment")

    @admin.action(description="Reverse selected transfers (posts reversing adjustments)", permissions=["reverse"])
    def reverse_selected(self, request: HttpRequest, queryset: QuerySet[Transfer]) -> None:
        for transfer in queryset.select_related("debit", "credit"):
            try:
                services.transfer_reverse(transfer=transfer, reason="operator reversal", operator=request.user)
            except errors.LedgerError as exc:
                messages.error(request, f"transfer {transfer.pk}: {exc}")
            else:
                messages.success(request, f"transfer {transfer.pk} reversed")


class AdjustmentForm(forms.ModelForm):
    """A manual adjustment: two accounts, an amount and a reason; posted through the ledger."""

    class Meta:
        model = Transfer
        fields = ["debit", "credit", "amount", "reason"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not (data.get("reason") or "").strip():
            raise forms.ValidationError("An adjustment needs a reason.")
        return data


class Adjustment(Transfer):
    class Meta:
        proxy = True
        verbose_name = "manual adjustment"


@admin.register(Adjustment)
class AdjustmentAdmin(admin.ModelAdmin):
    form = AdjustmentForm
    raw_id_fields = ["debit", "credit"]
    list_display = ["id", "amount", "debit", "credit", "reason", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Transfer]:
        return super().get_queryset(request).filter(kind="adjustment")

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # posted transfers are never edited; the list needs only the view permission

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Transfer, form: Any, change: bool) -> None:
        try:
            created = services.adjustment_create(
                debit=form.cleaned_data["debit"],
                credit=form.cleaned_data["credit"],
                amount=form.cleaned_data["amount"],
                reason=form.cleaned_data["reason"],
                idempotency_key=str(uuid.uuid4()),
                operator=request.user,
            )
        except errors.LedgerError as exc:
            messages.error(request, f"adjustment refused: {exc}")
            obj.refused = True
            return
        obj.pk = created.pk

    def log_addition(self, request: HttpRequest, obj: Transfer, message: Any) -> Any:
        if getattr(obj, "refused", False):
            return None
        return super().log_addition(request, obj, message)

    def response_add(self, request: HttpRequest, obj: Transfer, post_url_continue: str | None = None) -> HttpResponse:
        if getattr(obj, "refused", False):
            # Nothing was written: back to the form's list, without Django's "added" message.
            return HttpResponseRedirect(reverse("admin:ledger_adjustment_changelist"))
        return super().response_add(request, obj, post_url_continue)


@admin.register(Withdrawal)
class WithdrawalAdmin(HealthLineMixin, admin.ModelAdmin):
    list_display = [
        "id", "node_id", "requested_by", "amount", "destination", "state", "created_at", "decided_by", "decided_at", "batch",
    ]
    list_filter = ["state"]
    search_fields = ["requested_by__username", "=node_id"]
    list_select_related = ["requested_by", "decided_by", "batch"]
    readonly_fields = [f.name for f in Withdrawal._meta.fields]
    actions = ["approve", "reject"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_decide_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("ledger.change_withdrawal")

    def _decide(self, request: HttpRequest, queryset: QuerySet[Withdrawal], approve: bool) -> None:
        for withdrawal in queryset.filter(state=WithdrawalState.PENDING):
            try:
                withdrawals.withdrawal_decide(withdrawal_id=withdrawal.pk, approve=approve, operator=request.user)
            except errors.LedgerError as exc:
                messages.error(request, f"withdrawal {withdrawal.pk}: {exc}")

    @admin.action(description="Approve selected pending withdrawals", permissions=["decide"])
    def approve(self, request: HttpRequest, queryset: QuerySet[Withdrawal]) -> None:
        self._decide(request, queryset, approve=True)

    @admin.action(description="Reject selected pending withdrawals", permissions=["decide"])
    def reject(self, request: HttpRequest, queryset: QuerySet[Withdrawal]) -> None:
        self._decide(request, queryset, approve=False)


@admin.register(Slash)
class SlashAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "node_id", "job_id", "assignment_id", "fraction_bp", "transfer", "refund", "reason", "created_at"]
    search_fields = ["=job_id", "=node_id", "reason"]
    list_select_related = ["transfer", "refund"]


@admin.register(SettlementBatch)
class SettlementBatchAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "created_at", "line_count", "total", "merkle_root"]


@admin.register(PendingDelta)
class PendingDeltaAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "account", "amount"]
    list_select_related = ["account"]

from django.contrib import admin
from django.http import HttpRequest

from .models import Account, Transfer


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "user", "node", "balance", "append_only", "created_at"]
    list_filter = ["kind"]
    search_fields = ["user__username", "node__name", "node__id"]
    list_select_related = ["user", "node"]
    # Balances move only through transfers.
    readonly_fields = ["kind", "user", "node", "balance", "append_only", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Transfer)
class TransferAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "amount", "debit", "credit", "job", "created_at"]
    list_filter = ["kind", "debit__kind", "credit__kind"]
    search_fields = ["idempotency_key", "job__id", "reason"]
    list_select_related = ["debit", "credit", "job"]
    readonly_fields = ["idempotency_key", "debit", "credit", "amount", "kind", "job", "reason", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

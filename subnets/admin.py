from django.contrib import admin
from django.forms import ModelForm
from django.http import HttpRequest

from .data_terms import data_terms_set
from .models import Artifact, ArtifactChunk, Chunk, EulaAcceptance, License, Subnet, UserDataAcknowledgement


@admin.register(License)
class LicenseAdmin(admin.ModelAdmin):
    list_display = ["slug", "version", "name", "allows_paid_hosting", "allows_redistribution", "created_at"]
    search_fields = ["slug", "name"]


class ArtifactInline(admin.TabularInline):
    model = Artifact
    fields = ["role", "name", "size", "sha256", "chunk_size", "source"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Subnet)
class SubnetAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "task_type",
        "model_id",
        "short_checksum",
        "runtime_id",
        "price_per_item_micro",
        "license",
        "is_active",
    ]
    list_filter = ["task_type", "is_active", "license"]
    search_fields = ["slug", "name", "model_id", "model_checksum"]
    list_select_related = ["license"]
    # Checksums name the packaged files: change them by re-running package_model, not by hand.
    readonly_fields = ["model_checksum", "tokenizer_checksum", "data_terms_version", "created_at", "updated_at"]
    inlines = [ArtifactInline]

    def save_model(self, request: HttpRequest, obj: Subnet, form: ModelForm, change: bool) -> None:
        """New data-handling terms go through data_terms_set, which bumps their version:
        every user acknowledges them again before their next job."""
        if not (change and "data_terms" in form.changed_data):
            super().save_model(request, obj, form, change)
            return
        terms = obj.data_terms
        obj.data_terms = form.initial.get("data_terms", "")
        super().save_model(request, obj, form, change)
        data_terms_set(subnet=obj, text=terms)

    @admin.display(description="model sha256")
    def short_checksum(self, subnet: Subnet) -> str:
        return subnet.model_checksum[:12]


class ArtifactChunkInline(admin.TabularInline):
    model = ArtifactChunk
    fields = ["index", "chunk"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ["subnet", "role", "name", "size", "sha256", "created_at"]
    list_filter = ["role", "subnet"]
    list_select_related = ["subnet"]
    readonly_fields = ["subnet", "role", "name", "sha256", "size", "chunk_size", "source", "created_at"]
    inlines = [ArtifactChunkInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Chunk)
class ChunkAdmin(admin.ModelAdmin):
    list_display = ["sha256", "size", "created_at"]
    search_fields = ["sha256"]
    readonly_fields = ["sha256", "size", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(EulaAcceptance)
class EulaAcceptanceAdmin(admin.ModelAdmin):
    list_display = ["user", "subnet", "license", "license_version", "accepted_at", "withdrawn_at", "ip"]
    list_filter = ["subnet", "license"]
    search_fields = ["user__username"]
    list_select_related = ["user", "subnet", "license"]
    raw_id_fields = ["user"]
    readonly_fields = ["user", "subnet", "license", "license_version", "accepted_at", "withdrawn_at", "ip"]

    # The record that a user agreed to a model's terms (and from where): shown, never
    # written, edited or deleted by hand; users accept through the opt-in page.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(UserDataAcknowledgement)
class UserDataAcknowledgementAdmin(admin.ModelAdmin):
    list_display = ["user", "subnet", "terms_version", "accepted_at", "withdrawn_at", "ip"]
    list_filter = ["subnet"]
    search_fields = ["user__username"]
    list_select_related = ["user", "subnet"]
    raw_id_fields = ["user"]
    readonly_fields = ["user", "subnet", "terms_version", "accepted_at", "withdrawn_at", "ip"]

    # The record of what a user acknowledged about their data (and from where): shown,
    # never written by hand; users acknowledge through the API or the developer pages.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

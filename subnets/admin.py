import copy
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from bim_core.errors import ServiceError

from . import licensing
from .content_policies import policy_change_refusal
from .lifecycle import subnet_created_log, subnet_update
from .models import (
    Artifact,
    ArtifactChunk,
    Chunk,
    EulaAcceptance,
    License,
    Subnet,
    SubnetChange,
    UserDataAcknowledgement,
)


class LicenseForm(forms.ModelForm):
    class Meta:
        model = License
        fields = "__all__"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "allows_paid_hosting" in data:
            try:
                licensing.license_flags_check(self.instance, allows_paid_hosting=data["allows_paid_hosting"])
            except ServiceError as exc:
                self.add_error("allows_paid_hosting", exc.detail)
        return data


@admin.register(License)
class LicenseAdmin(admin.ModelAdmin):
    """Licenses: their flags are rules (subnets.licensing). Turning paid hosting off is
    refused while active priced subnets use the license; a changed license is best a new
    row with a new version, which subnets then move to (and users accept again)."""

    form = LicenseForm
    list_display = ["slug", "version", "name", "allows_paid_hosting", "allows_redistribution", "created_at"]
    search_fields = ["slug", "name"]


class ArtifactInline(admin.TabularInline):
    model = Artifact
    fields = ["role", "name", "size", "sha256", "chunk_size", "source"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


class SubnetChangeInline(admin.TabularInline):
    """The subnet's history: every change of a field or of its state, who made it and when.
    Written by subnets.lifecycle in the change's transaction; never edited."""

    model = SubnetChange
    fields = ["at", "operator", "field", "before", "after", "reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "history (price, tolerance, policy and state changes)"

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class SubnetAdminForm(forms.ModelForm):
    def clean_content_policy(self) -> dict:
        policy = self.cleaned_data["content_policy"] or {}
        refusal = policy_change_refusal(self.instance.content_policy or {}, policy) if self.instance.pk else None
        if refusal is not None:
            raise forms.ValidationError(refusal)
        return policy

    def clean(self) -> dict[str, Any]:
        """A price or license the subnet's license forbids, refused on the form (naming
        why) before subnet_update would refuse it."""
        data = super().clean()
        if self.instance.pk is None:
            return data
        probe = copy.copy(self.instance)
        for name in ("price_per_call_micro", "price_per_item_micro", "license"):
            if data.get(name) is not None:
                setattr(probe, name, data[name])
        try:
            licensing.paid_hosting_check(probe)
        except ServiceError as exc:
            self.add_error(None, exc.detail)
        return data


class SubnetAdmin(admin.ModelAdmin):
    """Subnets: edits go through subnets.lifecycle.subnet_update (each changed field logged
    with its before and after). The state is not a form field: registry.subnet_admin adds
    the state page (nodes must be told) and creation from a model package."""

    form = SubnetAdminForm
    list_display = [
        "slug",
        "task_type",
        "model_id",
        "short_checksum",
        "runtime_id",
        "price_per_item_micro",
        "license",
        "state",
        "trusted",
        "setup_status",
    ]
    list_filter = ["state", "trusted", "task_type", "license"]
    search_fields = ["slug", "name", "model_id", "model_checksum"]
    list_select_related = ["license"]
    # Checksums name the packaged files: change them by re-packaging, not by hand.
    readonly_fields = [
        "state",
        "setup_status",
        "setup_detail",
        "model_checksum",
        "tokenizer_checksum",
        "data_terms_version",
        "created_at",
        "updated_at",
    ]
    inlines = [ArtifactInline, SubnetChangeInline]

    @admin.display(description="model sha256")
    def short_checksum(self, subnet: Subnet) -> str:
        return subnet.model_checksum[:12]

    def save_model(self, request: HttpRequest, obj: Subnet, form: Any, change: bool) -> None:
        if not change:
            obj.save()
            subnet_created_log(subnet=obj, operator=request.user, source="admin form")
            return
        changes = {}
        for name in form.changed_data:
            field = Subnet._meta.get_field(name)
            value = form.cleaned_data[name]
            changes[field.attname] = value.pk if field.is_relation and value is not None else value
        try:
            subnet_update(subnet_id=obj.pk, changes=changes, operator=request.user)
        except ServiceError as exc:
            # The form validated; a refusal here is a rule the form cannot see.
            raise ValidationError(exc.detail) from None
        obj.refresh_from_db()


admin.site.register(Subnet, SubnetAdmin)


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

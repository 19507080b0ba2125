"""The subnet pages' lifecycle tools: creating a subnet from a model package and moving it
between states. Registered here, over subnets' own SubnetAdmin, because both need the
registry: creation computes the honeypot pool, and a state change tells connected nodes
(registry.lifecycle). The views parse the form, call one service and reply."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from bim_core.errors import ServiceError
from subnets import catalog
from subnets.admin import SubnetAdmin
from subnets.lifecycle import TRANSITIONS
from subnets.models import License, Subnet

from . import lifecycle


class SubnetFromPackageForm(forms.Form):
    package = forms.ChoiceField(choices=catalog.package_choices, help_text="an installed model package of this registry")
    slug = forms.SlugField(max_length=64)
    name = forms.CharField(max_length=200, required=False, help_text="empty: the package's name")
    license = forms.ModelChoiceField(
        License.objects.order_by("slug", "version"), required=False, help_text="empty: the package's own license"
    )
    price_per_call_micro = forms.IntegerField(min_value=0, required=False, help_text="empty: the package's default")
    price_per_item_micro = forms.IntegerField(min_value=0, required=False, help_text="empty: the package's default")
    model_file = forms.FileField(
        required=False,
        label="or upload a model file",
        help_text="your own build of the package's model (same family and format); it replaces the package's model file",
    )
    activate = forms.BooleanField(
        required=False, initial=True, help_text="activate as soon as the benchmark reference is computed"
    )


    def clean_model_file(self) -> Any:
        upload = self.cleaned_data.get("model_file")
        if upload is not None and upload.size > settings.MODEL_UPLOAD_MAX_BYTES:
            raise forms.ValidationError(
                f"the file has {upload.size} bytes; at most {settings.MODEL_UPLOAD_MAX_BYTES} (BIM_MODEL_UPLOAD_MAX_BYTES)"
            )
        if upload is not None and upload.size == 0:
            raise forms.ValidationError("the file is empty")
        return upload


class SubnetStateForm(forms.Form):
    to = forms.ChoiceField(choices=Subnet.State.choices, label="new state")
    reason = forms.CharField(max_length=500, help_text="kept in the subnet's history")


class RegistrySubnetAdmin(SubnetAdmin):
    change_form_template = "admin/subnets/subnet/lifecycle_change_form.html"

    def get_urls(self) -> list[Any]:
        return [
            path("<int:subnet_id>/state/", self.admin_site.admin_view(self.state_view), name="subnets_subnet_state"),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        """A subnet is created from a package, never typed in: its checksums, artifacts and
        benchmark reference all come from the packaged files."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = SubnetFromPackageForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            prices = {k: data[k] for k in ("price_per_call_micro", "price_per_item_micro") if data[k] is not None}
            try:
                with _on_disk(data["model_file"]) as upload:
                    subnet = lifecycle.subnet_create_from_package(
                        operator=request.user,
                        package_key=data["package"],
                        slug=data["slug"],
                        name=data["name"],
                        license_=data["license"],
                        settings=prices,
                        activate=data["activate"],
                        upload=upload,
                        upload_name=data["model_file"].name if upload else "",
                    )
            except ServiceError as exc:
                form.add_error("slug" if exc.code == "slug_taken" else None, exc.detail)
            else:
                subnet.refresh_from_db()
                messages.info(request, f"Subnet {subnet.slug} created: {subnet.get_setup_status_display()}, {subnet.state}.")
                return redirect("admin:subnets_subnet_change", subnet.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Add a subnet from a model package",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/subnets/subnet/add_from_package.html", context)

    def state_view(self, request: HttpRequest, subnet_id: int) -> HttpResponse:
        subnet = get_object_or_404(Subnet, pk=subnet_id)
        if not self.has_change_permission(request, subnet):
            raise PermissionDenied
        allowed = sorted(TRANSITIONS[subnet.state])
        form = SubnetStateForm(request.POST or None, initial={"to": allowed[0] if allowed else None})
        form.fields["to"].choices = [(value, label) for value, label in Subnet.State.choices if value in allowed]
        status = 200
        if request.method == "POST" and not form.is_valid():
            status = 400
        elif request.method == "POST":
            try:
                lifecycle.subnet_state_set(
                    subnet_id=subnet.pk, to=form.cleaned_data["to"], operator=request.user, reason=form.cleaned_data["reason"]
                )
            except ServiceError as exc:
                form.add_error(None, exc.detail)
                status = exc.status
            else:
                messages.success(request, f"Subnet {subnet.slug} is {form.cleaned_data['to']} now; its connected nodes are told.")
                return redirect("admin:subnets_subnet_change", subnet.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Change the state of {subnet.slug} ({subnet.state})",
            "form": form,
            "subnet": subnet,
            "opts": self.model._meta,
            "change_url": reverse("admin:subnets_subnet_change", args=[subnet.pk]),
        }
        return TemplateResponse(request, "admin/subnets/subnet/state.html", context, status=status)


@contextmanager
def _on_disk(upload: UploadedFile | None) -> Iterator[Path | None]:
    """The uploaded file as a path: Django keeps a large upload in a temporary file already
    (streamed, never whole in memory); a small one, held in memory, is written out."""
    if upload is None:
        yield None
        return
    if isinstance(upload, TemporaryUploadedFile):
        yield Path(upload.temporary_file_path())
        return
    with tempfile.NamedTemporaryFile(suffix=Path(upload.name).suffix) as handle:
        for block in upload.chunks():
            handle.write(block)
        handle.flush()
        yield Path(handle.name)


admin.site.unregister(Subnet)
admin.site.register(Subnet, RegistrySubnetAdmin)

"""Subnet API: what contributors and users can see, license acceptance, and users'
acknowledgement of data-handling terms."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bim_core.net import client_ip

from . import data_terms, selectors, services
from .models import Subnet, UserDataAcknowledgement


class LicenseSerializer(serializers.Serializer):
    slug = serializers.CharField()
    version = serializers.CharField()
    name = serializers.CharField()
    url = serializers.CharField()
    # What the registry enforces (subnets.licensing): no price while hosting is not allowed,
    # chunks only after acceptance while redistribution is not.
    allows_paid_hosting = serializers.BooleanField()
    allows_redistribution = serializers.BooleanField()


class SubnetSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    task_type = serializers.CharField()
    model_id = serializers.CharField()
    model_checksum = serializers.CharField()
    runtime_id = serializers.CharField()
    quantization = serializers.CharField()
    tolerances = serializers.JSONField()
    price_per_call_micro = serializers.IntegerField()
    price_per_item_micro = serializers.IntegerField()
    # Users choose a subnet for sensitive work by this (paper §9): its jobs run only on
    # registry-operated nodes, and its receipts say so.
    trusted = serializers.BooleanField()
    manifest_url = serializers.SerializerMethodField()
    license = LicenseSerializer()

    def get_manifest_url(self, subnet: object) -> str:
        return selectors.manifest_url(subnet)


class EulaAcceptSerializer(serializers.Serializer):
    license_version = serializers.CharField(max_length=32)


class EulaAcceptApi(APIView):
    @extend_schema(request=EulaAcceptSerializer, responses={201: None, 200: None})
    def post(self, request: Request, slug: str) -> Response:
        data = EulaAcceptSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        acceptance, created = services.eula_accept(
            user=request.user,
            subnet=selectors.subnet_get_active(slug=slug),
            license_version=data.validated_data["license_version"],
            ip=client_ip(request.META),
        )
        return Response(
            {
                "subnet": slug,
                "license": acceptance.license.slug,
                "version": acceptance.license_version,
                "accepted_at": acceptance.accepted_at,
            },
            status=201 if created else 200,
        )


class DataTermsSerializer(serializers.Serializer):
    subnet = serializers.CharField()
    version = serializers.IntegerField()
    text = serializers.CharField()
    summary = serializers.CharField(help_text="what contributors see, in one sentence")
    acknowledged_at = serializers.DateTimeField(
        allow_null=True, help_text="when you acknowledged this version (null: not yet; jobs are refused)"
    )
    terms_url = serializers.CharField()
    acknowledge_url = serializers.CharField(help_text="the same, as a page for a signed-in browser")


class DataTermsAcknowledgeSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="the version you read (a stale one is refused, 409)")


def _data_terms_body(subnet: Subnet, acknowledgement: UserDataAcknowledgement | None) -> dict[str, Any]:
    return {
        "subnet": subnet.slug,
        "version": subnet.data_terms_version,
        "text": data_terms.data_terms_text(subnet),
        "summary": data_terms.data_terms_summary(subnet),
        "acknowledged_at": acknowledgement.accepted_at if acknowledgement is not None else None,
        **data_terms.data_terms_links(subnet),
    }


class DataTermsApi(APIView):
    """A subnet's data-handling terms for its users (what contributors see of their jobs):
    read them, acknowledge the version read (required before a first job there), or
    withdraw (the next job is refused)."""

    @extend_schema(responses=DataTermsSerializer)
    def get(self, request: Request, slug: str) -> Response:
        subnet = selectors.subnet_get_active(slug=slug)
        acknowledgement = data_terms.data_terms_acknowledgement(user=request.user, subnet=subnet)
        return Response(DataTermsSerializer(_data_terms_body(subnet, acknowledgement)).data)

    @extend_schema(request=DataTermsAcknowledgeSerializer, responses={201: DataTermsSerializer, 200: DataTermsSerializer})
    def post(self, request: Request, slug: str) -> Response:
        data = DataTermsAcknowledgeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subnet = selectors.subnet_get_active(slug=slug)
        acknowledgement, created = data_terms.data_terms_acknowledge(
            user=request.user, subnet=subnet, version=data.validated_data["version"], ip=client_ip(request.META)
        )
        return Response(DataTermsSerializer(_data_terms_body(subnet, acknowledgement)).data, status=201 if created else 200)

    # Answered 200 with the terms as they now stand (withdrawn), not drf-spectacular's
    # default 204 for a DELETE: the schema must say so.
    @extend_schema(request=None, responses={200: DataTermsSerializer})
    def delete(self, request: Request, slug: str) -> Response:
        subnet = selectors.subnet_get_active(slug=slug)
        data_terms.data_terms_withdraw(user=request.user, subnet=subnet)
        return Response(DataTermsSerializer(_data_terms_body(subnet, None)).data)

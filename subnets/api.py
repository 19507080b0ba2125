"""Subnet API: what contributors and users can see, and license acceptance."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bim_core.net import client_ip

from . import selectors, services


class LicenseSerializer(serializers.Serializer):
    slug = serializers.CharField()
    version = serializers.CharField()
    name = serializers.CharField()
    url = serializers.CharField()


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

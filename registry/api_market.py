"""The market and accounts API (/api/v1/): subnets with their capacity, balances,
withdrawals, node registration and the registry's receipt key. Jobs are in ./api.py. One
view per operation, small serializers, business rules in services."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bim_core import protocol
from bim_core.net import client_ip
from ledger import selectors as ledger_selectors
from subnets import selectors as subnet_selectors
from subnets.api import SubnetSerializer

from . import presence, selectors, withdrawals
from .keys import registry_public_key
from .models import Node


class SubnetMarketSerializer(SubnetSerializer):
    nodes_online = serializers.IntegerField(help_text="connected, unbanned nodes registered for the subnet")
    nodes_routable = serializers.IntegerField(help_text="of those, ready with a passed benchmark: taking jobs now")
    jobs_waiting = serializers.IntegerField(help_text="jobs waiting for a node")
    wait_estimate_s = serializers.FloatField(
        allow_null=True, help_text="a new job's submit-to-settle estimate in seconds (null: no recent jobs or nodes)"
    )


class SubnetListApi(APIView):
    """The active subnets with their market now: without an online node a job is refused
    (503), so users see it before they submit."""

    @extend_schema(responses=SubnetMarketSerializer(many=True))
    def get(self, request: Request) -> Response:
        subnets = list(subnet_selectors.subnet_list_active())
        capacity = selectors.subnets_capacity([s.pk for s in subnets])
        rows = [{**SubnetSerializer(s).data, **capacity[s.pk]} for s in subnets]
        return Response(rows)


class BalanceApi(APIView):
    @extend_schema(
        responses=inline_serializer(
            "Balance",
            {
                "credits_micro": serializers.IntegerField(),
                "held_micro": serializers.IntegerField(),
                "earnings_micro": serializers.IntegerField(),
                "escrow_micro": serializers.IntegerField(),
            },
        )
    )
    def get(self, request: Request) -> Response:
        node_ids = selectors.node_ids_of_owner(user=request.user)
        return Response(ledger_selectors.balance_totals(user=request.user, node_ids=node_ids))


class NodeRegisterSerializer(serializers.Serializer):
    public_key = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=100, allow_blank=True, default="")
    subnets = serializers.ListField(child=serializers.SlugField(), allow_empty=False)
    env = serializers.DictField(required=False, default=dict)


class NodeOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    public_key = serializers.CharField()
    os = serializers.CharField()
    runtime = serializers.CharField()
    backend = serializers.CharField()
    gpu_family = serializers.CharField()
    is_online = serializers.BooleanField()
    subnets = serializers.SerializerMethodField()

    def get_subnets(self, node: Any) -> list[str]:
        return [subnet.slug for subnet in node.subnets.all()]


class NodeRegisterApi(APIView):
    @extend_schema(request=NodeRegisterSerializer, responses={201: NodeOutputSerializer, 200: NodeOutputSerializer})
    def post(self, request: Request) -> Response:
        data = NodeRegisterSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node, created = presence.node_register(
            owner=request.user,
            public_key=data.validated_data["public_key"],
            name=data.validated_data["name"],
            env=data.validated_data["env"],
            subnet_slugs=data.validated_data["subnets"],
            ip=client_ip(request.META),
        )
        return Response(NodeOutputSerializer(node).data, status=201 if created else 200)


class RegistryInfoApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        responses=inline_serializer(
            "RegistryInfo", {"protocol": serializers.CharField(), "receipt_key": serializers.CharField()}
        )
    )
    def get(self, request: Request) -> Response:
        return Response({"protocol": protocol.PROTOCOL_VERSION, "receipt_key": registry_public_key()})


class WithdrawalRequestSerializer(serializers.Serializer):
    node = serializers.UUIDField()
    amount_micro = serializers.IntegerField(min_value=1)


class WithdrawalSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    node = serializers.UUIDField(source="node_id")
    amount = serializers.IntegerField()
    destination = serializers.CharField(help_text="method:address, the payout destination when requested")
    state = serializers.CharField()
    created_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)
    decision_reason = serializers.CharField()


class WithdrawalListCreateApi(APIView):
    """Contributors' earnings: request a withdrawal for one of my nodes, list mine."""

    @extend_schema(responses=WithdrawalSerializer(many=True))
    def get(self, request: Request) -> Response:
        mine = ledger_selectors.withdrawal_list_for_user(user=request.user)[:200]
        return Response(WithdrawalSerializer(mine, many=True).data)

    @extend_schema(request=WithdrawalRequestSerializer, responses={201: WithdrawalSerializer})
    def post(self, request: Request) -> Response:
        data = WithdrawalRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = get_object_or_404(Node, pk=data.validated_data["node"], owner=request.user)
        withdrawal = withdrawals.node_withdrawal_request(
            node=node, user=request.user, amount=data.validated_data["amount_micro"]
        )
        return Response(WithdrawalSerializer(withdrawal).data, status=201)

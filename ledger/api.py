"""Contributor API for earnings: request a withdrawal, list mine."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bim_core.errors import ServiceError
from registry.models import Node

from . import services
from .models import Withdrawal


class WithdrawalRequestSerializer(serializers.Serializer):
    node = serializers.UUIDField()
    amount_micro = serializers.IntegerField(min_value=1)


class WithdrawalSerializer(serializers.ModelSerializer):
    class Meta:
        model = Withdrawal
        fields = ["id", "node", "amount", "state", "created_at", "decided_at", "decision_reason"]


class WithdrawalListCreateApi(APIView):
    @extend_schema(responses=WithdrawalSerializer(many=True))
    def get(self, request: Request) -> Response:
        mine = Withdrawal.objects.filter(requested_by=request.user).order_by("-created_at")[:200]
        return Response(WithdrawalSerializer(mine, many=True).data)

    @extend_schema(request=WithdrawalRequestSerializer, responses={201: WithdrawalSerializer})
    def post(self, request: Request) -> Response:
        data = WithdrawalRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = get_object_or_404(Node, pk=data.validated_data["node"], owner=request.user)
        try:
            withdrawal = services.withdrawal_request(node=node, user=request.user, amount=data.validated_data["amount_micro"])
        except services.InsufficientFunds as exc:
            raise ServiceError("insufficient_earnings", str(exc), status=402) from None
        except services.LedgerError as exc:
            raise ServiceError("withdrawal_refused", str(exc)) from None
        return Response(WithdrawalSerializer(withdrawal).data, status=201)

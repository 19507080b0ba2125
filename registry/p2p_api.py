"""The HTTP half of peer-to-peer jobs (docs/p2p.md): the user confirms (or disputes) a
result it received over a data channel, or sends the input through the registry when no
channel opened. Parse, call one service in registry.p2p, reply."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import p2p
from .api import JobDetailSerializer, StrictCharField


class DeliveredSerializer(serializers.Serializer):
    assignment_id = serializers.UUIDField()
    result_hash = StrictCharField(max_length=64, min_length=64)


class JobDeliveredApi(APIView):
    """200 `matched` true: the bytes received are the node's committed result; 202 `matched`
    false: they are not, and the registry asks the node for them (the user's dispute); 202
    `matched` null: the node's commit is not in yet, the hash is kept and judged when it is."""

    @extend_schema(
        request=DeliveredSerializer,
        responses={
            200: inline_serializer("DeliveryConfirmed", {"matched": serializers.BooleanField()}),
            202: inline_serializer("DeliveryDisputedOrKept", {"matched": serializers.BooleanField(allow_null=True)}),
        },
    )
    def post(self, request: Request, job_id: str) -> Response:
        data = DeliveredSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        matched = p2p.delivery_confirm(
            user=request.user,
            job_id=job_id,
            assignment_id=data.validated_data["assignment_id"],
            result_hash=data.validated_data["result_hash"],
        )
        return Response({"matched": matched}, status=status.HTTP_200_OK if matched else status.HTTP_202_ACCEPTED)


class InputsFallbackSerializer(serializers.Serializer):
    inputs = serializers.DictField()
    reason = StrictCharField(max_length=100, required=False, default="no_peer_connection")


class JobInputsApi(APIView):
    """The input of a peer-to-peer job, sent through the registry after all (no data channel
    opened): checked against the contract, then relayed to the job's nodes."""

    @extend_schema(request=InputsFallbackSerializer, responses=JobDetailSerializer)
    def post(self, request: Request, job_id: str) -> Response:
        data = InputsFallbackSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = p2p.inputs_fallback(
            user=request.user, job_id=job_id, inputs=data.validated_data["inputs"], reason=data.validated_data["reason"]
        )
        return Response(JobDetailSerializer(job).data)

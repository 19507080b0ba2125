"""Payments over the API: start a checkout, and the provider's webhook that credits a
completed payment (signature checked; each event credited once)."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bim_core.errors import ServiceError

from . import services
from .payments import payment_provider


class CheckoutSerializer(serializers.Serializer):
    credits = serializers.IntegerField(min_value=1, max_value=1_000_000)


class CheckoutApi(APIView):
    @extend_schema(
        request=CheckoutSerializer,
        responses={201: inline_serializer("CheckoutSession", {"checkout_id": serializers.CharField(), "url": serializers.URLField()})},
    )
    def post(self, request: Request) -> Response:
        data = CheckoutSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        back = request.build_absolute_uri(reverse("developer:home"))
        checkout = payment_provider("stripe").checkout_create(
            user_id=str(request.user.pk), credits=data.validated_data["credits"], success_url=back, cancel_url=back
        )
        return Response({"checkout_id": checkout.checkout_id, "url": checkout.url}, status=201)


class StripeWebhookApi(APIView):
    """Stripe's webhook: the Stripe-Signature header is the authentication."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []

    @extend_schema(
        request=None,
        responses={200: inline_serializer("WebhookAnswer", {"credited": serializers.BooleanField()})},
    )
    def post(self, request: Request) -> Response:
        signature = request.headers.get("Stripe-Signature", "")
        if not signature:
            raise ServiceError("bad_signature", "no Stripe-Signature header")
        event = payment_provider("stripe").event_parse(payload=request.body, signature=signature)
        if event is None:
            return Response({"credited": False})  # an event of another kind: acknowledged, nothing to do
        _, created = services.payment_record(event=event)
        return Response({"credited": created})

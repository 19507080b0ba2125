"""User API for jobs (/api/v1/jobs/): submit one or a batch, list, read, cancel; the
API's error handler and strict fields. The market, balances, withdrawals and node
registration are in ./api_market.py. One view per operation, small serializers, business
rules in services."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from bim_core import families
from bim_core.errors import ServiceError
from subnets import defaults as subnet_defaults

from . import jobs, selectors, submit
from .models import Job, JobTransport


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every refusal is {"code", "detail"} with its HTTP status: service refusals, DRF's own
    (authentication, parsing, throttling with its Retry-After, validation with the field
    errors as detail) and a body over DATA_UPLOAD_MAX_MEMORY_SIZE. Anything else is a bug and
    goes on to Django (bim_site.errors answers JSON 500 under /api/)."""
    if isinstance(exc, ServiceError):
        headers = {"Retry-After": str(settings.BIM_RETRY_AFTER_S)} if exc.status == 503 else None
        if "retry_after_s" in exc.extra:
            headers = {"Retry-After": str(exc.extra["retry_after_s"])}
        return Response({"code": exc.code, "detail": exc.detail, **exc.extra}, status=exc.status, headers=headers)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"code": "request_too_large", "detail": "the request body is too large"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        code, detail = "invalid", response.data
    else:
        # Http404 and PermissionDenied arrive as Django's and are converted by DRF's handler.
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
        code = codes if isinstance(codes, str) else _DJANGO_CODES.get(response.status_code, "error")
        detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
    response.data = {"code": code, "detail": detail}
    return response


_DJANGO_CODES = {403: "permission_denied", 404: "not_found"}


def idempotency_key_checked(key: str) -> str:
    """A key from the Idempotency-Key header gets the checks the body field has: it must
    fit its column and be storable text."""
    max_length = Job._meta.get_field("idempotency_key").max_length
    if len(key) > max_length or not families.storable_text(key):
        raise ServiceError("idempotency_key_invalid", f"an idempotency key is at most {max_length} characters of text")
    return key


class StringOnlyMixin:
    """DRF's CharField turns a number or a boolean into its text; these fields take only what
    the schema says, a JSON string (400 otherwise), so an integer idempotency key is not
    silently a different string key."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")  # type: ignore[attr-defined]
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictSlugField(StringOnlyMixin, serializers.SlugField):
    pass


class StrictCharField(StringOnlyMixin, serializers.CharField):
    pass


class FieldsBuiltOnce:
    """A response serializer whose fields are built from the model once per class, not per
    instance: a ModelSerializer introspects its model every time (0.32 ms of a job's 0.37 ms
    response; DRF discussed a cache, encode/django-rest-framework#2504 and #7093, and never
    took one). Each instance binds shallow copies, so this is for output only: the copies
    share validators and messages. A field with a child (a list, a nested serializer), whose
    child is bound to it, is deep-copied as DRF does."""

    _fields_built: ClassVar[dict[str, serializers.Field]]

    def get_fields(self) -> dict[str, serializers.Field]:
        cls = type(self)
        built = cls.__dict__.get("_fields_built")
        if built is None:
            built = super().get_fields()  # type: ignore[misc]
            cls._fields_built = built  # each subclass its own: its Meta may differ
        return {name: copy.deepcopy(field) if _has_children(field) else copy.copy(field) for name, field in built.items()}


def _has_children(field: serializers.Field) -> bool:
    return isinstance(field, serializers.BaseSerializer) or hasattr(field, "child") or hasattr(field, "child_relation")


class JobSubmitSerializer(serializers.Serializer):
    subnet = StrictSlugField()
    inputs = serializers.DictField(
        required=False,
        help_text='as the subnet\'s task family takes them: embedding {"texts": [...]}, text {"prompt": "...", '
        '"max_tokens": N}, image {"image": "<base64 of an 8-bit RGB PNG>"}; not sent for a p2p job',
    )
    transport = serializers.ChoiceField(
        choices=JobTransport.choices, default=JobTransport.RELAY,
        help_text="p2p: the input and results go between you and the nodes (docs/p2p.md); send input_hash and "
        "input_summary instead of inputs",
    )
    input_hash = StrictCharField(max_length=64, required=False, help_text="p2p: sha256 hex of the inputs' canonical JSON")
    input_summary = serializers.DictField(
        required=False,
        help_text='p2p: embedding {"items": N}, text {"max_tokens": N}, image {"height": H, "width": W}',
    )
    # DRF's CharField already refuses NUL and lone surrogates.
    idempotency_key = StrictCharField(max_length=Job._meta.get_field("idempotency_key").max_length, required=False)
    session_key_pub = StrictCharField(max_length=64, required=False)


class JobSummarySerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    subnet = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "subnet",
            "state",
            "item_count",
            "price_micro",
            "idempotency_key",
            "created_at",
            "expires_at",
            "finished_at",
            "failure_reason",
            "warnings",
            "transport",
            "fallback_reason",
        ]


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """LimitOffsetPagination that refuses a limit or offset that is not an integer (400)
    instead of silently serving the first page: the schema says integer, so does the API.
    A negative or oversized value is still clamped, as DRF does."""

    def _integer(self, request: Request, name: str) -> None:
        value = request.query_params.get(name)
        if value is not None:
            try:
                int(value)
            except ValueError:
                raise exceptions.ValidationError({name: ["an integer is required"]}) from None

    def get_limit(self, request: Request) -> int | None:
        self._integer(request, self.limit_query_param)
        return super().get_limit(request)

    def get_offset(self, request: Request) -> int:
        self._integer(request, self.offset_query_param)
        return super().get_offset(request)


class JobListPageSerializer(serializers.Serializer):
    """One page of LimitOffsetPagination, as it answers (the schema must say so)."""

    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True, help_text="URL of the next page")
    previous = serializers.CharField(allow_null=True, help_text="URL of the previous page")
    results = JobSummarySerializer(many=True)


class JobDetailSerializer(JobSummarySerializer):
    result = serializers.SerializerMethodField()
    partial = serializers.SerializerMethodField(
        help_text="while a text job runs: the text a node has streamed so far, unverified (verified: false)"
    )

    class Meta(JobSummarySerializer.Meta):
        fields = [
            *JobSummarySerializer.Meta.fields, "contract", "contract_hash", "verification", "receipt", "result", "partial"
        ]

    def get_partial(self, job: Job) -> dict[str, Any] | None:
        return selectors.job_partial(job=job)

    def get_result(self, job: Job) -> dict[str, Any] | None:
        assignment = selectors.job_delivered_assignment(job=job)
        if assignment is None or assignment.result is None:
            return None  # unsettled, or peer to peer: the user holds the bytes, the receipt their hash
        family = families.family_for(job.contract["task_type"])
        return {
            "encoding": family.encoding,
            "shape": assignment.result_shape,
            "result_hash": assignment.result_hash,
            **family.result_for_user(selectors.assignment_result(assignment)),
        }


# Request bodies the docs page (/api/docs/) shows for POST /api/v1/jobs/, one per task family,
# each for the default subnet of its family. tests/site/test_api_examples.py submits every
# one to the API, so they stay bodies the API accepts.
JOB_SUBMIT_EXAMPLES = [
    OpenApiExample(
        "embedding",
        summary="Embed two texts",
        description="An embedding subnet takes up to its max_items_per_job texts (64 on minilm-embed).",
        value={
            "subnet": subnet_defaults.EMBEDDINGS_SLUG,
            "inputs": {"texts": ["The quick brown fox jumps over the lazy dog.", "A fast auburn fox leaps over a dog."]},
            "idempotency_key": "3f6c2d9e-5b1a-4e7f-9c3d-0a8b7e6f5d41",
        },
        request_only=True,
    ),
    OpenApiExample(
        "text",
        summary="Generate text",
        description="A text subnet takes one prompt; max_tokens is at most the subnet's max_new_tokens (256).",
        value={
            "subnet": subnet_defaults.TEXT_SLUG,
            "inputs": {"prompt": "Name three colours of the rainbow.", "max_tokens": 32},
            "idempotency_key": "8d0e4b7a-2c6f-4a19-b3e5-7f1d9c2a6e80",
        },
        request_only=True,
    ),
    OpenApiExample(
        "image",
        summary="Upscale an image 2x",
        description="An image subnet takes one 8-bit RGB PNG of 4 to 64 px a side, base64 (here 4x4 px).",
        value={
            "subnet": subnet_defaults.IMAGE_SLUG,
            "inputs": {
                "image": "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAECAIAAAAmkwkpAAAAFklEQVR4nGNkYDghwMAAQSwOMBZeDgBNyAJWQUcOeAAAAABJRU5ErkJggg=="
            },
            "idempotency_key": "c5a1f3e8-9d2b-4c70-8e4f-1b6a3d9c7e52",
        },
        request_only=True,
    ),
]


class JobListCreateApi(APIView):
    @extend_schema(
        operation_id="v1_jobs_list",  # a page object is not a list to drf-spectacular's naming
        parameters=[
            OpenApiParameter("limit", OpenApiTypes.INT, description="jobs per page (default 50)"),
            OpenApiParameter("offset", OpenApiTypes.INT, description="jobs to skip, newest first"),
        ],
        responses=JobListPageSerializer,
    )
    def get(self, request: Request) -> Response:
        paginator = StrictLimitOffsetPagination()
        page = paginator.paginate_queryset(selectors.job_list_for_user(user=request.user), request, view=self)
        return paginator.get_paginated_response(JobSummarySerializer(page, many=True).data)

    @extend_schema(
        request=JobSubmitSerializer,
        responses={201: JobDetailSerializer, 200: JobDetailSerializer},
        examples=JOB_SUBMIT_EXAMPLES,
    )
    def post(self, request: Request) -> Response:
        data = JobSubmitSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = data.validated_data.get("idempotency_key") or request.headers.get("Idempotency-Key")
        if not key:
            raise ServiceError("idempotency_key_required", "send idempotency_key or an Idempotency-Key header")
        key = idempotency_key_checked(key)
        job, created = submit.job_submit(
            user=request.user,
            subnet_slug=data.validated_data["subnet"],
            inputs=data.validated_data.get("inputs"),
            idempotency_key=key,
            session_key_pub=data.validated_data.get("session_key_pub"),
            transport=data.validated_data["transport"],
            input_hash=data.validated_data.get("input_hash"),
            input_summary=data.validated_data.get("input_summary"),
        )
        return Response(
            JobDetailSerializer(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class JobBatchItemSerializer(JobSubmitSerializer):
    # Each job of a batch names its own key: no header could carry one per job.
    idempotency_key = StrictCharField(max_length=Job._meta.get_field("idempotency_key").max_length)


class JobBatchSubmitSerializer(serializers.Serializer):
    jobs = serializers.ListField(child=JobBatchItemSerializer(), min_length=1, max_length=submit.BATCH_MAX)


class JobBatchItemResultSerializer(JobSummarySerializer):
    created = serializers.BooleanField(help_text="false: the job this idempotency key submitted before")

    class Meta(JobSummarySerializer.Meta):
        fields = [*JobSummarySerializer.Meta.fields, "contract_hash", "created"]


class JobBatchApi(APIView):
    """Submit up to BATCH_MAX jobs in one request, all or none: one transaction and one
    ledger posting for their holds (what `bim_sdk.Client.submit_many` sends)."""

    @extend_schema(
        request=JobBatchSubmitSerializer,
        responses={201: inline_serializer("JobBatchResult", {"jobs": JobBatchItemResultSerializer(many=True)})},
    )
    def post(self, request: Request) -> Response:
        data = JobBatchSubmitSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        requests = [
            submit.JobRequest(
                subnet_slug=item["subnet"],
                inputs=item.get("inputs"),
                idempotency_key=idempotency_key_checked(item["idempotency_key"]),
                session_key_pub=item.get("session_key_pub"),
                transport=item["transport"],
                input_hash=item.get("input_hash"),
                input_summary=item.get("input_summary"),
            )
            for item in data.validated_data["jobs"]
        ]
        submitted = submit.jobs_submit(user=request.user, requests=requests)
        for job, created in submitted:
            job.created = created
        body = {"jobs": JobBatchItemResultSerializer([job for job, _ in submitted], many=True).data}
        any_created = any(created for _, created in submitted)
        return Response(body, status=status.HTTP_201_CREATED if any_created else status.HTTP_200_OK)


class JobDetailApi(APIView):
    @extend_schema(responses=JobDetailSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        job = get_object_or_404(Job.objects.select_related("subnet"), pk=job_id, user=request.user)
        return Response(JobDetailSerializer(job).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses=JobDetailSerializer)
    def post(self, request: Request, job_id: str) -> Response:
        job = jobs.job_cancel(user=request.user, job_id=job_id)
        return Response(JobDetailSerializer(job).data)

"""The OpenAI-compatible API under /v1/: code written for OpenAI's API, and OpenAI's own
clients, work by changing the base URL (`model` names a subnet). Requests wait for the
verified result, at most BIM_OPENAI_WAIT_S; every answer carries BIM's receipt in a `bim`
field (and the job id in a `BIM-Job-Id` header), so verification stays one call away
(`bim_sdk.openai_receipts`). Refusals take OpenAI's error shape and status codes.

Async views: a request waiting for its job must not hold one of the few threads Django
runs synchronous views in. The database work is synchronous and runs in that pool, a
call at a time (`sync_to_async`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.authtoken.models import Token

from bim_core.errors import ServiceError
from registry import selectors as registry_selectors
from registry.models import TERMINAL_STATES, Job, JobState
from registry.selectors import partial_key
from registry.submit import job_submit
from subnets import selectors as subnet_selectors
from subnets.tokenizing import input_token_count

from .keys import api_key_user
from .openai_shapes import (
    chat_response,
    completion_response,
    embeddings_request,
    embeddings_response,
    error_body,
    model_entry,
    stream_chunk,
    text_request,
    text_usage,
)

POLL_S = 0.1


def openai_error(exc: ServiceError, **extra: Any) -> JsonResponse:
    if exc.extra:  # BIM's own fields (a content policy's rule, links to follow) beside OpenAI's
        extra = {**extra, "bim": {**exc.extra, **extra.get("bim", {})}}
    response = JsonResponse(error_body(exc.status, exc.detail, exc.code, **extra), status=exc.status)
    # OpenAI's clients retry 409, 429 and 5xx by default; a refusal that would only be
    # refused again (or a job still running, which a retry would submit twice) says so.
    response["x-should-retry"] = "true" if exc.status in (429, 503) else "false"
    if exc.status == 503:
        response["Retry-After"] = str(settings.BIM_RETRY_AFTER_S)
    if "retry_after_s" in exc.extra:
        response["Retry-After"] = str(exc.extra["retry_after_s"])
    return response


def _user_for_key(key: str) -> Any:
    user = api_key_user(key)
    if user is None:
        # A registry token (the SDK's and the nodes') works as a bearer key too.
        token = Token.objects.select_related("user").filter(key=key).first()
        user = token.user if token is not None and token.user.is_active else None
    return user


async def _authenticated(request: HttpRequest) -> Any:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ServiceError("missing_api_key", "send Authorization: Bearer <your API key>", status=401)
    user = await sync_to_async(_user_for_key)(key.strip())
    if user is None:
        raise ServiceError("invalid_api_key", "unknown or revoked API key", status=401)
    return user


def _body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body or b"null")
    except RequestDataTooBig:
        raise ServiceError("request_too_large", "the request body is too large", status=413) from None
    except (ValueError, RecursionError):
        raise ServiceError("invalid_json", "the body is not JSON") from None


async def _subnet_of_family(slug: str, task_type: str) -> None:
    """Refuse, before anything is held, a model of another family than the endpoint's."""
    subnet = await sync_to_async(subnet_selectors.subnet_get_active)(slug=slug)
    if subnet.task_type != task_type:
        raise ServiceError("wrong_model_family", f"{slug} is a {subnet.task_type} subnet, not {task_type}")


async def _job_settled(job_id: uuid.UUID) -> Job:
    """The job once it ends, or ServiceError job_pending after BIM_OPENAI_WAIT_S."""
    deadline = time.monotonic() + settings.BIM_OPENAI_WAIT_S
    while True:
        job = await sync_to_async(Job.objects.select_related("subnet").get)(pk=job_id)
        if job.state in TERMINAL_STATES:
            return job
        if time.monotonic() >= deadline:
            raise ServiceError(
                "job_pending",
                f"job {job_id} is still {job.state} after {settings.BIM_OPENAI_WAIT_S} s; "
                f"GET /api/v1/jobs/{job_id}/ gives its result and receipt when it settles",
                status=504,
            )
        await asyncio.sleep(POLL_S)


def _bim_fields(job: Job, text_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """What verifying the answer needs beside the result in OpenAI's shape; for text, the
    result as the receipt hashed it (its token ids), which OpenAI's shape has no place for."""
    fields = {
        "job_id": str(job.id),
        "state": job.state,
        "contract": job.contract,
        "receipt": job.receipt,
        "verification": job.verification,
    }
    if text_result is not None:
        fields["result"] = {k: text_result[k] for k in ("text", "tokens", "finish")}
    return fields


def _settled_result(job: Job) -> Any:
    assignment = registry_selectors.job_delivered_assignment(job=job)
    return registry_selectors.assignment_result(assignment)


def _failed(job: Job) -> ServiceError:
    return ServiceError(
        f"job_{job.state}", f"job {job.id} {job.state}: {job.failure_reason or 'no verified result'}", status=502
    )


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    try:
        if request.method != "GET":
            raise ServiceError("method_not_allowed", "GET /v1/models", status=405)
        await _authenticated(request)
        subnets = await sync_to_async(lambda: list(subnet_selectors.subnet_list_active()))()
    except ServiceError as exc:
        return openai_error(exc)
    return JsonResponse({"object": "list", "data": [model_entry(s) for s in subnets]})


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    job_id = None
    try:
        if request.method != "POST":
            raise ServiceError("method_not_allowed", "POST /v1/embeddings", status=405)
        user = await _authenticated(request)
        model, inputs, encoding = embeddings_request(_body(request))
        await _subnet_of_family(model, "embedding")
        key = request.headers.get("Idempotency-Key") or f"openai:{uuid.uuid4()}"
        job, _ = await sync_to_async(job_submit)(user=user, subnet_slug=model, inputs=inputs, idempotency_key=key)
        job_id = job.id
        job = await _job_settled(job.id)
        if job.state != JobState.SETTLED:
            raise _failed(job)
        vectors = await sync_to_async(_settled_result)(job)
        tokens = await sync_to_async(input_token_count)(job.subnet, inputs["texts"])
    except ServiceError as exc:
        response = openai_error(exc, **({"bim": {"job_id": str(job_id)}} if job_id else {}))
    else:
        response = JsonResponse(
            embeddings_response(
                model=model, vectors=vectors, encoding=encoding, tokens=tokens or 0, bim=_bim_fields(job)
            )
        )
    if job_id is not None:
        response["BIM-Job-Id"] = str(job_id)
    return response


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await _text(request, chat=True)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponse:
    return await _text(request, chat=False)


async def _text(request: HttpRequest, *, chat: bool) -> HttpResponse:
    job_id = None
    try:
        if request.method != "POST":
            raise ServiceError("method_not_allowed", "POST only", status=405)
        user = await _authenticated(request)
        model, inputs, stream, include_usage = text_request(_body(request), chat=chat)
        await _subnet_of_family(model, "text")
        key = request.headers.get("Idempotency-Key") or f"openai:{uuid.uuid4()}"
        job, _ = await sync_to_async(job_submit)(user=user, subnet_slug=model, inputs=inputs, idempotency_key=key)
        job_id = job.id
        created = int(job.created_at.timestamp())
        if stream:
            response: HttpResponse = StreamingHttpResponse(
                _text_events(job.id, model=model, created=created, chat=chat, include_usage=include_usage),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # a proxy must pass each event on at once
        else:
            job = await _job_settled(job.id)
            if job.state != JobState.SETTLED:
                raise _failed(job)
            result = await sync_to_async(_settled_result)(job)
            shape = chat_response if chat else completion_response
            response = JsonResponse(
                shape(job_id=str(job.id), created=created, model=model, result=result, bim=_bim_fields(job, result))
            )
    except ServiceError as exc:
        response = openai_error(exc, **({"bim": {"job_id": str(job_id)}} if job_id else {}))
    if job_id is not None:
        response["BIM-Job-Id"] = str(job_id)
    return response


def _event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _text_events(
    job_id: uuid.UUID, *, model: str, created: int, chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI streams them: the text a node streams while it
    generates (unverified, as it comes), then a last chunk with the rest of the verified
    text, the finish reason and the `bim` receipt, then [DONE]. Streamed text is only ever
    extended: should the verified text not start with what was streamed (the pair settled
    on the other node's tokens), the last chunk says so (`bim.streamed_text_replaced`); the
    verified text is always `bim.result.text`."""
    chunk = {"chat": chat, "job_id": str(job_id), "created": created, "model": model}
    yield _event(stream_chunk(**chunk, text="" if chat else None, first=True))
    sent = ""
    deadline = time.monotonic() + settings.BIM_OPENAI_WAIT_S
    while True:
        partial = await sync_to_async(cache.get)(partial_key(job_id))
        text = partial["text"] if isinstance(partial, dict) else ""
        if len(text) > len(sent) and text.startswith(sent):
            yield _event(stream_chunk(**chunk, text=text[len(sent):]))
            sent = text
        job = await sync_to_async(Job.objects.select_related("subnet").get)(pk=job_id)
        if job.state in TERMINAL_STATES:
            break
        if time.monotonic() >= deadline:
            pending = ServiceError("job_pending", f"job {job_id} is still {job.state}; poll /api/v1/jobs/{job_id}/", status=504)
            yield _event(error_body(504, pending.detail, pending.code, bim={"job_id": str(job_id)}))
            return
        await asyncio.sleep(POLL_S)
    if job.state != JobState.SETTLED:
        failed = _failed(job)
        yield _event(error_body(failed.status, failed.detail, failed.code, bim={"job_id": str(job_id)}))
        return
    result = await sync_to_async(_settled_result)(job)
    bim = _bim_fields(job, result)
    final = result["text"]
    if final.startswith(sent):
        rest = final[len(sent):]
    else:
        rest, bim = "", {**bim, "streamed_text_replaced": True}
    extra = {"usage": text_usage(result)} if include_usage else {}
    yield _event(stream_chunk(**chunk, text=rest, finish=result["finish"], bim=bim, **extra))
    yield _event("[DONE]")

"""OpenAI's request and response shapes, translated to and from BIM's: which subnet a
`model` names, the inputs a request becomes, the body a settled job answers with, and the
error object (`{"error": {"message", "type", "param", "code"}}`) every refusal takes.
Plain functions over dicts: the views in `openai_api.py` do the HTTP."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from bim_core.errors import ServiceError

# OpenAI's error types by HTTP status (what its clients show and branch on).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_body(status: int, message: str, code: str, param: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        },
        **extra,
    }


def embeddings_request(body: Any) -> tuple[str, dict[str, Any], str]:
    """(subnet slug, BIM inputs, encoding format) of an embeddings request; ServiceError
    naming the parameter otherwise. Token arrays are refused: BIM contracts pin the subnet's
    own tokenizer, so inputs travel as text."""
    if not isinstance(body, dict):
        raise ServiceError("invalid_body", "the body is a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ServiceError("model_required", "model: a subnet's slug (GET /v1/models lists them)")
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ServiceError("invalid_input", "input: a string or a non-empty list of strings (token arrays are not taken)")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ServiceError("invalid_encoding_format", "encoding_format: float or base64")
    if body.get("dimensions") is not None:
        raise ServiceError("dimensions_unsupported", "dimensions: a subnet's model has one output size")
    return model, {"texts": texts}, encoding


def embeddings_response(*, model: str, vectors: np.ndarray, encoding: str, tokens: int, bim: dict[str, Any]) -> dict[str, Any]:
    rows = np.asarray(vectors, dtype=np.float32)
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
                if encoding == "base64"
                else [float(x) for x in row],
            }
            for i, row in enumerate(rows)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "bim": bim,
    }


def model_entry(subnet: Any) -> dict[str, Any]:
    return {
        "id": subnet.slug,
        "object": "model",
        "created": int(subnet.created_at.timestamp()) if getattr(subnet, "created_at", None) else 0,
        "owned_by": "bim",
        "bim": {"task_type": subnet.task_type, "model_id": subnet.model_id, "model_checksum": subnet.model_checksum},
    }


def text_request(body: Any, *, chat: bool) -> tuple[str, dict[str, Any], bool, bool]:
    """(subnet slug, BIM text inputs, stream, include usage in the stream) of a chat or
    completions request. A text subnet wraps the prompt in its own chat template with its
    own system prompt (the contract pins both, so both nodes compute the same tokens), so a
    chat is one user message; sampling parameters other than greedy are refused, since
    verification needs both nodes to decode alike."""
    if not isinstance(body, dict):
        raise ServiceError("invalid_body", "the body is a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ServiceError("model_required", "model: a text subnet's slug (GET /v1/models lists them)")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ServiceError("invalid_messages", "messages: a non-empty list")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if len(users) != 1 or len(messages) != 1 or not isinstance(users[0].get("content"), str):
            raise ServiceError(
                "unsupported_messages",
                "messages: one user message with string content (the subnet's template and system prompt are fixed)",
            )
        prompt = users[0]["content"]
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ServiceError("invalid_prompt", "prompt: a string")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 64))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise ServiceError("invalid_max_tokens", "max_tokens: an integer")
    temperature = body.get("temperature", 0)
    if temperature not in (0, 0.0, None) or body.get("n", 1) != 1 or body.get("top_p", 1) not in (1, 1.0, None):
        raise ServiceError("unsupported_sampling", "greedy decoding only: temperature 0, top_p 1, n 1")
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    return model, {"prompt": prompt, "max_tokens": max_tokens}, stream, bool(isinstance(options, dict) and options.get("include_usage"))


def text_usage(result: dict[str, Any]) -> dict[str, int]:
    # BIM bills generated tokens; the prompt's tokens are the subnet's template's business.
    completion = len(result["tokens"])
    return {"prompt_tokens": 0, "completion_tokens": completion, "total_tokens": completion}


def chat_response(*, job_id: str, created: int, model: str, result: dict[str, Any], bim: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result["text"]},
                "finish_reason": result["finish"],
                "logprobs": None,
            }
        ],
        "usage": text_usage(result),
        "bim": bim,
    }


def completion_response(*, job_id: str, created: int, model: str, result: dict[str, Any], bim: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": result["text"], "finish_reason": result["finish"], "logprobs": None}],
        "usage": text_usage(result),
        "bim": bim,
    }


def stream_chunk(
    *, chat: bool, job_id: str, created: int, model: str, text: str | None, finish: str | None = None, first: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [choice], **extra}
    return {"id": f"cmpl-{job_id}", "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}], **extra}

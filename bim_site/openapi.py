"""drf-spectacular post-processing (SPECTACULAR_SETTINGS' POSTPROCESSING_HOOKS): every API
operation documents its refusals. They all have one shape, `{"code", "detail"}`
(registry.api.exception_handler, bim_site.errors), so one `Error` schema answers any 4XX:
authentication, validation (detail holds the field errors), throttling (with Retry-After),
unknown objects and service refusals; and 503 (with Retry-After) when there is no capacity."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "description": "machine-readable reason, e.g. insufficient_credits"},
        "detail": {"description": "a sentence; for code `invalid`, the field errors"},
    },
    "required": ["code", "detail"],
}


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error = {
        "description": "refused: {code, detail}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    unavailable = {
        "description": "no capacity now (no node serves the subnet): {code, detail}, with Retry-After",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/"):
            continue
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("4XX", error)
                operation["responses"].setdefault("503", unavailable)
    return result

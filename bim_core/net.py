"""Network facts about a request, the same for HTTP views and websocket consumers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def client_ip(source: Mapping[str, Any]) -> str | None:
    """The peer's address from an ASGI scope (`client`) or a Django request's META
    (`REMOTE_ADDR`): the one place that decides which address a request came from."""
    client = source.get("client")
    if client:
        return str(client[0]) or None
    return source.get("REMOTE_ADDR") or None

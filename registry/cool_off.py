"""Cutting a node off: after the registry closed a node's socket for what it sent (a flood,
a frame over the limit), its hellos are refused for NODE_CUT_OFF_COOL_OFF_S. Kept in the
cache: a cool-off outliving a cache restart is not worth a table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from .routing_index import timestamp_utc


def _cool_off_key(node_id: object) -> str:
    return f"bim:cool-off:{node_id}"


def node_cool_off(node_id: object) -> None:
    """The registry cut the node off for what it sent (a flood, a frame over the limit):
    its hellos are refused for NODE_CUT_OFF_COOL_OFF_S, so a flooder cannot be back in a
    second to flood again (each round costs every other node CPU)."""
    until = timezone.now() + timedelta(seconds=settings.NODE_CUT_OFF_COOL_OFF_S)
    cache.set(_cool_off_key(node_id), until.timestamp(), timeout=settings.NODE_CUT_OFF_COOL_OFF_S)


def nodes_cooling_off_until(node_ids: Sequence[object]) -> dict[Any, datetime]:
    """Of `node_ids`, those cooling off, with until when (one cache round trip)."""
    keys = {_cool_off_key(node_id): node_id for node_id in node_ids}
    now = timezone.now().timestamp()
    return {keys[key]: timestamp_utc(until) for key, until in cache.get_many(list(keys)).items() if until > now}

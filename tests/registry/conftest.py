"""Fixtures the registry's tests share."""

from __future__ import annotations

import pytest

from registry import effects


@pytest.fixture
def sent(monkeypatch):
    """Messages the registry sends to node groups and job groups (after commit), in order:
    (group, event); nothing reaches a channel layer."""
    out: list[tuple[str, dict]] = []
    monkeypatch.setattr(effects, "group_send", lambda group, event: out.append((group, event)))
    return out

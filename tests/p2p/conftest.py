from __future__ import annotations

import pytest

from bim_core.peer import allow_loopback


@pytest.fixture
def loopback() -> None:
    """Peers in these tests find each other on 127.0.0.1 (bim_core.peer.allow_loopback)."""
    allow_loopback()

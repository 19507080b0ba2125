from __future__ import annotations

from collections.abc import Iterator

import pytest

from bim_core.peer import allow_loopback
from tests import turn


@pytest.fixture(scope="session")
def turn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[turn.TurnServer]:
    """coturn on 127.0.0.1 with TURN REST credentials (tests/turn.py); failing, never skipping,
    where turnserver is missing."""
    try:
        server = turn.start(tmp_path_factory.mktemp("turn"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    turn.stop(server)


@pytest.fixture
def loopback() -> None:
    """Peers in these tests find each other on 127.0.0.1 (bim_core.peer.allow_loopback)."""
    allow_loopback()

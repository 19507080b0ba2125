"""Helpers for tests that connect two `bim_core.peer.Peer`s in one event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from bim_core.peer import Peer

# Every scenario ends well within this: a hang fails its test instead of the session.
SCENARIO_S = 20


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_S))


async def connect(offerer: Peer, answerer: Peer, timeout_s: float = 10) -> None:
    answer = await answerer.answer(await offerer.offer())
    await offerer.accept_answer(answer)
    await asyncio.gather(offerer.wait_open(timeout_s), answerer.wait_open(timeout_s))


async def close(*peers: Peer) -> None:
    await asyncio.gather(*(peer.close() for peer in peers))

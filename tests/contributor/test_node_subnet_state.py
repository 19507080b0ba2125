"""The headless node and `subnet_state` (docs/protocol.md §4.2): a paused subnet's offers
are given back unrun while the node stays connected, a resume brings jobs back, a
retirement stops the node, and another subnet's news changes nothing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bim_core import protocol
from bim_node.session import NodeFatalError
from tests.contributor.test_node_client import (
    CHECKSUM,
    SUBNET,
    WAIT_S,
    assert_valid_result,
    fake_vectors,
    handshake,
    job_message,
    receive,
    run,
    running_node,
    send,
)

pytestmark = pytest.mark.timeout(30)


def state_message(state: str, *, subnet: str = SUBNET, checksum: str = CHECKSUM) -> dict:
    return {"type": "subnet_state", "subnet": subnet, "state": state, "model_checksum": checksum, "manifest_url": "/m/"}


def test_a_paused_subnet_gets_its_offers_back_unrun_until_it_resumes() -> None:
    computed: list[list[str]] = []

    def compute(texts: list[str]) -> np.ndarray:
        computed.append(texts)
        return fake_vectors(texts)

    async def scenario() -> None:
        async with running_node(compute) as node:
            ws = await node.registry.next_connection()
            hello = await handshake(ws)
            await asyncio.wait_for(node.client.ready.wait(), WAIT_S)

            await send(ws, state_message("paused"))
            offered = job_message(["sent just before the pause reached the registry"])
            await send(ws, offered)
            given_back = await receive(ws)
            assert given_back == {
                "type": "job_failed",
                "assignment_id": offered["assignment_id"],
                "reason": protocol.SUBNET_PAUSED,
            }
            assert computed == [] and node.client.subnet_state == "paused"
            assert not node.task.done()  # still connected, waiting for the resume

            await send(ws, state_message("active"))
            job = job_message(["after the resume"])
            await send(ws, job)
            assert_valid_result(await receive(ws), job, hello["session_key_pub"])
            assert computed == [["after the resume"]]

    run(scenario)


def test_a_retired_subnet_stops_the_node() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            await handshake(ws)
            await send(ws, state_message("retired"))
            with pytest.raises(NodeFatalError, match="retired by its operator"):
                await asyncio.wait_for(asyncio.shield(node.task), WAIT_S)

    run(scenario)


def test_a_resume_with_another_model_stops_the_node_to_fetch_it() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            await handshake(ws)
            await send(ws, state_message("paused"))
            await send(ws, state_message("active", checksum="ef" * 32))
            with pytest.raises(NodeFatalError, match="restart the node"):
                await asyncio.wait_for(asyncio.shield(node.task), WAIT_S)

    run(scenario)


def test_another_subnets_state_changes_nothing() -> None:
    async def scenario() -> None:
        async with running_node() as node:
            ws = await node.registry.next_connection()
            hello = await handshake(ws)
            await send(ws, state_message("retired", subnet="another-subnet"))
            await send(ws, state_message("paused", subnet="another-subnet"))
            job = job_message(["still served"])
            await send(ws, job)
            assert_valid_result(await receive(ws), job, hello["session_key_pub"])
            assert node.client.subnet_state == "active"

    run(scenario)

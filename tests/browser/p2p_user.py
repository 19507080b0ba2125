"""The user's end of a peer-to-peer job (docs/p2p.md §2-3) for end-to-end tests, played with
bim_core.peer (aiortc) over the registry's user socket: watch the job, offer each node a data
channel as its assignment appears, accept the node's answer and trickled candidates, send the
`input` frame, and read the node's reply (`result`, or `input_refused`).

What it returns is what the user saw, unchecked: the test checks hashes and signatures.
The caller's process must have called bim_core.peer.allow_loopback() for a loopback run."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect

from bim_core import protocol
from bim_core.peer import Peer

CONNECT_TIMEOUT_S = 10.0  # the SDK's BIM_P2P_CONNECT_S


@dataclass
class NodeLink:
    """One node of the job as the user reached it."""

    assignment_id: str
    role: str
    session_key_pub: str
    peer: Peer
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    candidates: int = 0  # trickled by the node (a browser) rather than in its SDP
    setup_ms: float = 0.0  # offer sent to data channel open
    reply_ms: float = 0.0  # input sent to the node's reply received
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""
    stats: dict[str, Any] = field(default_factory=dict)


async def bring_input(
    ws_url: str, job_id: str, inputs: dict[str, Any], *, nodes: int = 2, timeout_s: float = 120.0
) -> list[NodeLink]:
    """Run the user's end of job `job_id` until `nodes` nodes replied; the links in the order
    the nodes were assigned. `ws_url` is the user socket's, token included."""
    links: dict[str, NodeLink] = {}
    tasks: list[asyncio.Task[None]] = []
    async with connect(ws_url) as ws:

        async def send(message: dict[str, Any]) -> None:
            await ws.send(json.dumps(message))

        async def serve(link: NodeLink) -> None:
            offer = await link.peer.offer()
            started = time.perf_counter()
            await send({"type": "rtc_offer", "job_id": job_id, "assignment_id": link.assignment_id, "sdp": offer["sdp"]})
            await asyncio.wait_for(link.answered.wait(), CONNECT_TIMEOUT_S)
            await link.peer.wait_open(CONNECT_TIMEOUT_S)
            link.setup_ms = (time.perf_counter() - started) * 1000
            sent = time.perf_counter()
            header = {"kind": "input", "job_id": job_id, "assignment_id": link.assignment_id}
            await link.peer.send(header, protocol.canonical_json(inputs))
            link.header, link.payload = await link.peer.receive(timeout_s)
            link.reply_ms = (time.perf_counter() - sent) * 1000
            link.stats = link.peer.stats()
            # Read: the node may close its end now.
            await link.peer.close()

        def assigned(entry: dict[str, Any], ice_servers: list[dict[str, Any]]) -> None:
            if entry["assignment_id"] in links or len(links) >= nodes:
                return
            link = NodeLink(entry["assignment_id"], entry["role"], entry["session_key_pub"], Peer(ice_servers))
            links[link.assignment_id] = link
            tasks.append(asyncio.create_task(serve(link)))

        async def read() -> None:
            ice_servers: list[dict[str, Any]] = []
            async for raw in ws:
                message = json.loads(raw)
                kind = message["type"]
                if kind == "peers":
                    ice_servers = message["ice_servers"]
                    for entry in message["peers"]:
                        assigned(entry, ice_servers)
                elif kind == "peer_assigned":
                    assigned(message, ice_servers)
                elif kind == "rtc_answer":
                    link = links[message["assignment_id"]]
                    await link.peer.accept_answer({"type": "answer", "sdp": message["sdp"]})
                    link.answered.set()
                elif kind == "rtc_ice":
                    link = links[message["assignment_id"]]
                    link.candidates += 1
                    await link.peer.add_remote_candidate(message["candidate"])
                elif kind == "error":
                    raise AssertionError(f"the registry refused a user message: {message}")

        await send({"type": "watch", "job_id": job_id})
        reader = asyncio.create_task(read())
        try:
            async with asyncio.timeout(timeout_s):
                while len(links) < nodes or not all(t.done() for t in tasks):
                    if reader.done():
                        reader.result()  # raises what stopped it
                        raise AssertionError("the user socket closed")
                    for task in tasks:
                        if task.done():
                            task.result()
                    await asyncio.sleep(0.02)
            for task in tasks:
                task.result()
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)
            for link in links.values():
                await link.peer.close()
    return list(links.values())

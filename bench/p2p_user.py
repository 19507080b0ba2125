"""The user's end of one peer-to-peer job (docs/p2p.md), for benchmarks: what the SDK's p2p
client does, written out with `bim_core.peer` so a benchmark needs no more than this branch.

    job = await p2p_job_run(http, ws_url, subnet="bench-image-2x", inputs={...}, key="k1")

Submit by input hash and summary (`POST /api/v1/jobs/`), open the user socket (/ws/user/),
`watch` the job, offer each of its nodes a data channel (`rtc_offer`, the node's
`rtc_answer` relayed back), send the `input` frame, read the `result` frame, check it (hash
and the node's session signature), confirm it (`POST /api/v1/jobs/{id}/delivered/`), and
once the socket says the job is settled read the job detail (`GET`, the receipt) once. A
confirmation can reach the registry before the node's commit does (the node commits after
sending): it is retried on 409 `not_committed`, as the SDK does, and the retries counted.
No relay fallback: a channel that does not open fails the job run (a benchmark of the peer
path must not measure the relay unseen).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import connect

from bim_core import families, protocol
from bim_core.http import HttpClient, HttpError
from bim_core.peer import Peer

TERMINAL = frozenset({"settled", "failed", "expired"})
CONNECT_TIMEOUT_S = 10.0
DELIVERY_RETRY_S = 15.0
DELIVERY_RETRY_PAUSE_S = 0.05


class P2pJobError(Exception):
    """The peer-to-peer exchange broke: a channel did not open, a result did not check out,
    the registry refused a message."""


@dataclass
class P2pJob:
    job: dict[str, Any]  # the detail read once the job ended
    results: dict[str, bytes] = field(default_factory=dict)  # by assignment: the bytes received
    delivered_retries: int = 0  # confirmations answered 409 not_committed and sent again
    seconds: float = 0.0


def user_socket_url(base_url: str, token: str) -> str:
    """`http://host:port` -> `ws://host:port/ws/user/?token=...`."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}[parts.scheme]
    return urlunsplit((scheme, parts.netloc, "/ws/user/", "token=" + quote(token, safe=""), ""))


async def p2p_job_run(
    http: HttpClient,
    ws_url: str,
    *,
    subnet: str,
    task_type: str,
    inputs: dict[str, Any],
    key: str,
    timeout_s: float = 60.0,
) -> P2pJob:
    started = time.monotonic()
    family = families.family_for(task_type)
    body = {
        "subnet": subnet,
        "transport": "p2p",
        "input_hash": protocol.input_hash(inputs),
        "input_summary": family.input_summary(inputs),
        "idempotency_key": key,
    }
    job = (await asyncio.to_thread(http.request, "POST", "/api/v1/jobs/", json=body)).json()
    run = _Exchange(http, job, protocol.canonical_json(inputs))
    async with connect(ws_url, open_timeout=CONNECT_TIMEOUT_S, close_timeout=2) as ws:
        run.ws = ws
        await run.send({"type": "watch", "job_id": job["id"]})
        try:
            async with asyncio.timeout(timeout_s):
                await run.follow()
                await run.finish()
        except TimeoutError:
            raise P2pJobError(
                f"job {job['id']} did not end within {timeout_s} s; the user socket said {run.seen}, "
                f"results received from {len(run.results)} of {len(run.tasks)} nodes"
            ) from None
        finally:
            for task in run.tasks.values():
                task.cancel()
            await asyncio.gather(*run.tasks.values(), return_exceptions=True)
    detail = (await asyncio.to_thread(http.request, "GET", f"/api/v1/jobs/{job['id']}/")).json()
    return P2pJob(job=detail, results=run.results, delivered_retries=run.retries, seconds=time.monotonic() - started)


class _Exchange:
    def __init__(self, http: HttpClient, job: dict[str, Any], raw_inputs: bytes) -> None:
        self.http = http
        self.job = job
        self.job_id = str(job["id"])
        self.raw_inputs = raw_inputs
        self.ws: Any = None
        self.ice_servers: list[dict[str, Any]] = []
        self.answers: dict[str, asyncio.Future[str]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.results: dict[str, bytes] = {}
        self.retries = 0
        self.seen: list[str] = []  # the socket's message types, in order (for a failure's report)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message, separators=(",", ":")))

    async def follow(self) -> None:
        """The socket's messages until the job ends; a peer task's failure ends it too."""
        receive = asyncio.ensure_future(self.ws.recv())
        try:
            while True:
                running = {task for task in self.tasks.values() if not task.done()}
                done, _ = await asyncio.wait({receive, *running}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {receive}:
                    task.result()  # raises what broke that node's exchange
                if receive in done:
                    message = json.loads(receive.result())
                    receive = asyncio.ensure_future(self.ws.recv())
                    if self.on_message(message):
                        return
        finally:
            receive.cancel()

    def on_message(self, message: dict[str, Any]) -> bool:
        """Act on one socket message; True once the job has ended."""
        kind = message.get("type")
        self.seen.append(str(kind))
        if kind == "peers":
            self.ice_servers = list(message.get("ice_servers") or [])
            if message.get("state") in TERMINAL:
                return True
            for entry in message.get("peers") or []:
                self.reach(entry)
        elif kind == "peer_assigned":
            self.reach(message)
        elif kind == "rtc_answer":
            answer = self.answers.get(str(message.get("assignment_id")))
            if answer is not None and not answer.done():
                answer.set_result(str(message["sdp"]))
        elif kind == "job_state":
            return message.get("state") in TERMINAL
        elif kind == "error":
            raise P2pJobError(f"job {self.job_id}: the registry refused a message: {message}")
        return False

    async def finish(self) -> None:
        # Confirmations still retrying when the job ended (the other node's settled it).
        await asyncio.gather(*self.tasks.values())

    def reach(self, entry: dict[str, Any]) -> None:
        assignment_id = str(entry["assignment_id"])
        if assignment_id not in self.tasks:
            self.tasks[assignment_id] = asyncio.create_task(self.bring_input(entry))

    async def bring_input(self, entry: dict[str, Any]) -> None:
        assignment_id = str(entry["assignment_id"])
        peer = Peer(self.ice_servers)
        try:
            offer = await peer.offer()
            answer = self.answers[assignment_id] = asyncio.get_running_loop().create_future()
            await self.send({"type": "rtc_offer", "job_id": self.job_id, "assignment_id": assignment_id, "sdp": offer["sdp"]})
            await peer.accept_answer({"type": "answer", "sdp": await asyncio.wait_for(answer, CONNECT_TIMEOUT_S)})
            await peer.wait_open(CONNECT_TIMEOUT_S)
            await peer.send({"kind": "input", "job_id": self.job_id, "assignment_id": assignment_id}, self.raw_inputs)
            header, payload = await peer.receive(60.0)
        finally:
            await peer.close()
        if header.get("kind") != "result":
            raise P2pJobError(f"job {self.job_id}: node {entry.get('role')} answered {header}")
        result_hash = protocol.sha256_hex(payload)
        if not _signed_result(self.job, entry, header, result_hash):
            raise P2pJobError(f"job {self.job_id}: the result of node {entry.get('role')} does not check out")
        self.results[assignment_id] = payload
        await self.confirm(assignment_id, result_hash)

    async def confirm(self, assignment_id: str, result_hash: str) -> None:
        body = {"assignment_id": assignment_id, "result_hash": result_hash}
        deadline = time.monotonic() + DELIVERY_RETRY_S
        while True:
            try:
                await asyncio.to_thread(self.http.request, "POST", f"/api/v1/jobs/{self.job_id}/delivered/", json=body)
                return
            except HttpError as exc:
                if exc.code != "not_committed" or time.monotonic() > deadline:
                    raise
            self.retries += 1
            await asyncio.sleep(DELIVERY_RETRY_PAUSE_S)


def _signed_result(job: dict[str, Any], entry: dict[str, Any], header: dict[str, Any], result_hash: str) -> bool:
    """The bytes hash to the header's result_hash and the node's session key signed them
    for this job's contract and input, as it signs a relay result."""
    signed = protocol.result_message(
        job_id=str(job["id"]),
        assignment_id=str(entry["assignment_id"]),
        contract_hash=str(job["contract_hash"]),
        input_hash=str(job["contract"]["input_hash"]),
        result_hash=result_hash,
        shape=tuple(int(n) for n in header["shape"]),
    )
    return header.get("result_hash") == result_hash and protocol.signature_valid(
        str(entry["session_key_pub"]), str(header.get("signature")), signed
    )

"""The node's half of peer-to-peer jobs (docs/p2p.md): a `job` offered with `transport: "p2p"`
carries no inputs; the node waits for its user's `rtc_offer` (relayed by the registry),
answers it, and reads the input from the data channel; it sends the result back the same way
and only a signed commit to the registry, keeping the bytes in case the registry asks for
them (`upload_request`). When the user falls back to the registry relay (`job_inputs`), the
job runs as a relay job.

`PeerJobs` is one connection's state (waiting jobs, open channels); `ResultStore` outlives
connections, since an upload may be asked for after a reconnect (the stored message keeps
the signature of the session that committed it, which is what the registry checks).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from bim_core import protocol
from bim_core.peer import Peer, PeerError

from .jobs import Job, JobRefusedError, ServedModel

log = logging.getLogger(__name__)

# The `job_failed` reason when the user brought no input in time (no channel, no fallback):
# the registry does not hold it against the node (registry.give_up.assignment_give_up).
INPUT_NOT_RECEIVED = "input_not_received"
# The fields of a relay `result` that the data channel's `result` header carries (docs/p2p.md §3).
RESULT_HEADER_FIELDS = ("job_id", "assignment_id", "input_hash", "result_hash", "shape", "encoding", "signature")
# After sending a result, how long the node keeps the channel for the user to read it and
# close: closing at once could drop bytes still in flight.
LINGER_S = 30.0
# A user that stops reading must not hold a worker: the send gives up after this long (the
# registry then fetches the committed bytes itself when the user does not confirm them).
SEND_TIMEOUT_S = 60.0
# A user's `rtc_offer` can reach the node before the `job` it is for: the registry lists the
# job's nodes to its user as soon as the assignment is committed, and the offer's way (user
# socket -> registry -> node) is not ordered with the job's (worker -> node). Such an offer
# is kept this long (at most EARLY_OFFERS of them) for its job to arrive.
EARLY_OFFER_TTL_S = 30.0
EARLY_OFFERS = 64

Send = Callable[[dict[str, Any]], Awaitable[None]]


class ResultStore:
    """Committed peer-to-peer results and their inputs, by assignment, for `upload_request`:
    the signed relay `result` message (with `data`) exactly as it would have gone to the
    registry. Bounded by age (`ttl_s`) and by bytes (`max_bytes`), oldest dropped first: an
    upload comes within the job's lifetime, minutes at most, or never."""

    def __init__(self, *, max_bytes: int = 64 * 2**20, ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, int, dict[str, Any], dict[str, Any]]] = OrderedDict()
        self.bytes = 0

    def put(self, assignment_id: str, message: dict[str, Any], inputs: dict[str, Any]) -> bool:
        """Keep one; False when it alone is over the budget (it is not kept)."""
        size = len(str(message.get("data", ""))) + len(protocol.canonical_json(inputs))
        self._drop(assignment_id)
        if size > self.max_bytes:
            log.warning("assignment %s: a %d-byte result is over the upload store's budget; not kept", assignment_id, size)
            return False
        self._entries[assignment_id] = (self._clock(), size, message, inputs)
        self.bytes += size
        self._expire()
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def get(self, assignment_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        self._expire()
        entry = self._entries.get(assignment_id)
        return None if entry is None else (entry[2], entry[3])

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl_s
        while self._entries and next(iter(self._entries.values()))[0] < cutoff:
            self._drop(next(iter(self._entries)))

    def _drop(self, assignment_id: str) -> None:
        entry = self._entries.pop(assignment_id, None)
        if entry is not None:
            self.bytes -= entry[1]


@dataclass
class _Waiting:
    """An offered peer-to-peer job whose input has not arrived yet."""

    job: Job
    ice_servers: list[dict[str, Any]]
    relay_only: bool  # the registry's ICE transport policy is "relay": TURN candidates only
    offers: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    # Inputs the registry relayed after the user fell back (`job_inputs`).
    relayed: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    peer: Peer | None = None
    task: asyncio.Task[None] | None = None


class PeerJobs:
    """One connection's peer-to-peer jobs: waiting for their input, and the open channels
    their results go back over. `send` writes to the registry socket, `enqueue` hands a
    job with its inputs to the node's workers."""

    def __init__(
        self,
        *,
        model: ServedModel,
        send: Send,
        enqueue: Callable[[Job], Awaitable[None]],
        store: ResultStore,
        webrtc: bool = True,
        connect_timeout_s: float = 10.0,
        input_timeout_s: float = 120.0,
    ) -> None:
        self.model = model
        self.send = send
        self.enqueue = enqueue
        self.store = store
        self.webrtc = webrtc
        self.connect_timeout_s = connect_timeout_s
        self.input_timeout_s = input_timeout_s
        self.waiting: dict[str, _Waiting] = {}
        self.open_peers: dict[str, Peer] = {}  # jobs whose input came over a channel, until delivered
        self.early_offers: OrderedDict[str, tuple[float, str]] = OrderedDict()  # assignment -> (when, sdp)
        self._lingering: set[asyncio.Task[None]] = set()

    # Offers and signalling ------------------------------------------------------------

    def offered(self, job: Job, ice_servers: Any, ice_transport_policy: Any = "all") -> None:
        """A checked peer-to-peer offer (ServedModel.check_p2p_offer): wait for its input."""
        servers = [s for s in ice_servers if isinstance(s, dict) and "urls" in s] if isinstance(ice_servers, list) else []
        waiting = _Waiting(job, servers, ice_transport_policy == "relay")
        early = self.early_offers.pop(job.assignment_id, None)
        if early is not None and time.monotonic() - early[0] <= EARLY_OFFER_TTL_S:
            waiting.offers.put_nowait(early[1])
        waiting.task = asyncio.create_task(self._await_input(waiting))
        self.waiting[job.assignment_id] = waiting

    def on_rtc_offer(self, message: dict[str, Any]) -> None:
        assignment_id, sdp = str(message.get("assignment_id")), message.get("sdp")
        if not self.webrtc:
            log.info("assignment %s: WebRTC is off on this node; ignoring the user's offer", assignment_id)
            return
        if not isinstance(sdp, str):
            return
        waiting = self.waiting.get(assignment_id)
        if waiting is None:
            # Ahead of its job, most likely (EARLY_OFFER_TTL_S): kept for it, oldest dropped first.
            log.info("an rtc_offer for assignment %s, which waits for no input yet: kept for its job", assignment_id)
            self.early_offers.pop(assignment_id, None)
            self.early_offers[assignment_id] = (time.monotonic(), sdp)
            while len(self.early_offers) > EARLY_OFFERS:
                self.early_offers.popitem(last=False)
            return
        waiting.offers.put_nowait(sdp)

    async def on_rtc_ice(self, message: dict[str, Any]) -> None:
        """A trickled candidate (a browser user); aiortc's own are all in its SDPs."""
        waiting = self.waiting.get(str(message.get("assignment_id")))
        if waiting is None or waiting.peer is None or not isinstance(message.get("candidate"), dict):
            return
        try:
            await waiting.peer.add_remote_candidate(message["candidate"])
        except PeerError as exc:
            log.info("assignment %s: ignoring a candidate: %s", waiting.job.assignment_id, exc)

    def on_job_inputs(self, message: dict[str, Any]) -> None:
        """The user sent the input through the registry after all: run it as a relay job,
        unless it already came over the channel."""
        waiting = self.waiting.get(str(message.get("assignment_id")))
        if waiting is None:
            log.info("job_inputs for assignment %s, which waits for no input: ignored", message.get("assignment_id"))
            return
        if not waiting.relayed.done():
            waiting.relayed.set_result(message.get("inputs"))

    def on_cancel(self, assignment_id: str) -> None:
        waiting = self.waiting.get(assignment_id)
        if waiting is not None and waiting.task is not None:
            waiting.task.cancel()

    async def on_upload_request(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The registry asks for a committed result's bytes (and the input, `with_inputs`):
        the relay `result` message as it was signed. Returns what was sent."""
        assignment_id = str(message.get("assignment_id"))
        kept = self.store.get(assignment_id)
        if kept is None:
            log.warning("upload of assignment %s asked for (%s), but its result is no longer kept", assignment_id, message.get("reason"))
            return None
        upload, inputs = dict(kept[0]), kept[1]
        if message.get("with_inputs"):
            upload["inputs"] = inputs
        log.info("uploading assignment %s's result (%s)", assignment_id, message.get("reason"))
        await self.send(upload)
        return upload

    # The input -----------------------------------------------------------------------

    async def _await_input(self, waiting: _Waiting) -> None:
        job = waiting.job
        channel = asyncio.create_task(self._input_over_channel(waiting))
        try:
            done, _ = await asyncio.wait(
                {channel, waiting.relayed}, timeout=self._input_wait_s(job), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self.waiting.pop(job.assignment_id, None)
            if not channel.done():
                channel.cancel()
                with suppress(asyncio.CancelledError):
                    await channel
        if channel in done:
            peer, header, raw = channel.result()
            await self._accept_from_channel(job, peer, header, raw)
        elif waiting.relayed in done:
            await self._accept(replace(job, transport="relay"), waiting.relayed.result(), peer=None)
        else:
            log.warning("job %s: no input from its user in time", job.job_id)
            await self._job_failed(job, INPUT_NOT_RECEIVED)

    def _input_wait_s(self, job: Job) -> float:
        if job.deadline is None:
            return self.input_timeout_s
        return max(0.0, min(self.input_timeout_s, (job.deadline - datetime.now(UTC)).total_seconds()))

    async def _input_over_channel(self, waiting: _Waiting) -> tuple[Peer, dict[str, Any], bytes]:
        """Answer the user's offers until one brings the input frame. A channel that fails
        to open leaves the node waiting for another offer, or the relay's fallback."""
        job = waiting.job
        while True:
            sdp = await waiting.offers.get()
            peer: Peer | None = None
            kept = False
            try:
                peer = waiting.peer = Peer(waiting.ice_servers, relay_only=waiting.relay_only)
                answer = await peer.answer({"type": "offer", "sdp": sdp})
                await self.send({"type": "rtc_answer", "assignment_id": job.assignment_id, "sdp": answer["sdp"]})
                await peer.wait_open(self.connect_timeout_s)
                while True:
                    header, raw = await peer.receive(self.input_timeout_s)
                    if header.get("kind") == "input":
                        kept = True
                        return peer, header, raw
                    log.info("job %s: ignoring a %r frame before the input", job.job_id, header.get("kind"))
            except PeerError as exc:
                log.info("job %s: the user's channel failed (%s); waiting for another offer or the relay", job.job_id, exc)
            except Exception:
                # Whatever one offer breaks (aiortc on an odd SDP, bad ICE servers), the job
                # still waits for another offer or the relay's fallback.
                log.exception("job %s: answering the user's offer failed", job.job_id)
            finally:
                if peer is not None and not kept:
                    waiting.peer = None
                    await peer.close()

    async def _accept_from_channel(self, job: Job, peer: Peer, header: dict[str, Any], raw: bytes) -> None:
        try:
            if header.get("job_id") != job.job_id or header.get("assignment_id") != job.assignment_id:
                raise JobRefusedError("bad_input", "the input frame names another job or assignment")
            try:
                inputs = json.loads(raw)
            except ValueError:  # UnicodeDecodeError included
                raise JobRefusedError("bad_input", "the input is not UTF-8 JSON") from None
        except JobRefusedError as exc:
            await self._refuse(job, peer, exc)
            return
        await self._accept(job, inputs, peer=peer)

    async def _accept(self, job: Job, inputs: Any, *, peer: Peer | None) -> None:
        try:
            ready = self.model.check_p2p_inputs(job, inputs)
        except JobRefusedError as exc:
            # The input is the user's own (it has the contract's hash) yet breaks the contract:
            # it goes to the registry as evidence, which checks the refusal as for a relay job.
            bound = isinstance(inputs, dict) and _hash_of(inputs) == job.contract.get("input_hash")
            await self._refuse(job, peer, exc, evidence=inputs if bound else None)
            return
        if peer is not None:
            self.open_peers[job.assignment_id] = peer
        log.info("job %s: input received %s", job.job_id, "peer to peer" if peer else "through the registry")
        await self.enqueue(ready)

    async def _refuse(
        self, job: Job, peer: Peer | None, refusal: JobRefusedError, *, evidence: dict[str, Any] | None = None
    ) -> None:
        log.warning("job %s: refusing its input: %s", job.job_id, refusal)
        if peer is not None:
            with suppress(PeerError):
                await asyncio.wait_for(peer.send({"kind": "input_refused", "reason": refusal.reason}), SEND_TIMEOUT_S)
            self._linger(peer)
        await self._job_failed(job, refusal.reason, inputs=evidence)

    async def _job_failed(self, job: Job, reason: str, *, inputs: dict[str, Any] | None = None) -> None:
        message = {"type": "job_failed", "assignment_id": job.assignment_id, "reason": reason}
        if inputs is not None:
            message["inputs"] = inputs
        await self.send(message)

    # The result ----------------------------------------------------------------------

    def partial_sender(self, job: Job, loop: asyncio.AbstractEventLoop) -> Callable[[dict[str, Any]], None]:
        """For the compute thread: streamed text goes to the user over the channel (never to
        the registry, which must not see a peer-to-peer job's output)."""
        peer = self.open_peers.get(job.assignment_id)

        def send_partial(message: dict[str, Any]) -> None:
            if peer is not None:
                header = {"kind": "partial", "text": message["text"], "tokens": message["tokens"]}
                asyncio.run_coroutine_threadsafe(_send_quietly(peer, header), loop)

        return send_partial

    async def deliver(self, job: Job, message: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """Send a computed result to the user over its channel, keep it for an upload, and
        commit it to the registry (docs/p2p.md §4). Returns the commit sent."""
        self.store.put(job.assignment_id, message, job.inputs)
        peer = self.open_peers.pop(job.assignment_id, None)
        stats: dict[str, Any] = {}
        if peer is not None:
            header = {"kind": "result", **{name: message[name] for name in RESULT_HEADER_FIELDS}}
            try:
                await asyncio.wait_for(peer.send(header, payload), SEND_TIMEOUT_S)
            except (PeerError, TimeoutError) as exc:
                # Committed all the same: the registry fetches the bytes when the user does
                # not confirm them (docs/p2p.md §4, case 2).
                log.warning("job %s: the result did not reach the user over the channel: %s", job.job_id, exc)
            stats = peer.stats()
            self._linger(peer)
        commit = {name: value for name, value in message.items() if name != "data"}
        commit.update(
            type="result_commit",
            size=len(payload),
            transport={
                "relayed": bool(stats.get("relayed", False)),
                "bytes_sent": int(stats.get("bytes_sent", 0)),
                "bytes_received": int(stats.get("bytes_received", 0)),
            },
        )
        await self.send(commit)
        return commit

    def release(self, assignment_id: str) -> None:
        """A job that ends without a result (compute error, cancelled, past its deadline)."""
        peer = self.open_peers.pop(assignment_id, None)
        if peer is not None:
            self._linger(peer, 0)

    def _linger(self, peer: Peer, seconds: float = LINGER_S) -> None:
        """Close the channel once the user has closed it (it read everything), or after
        `seconds`."""

        async def linger() -> None:
            try:
                async with asyncio.timeout(seconds):
                    while True:
                        await peer.receive(seconds)  # until the user closes: PeerError
            except (PeerError, TimeoutError):
                pass
            finally:
                await peer.close()

        task = asyncio.create_task(linger())
        self._lingering.add(task)
        task.add_done_callback(self._lingering.discard)

    async def close(self) -> None:
        """The connection ended: stop waiting and close every channel."""
        tasks = [w.task for w in self.waiting.values() if w.task is not None] + list(self._lingering)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        peers, self.open_peers = list(self.open_peers.values()), {}
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


async def _send_quietly(peer: Peer, header: dict[str, Any]) -> None:
    with suppress(PeerError):
        await peer.send(header)


def _hash_of(inputs: dict[str, Any]) -> str | None:
    try:
        return protocol.input_hash(inputs)
    except (TypeError, ValueError):  # not JSON the contract could name (NaN, a lone surrogate)
        return None

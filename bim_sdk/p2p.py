"""Peer-to-peer jobs from the SDK (docs/p2p.md): the input goes to the job's nodes over WebRTC
data channels, never through the registry, and their results come back the same way.

After a submit with `transport: "p2p"` (input hash and summary only), `exchange` opens the
user socket (/ws/user/), watches the job, offers each of its nodes a channel (`rtc_offer`,
the registry relaying the answer), sends the input, checks each result it receives (SHA-256,
the node's session signature) and confirms it to the registry (`delivered/`). A node whose
channel does not open within `connect_timeout` makes the whole job fall back to the relay
(`inputs/`, reason `no_peer_connection`), unless `relay_fallback` is off. It ends when the
job is settled, failed or expired.

The SDK's API is synchronous: the exchange runs on an event loop of its own, in a thread of
its own (so it works from code that already runs a loop), and hands the caller its events
(streamed text, then the outcome) through a queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from bim_core import families, protocol
from bim_core.http import HttpError

log = logging.getLogger(__name__)

TERMINAL = frozenset({"settled", "failed", "expired"})
DEFAULT_CONNECT_TIMEOUT_S = 10.0
NO_PEER_CONNECTION = "no_peer_connection"
# How often the job is read over HTTP while waiting: the socket's `job_state` says when it
# ends, this only covers a socket that went quiet.
POLL_S = 2.0
# How long ending the exchange waits for confirmations still on their way (`delivered/`).
CONFIRM_WAIT_S = 15.0


class PeerRefused(HttpError):
    """A node refused the input under the contract's content policy (`content_policy:<rule>`):
    every honest node will. Raised as the SDK's BimError subclass by the client."""


@dataclass(frozen=True)
class Received:
    """A result that came over a node's data channel."""

    assignment_id: str
    role: str
    header: dict[str, Any]
    payload: bytes
    # Its hash is the header's and the node's session key signed it.
    checked: bool


@dataclass
class Outcome:
    """How a peer-to-peer job went: the job as the registry finally reports it, the results
    received over channels, and whether (why) the input went through the relay after all."""

    job: dict[str, Any]
    received: list[Received] = field(default_factory=list)
    fallback_reason: str = ""
    refusals: dict[str, str] = field(default_factory=dict)  # assignment id -> input_refused reason
    opened: list[str] = field(default_factory=list)  # assignments whose channel opened
    seconds: float = 0.0

    def payload_for(self, result_hash: str) -> bytes | None:
        return next((r.payload for r in self.received if protocol.sha256_hex(r.payload) == result_hash), None)

    @property
    def bytes_received(self) -> int:
        return sum(len(r.payload) for r in self.received)


@dataclass(frozen=True)
class Partial:
    """Text a node streamed over its channel: unverified."""

    role: str
    text: str
    tokens: int


def family_of_inputs(inputs: dict[str, Any]) -> families.TaskFamily:
    """The task family whose inputs these are (a p2p submit computes the family's summary)."""
    keys = set(inputs)
    for task_type, shape in (("embedding", {"texts"}), ("text", {"prompt", "max_tokens"}), ("image", {"image"})):
        if keys == shape:
            return families.family_for(task_type)
    raise ValueError(f"inputs with keys {sorted(keys)} are not an embedding, text or image job's")


def user_socket_url(base_url: str, token: str) -> str:
    """`http(s)://host[/prefix]` -> `ws(s)://host[/prefix]/ws/user/?token=...`."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"registry URL must be http or https: {base_url}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws/user/", "token=" + quote(token, safe=""), ""))


def exchange_events(
    request: Callable[..., Any],
    *,
    ws_url: str,
    job: dict[str, Any],
    inputs: dict[str, Any],
    timeout: float,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    relay_fallback: bool = True,
) -> Iterator[Partial | Outcome]:
    """Run the exchange (module docstring) on a private event loop and thread; yield each
    `Partial` as it arrives, then the `Outcome`. `request(method, path, json=...)` is the
    client's authenticated HTTP call. Leaving the iterator early stops the exchange."""
    events: queue.Queue[Partial | Outcome | BaseException] = queue.Queue()
    session = _Exchange(request, ws_url, job, inputs, timeout, connect_timeout, relay_fallback, events.put)
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            holder["loop"], holder["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            await session.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the caller's thread, raised there
            events.put(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name=f"bim-p2p-{job['id']}", daemon=True)
    thread.start()
    try:
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Outcome):
                return
    finally:
        started.wait()
        if thread.is_alive() and "task" in holder:
            holder["loop"].call_soon_threadsafe(holder["task"].cancel)
        thread.join(timeout=10)


def exchange(request: Callable[..., Any], **options: Any) -> Outcome:
    """`exchange_events` without the streamed text: the outcome."""
    for event in exchange_events(request, **options):
        if isinstance(event, Outcome):
            return event
    raise AssertionError("unreachable: the events end with the outcome")


class _Exchange:
    def __init__(
        self,
        request: Callable[..., Any],
        ws_url: str,
        job: dict[str, Any],
        inputs: dict[str, Any],
        timeout: float,
        connect_timeout: float,
        relay_fallback: bool,
        emit: Callable[[Any], None],
    ) -> None:
        self.request = request
        self.ws_url = ws_url
        self.job = job
        self.job_id = str(job["id"])
        self.inputs = inputs
        self.raw_inputs = protocol.canonical_json(inputs)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.relay_fallback = relay_fallback
        self.emit = emit
        self.outcome = Outcome(job=job)
        self.ice_servers: list[dict[str, Any]] = []
        self.relay_only = False  # the registry's ICE transport policy is "relay"
        self.answers: dict[str, asyncio.Future[str]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Confirmations of results received (`delivered/`): finished even once the job ends.
        self.confirming: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        self.done = asyncio.Event()
        self.ws: Any = None
        self.watching = False  # the registry answered `watch` with the job's peers

    async def run(self) -> None:
        # Imported here: the SDK's relay jobs need neither websockets nor aiortc.
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        from bim_core.peer import allow_loopback

        if os.environ.get("BIM_P2P_LOOPBACK", "").strip().lower() in ("1", "true", "yes"):
            allow_loopback()  # tests and one-machine demos (bim_core.peer)
        started = time.monotonic()
        try:
            async with connect(self.ws_url, open_timeout=self.connect_timeout, close_timeout=2) as ws:
                self.ws = ws
                await self._send({"type": "watch", "job_id": self.job_id})
                async with asyncio.timeout(self.timeout):
                    await self._follow(ws)
        except InvalidStatus as exc:
            raise PeerRefused(exc.response.status_code, "user_socket_refused", "the registry refused the user socket") from None
        except ConnectionClosed as exc:
            if self.failure is None:
                code = exc.rcvd.code if exc.rcvd else None
                if code == protocol.CLOSE_UNAUTHENTICATED:
                    # An unknown, revoked or inactive token or API key.
                    raise PeerRefused(401, "unauthenticated", "the user socket refused this token") from None
                raise PeerRefused(503, "user_socket_closed", f"the user socket closed ({code})") from None
        except TimeoutError:
            raise TimeoutError(f"job {self.job_id} did not finish within {self.timeout} s") from None
        finally:
            await self._stop_peers()
        if self.failure is not None:
            raise self.failure
        self.outcome.job = await asyncio.to_thread(self.request, "GET", f"/api/v1/jobs/{self.job_id}/")
        self.outcome.seconds = time.monotonic() - started
        self.emit(self.outcome)

    async def _follow(self, ws: Any) -> None:
        """The socket's messages until the job ends (or a peer task failed the exchange)."""
        while not self.done.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), POLL_S)
            except TimeoutError:
                job = await asyncio.to_thread(self.request, "GET", f"/api/v1/jobs/{self.job_id}/")
                if job["state"] in TERMINAL:
                    return
                continue
            message = _parse(raw)
            kind = message.get("type") if message else None
            if kind == "peers":
                self.watching = True
                self.ice_servers = [s for s in message.get("ice_servers") or [] if isinstance(s, dict)]
                self.relay_only = message.get("ice_transport_policy") == "relay"
                if message.get("state") in TERMINAL:
                    return
                for entry in message.get("peers") or []:
                    self._reach(entry)
            elif kind == "peer_assigned":
                self._reach(message)
            elif kind == "rtc_answer":
                answer = self.answers.get(str(message.get("assignment_id")))
                if answer is not None and not answer.done() and isinstance(message.get("sdp"), str):
                    answer.set_result(message["sdp"])
            elif kind == "job_state":
                if message.get("state") in TERMINAL:
                    return
            elif kind == "error":
                if not self.watching:  # `watch` itself was refused: not this user's p2p job
                    raise PeerRefused(409, str(message.get("code")), str(message.get("detail")))
                log.info("job %s: the registry refused a message: %s", self.job_id, message)

    def _reach(self, entry: dict[str, Any]) -> None:
        assignment_id = str(entry.get("assignment_id"))
        if assignment_id in self.tasks or self.outcome.fallback_reason:
            return  # already reached, or the input went through the relay: nothing to bring
        task = asyncio.create_task(self._bring_input(entry))
        self.tasks[assignment_id] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self.failure is None:
            self.failure = error
            self.done.set()
            if self.ws is not None:
                # Wakes _follow's recv at once instead of at its next poll.
                asyncio.ensure_future(self.ws.close())

    async def _bring_input(self, entry: dict[str, Any]) -> None:
        from bim_core.peer import Peer, PeerError

        assignment_id, role = str(entry["assignment_id"]), str(entry.get("role", ""))
        peer = Peer(self.ice_servers, relay_only=self.relay_only)
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    offer = await peer.offer()
                    answer = self.answers[assignment_id] = asyncio.get_running_loop().create_future()
                    await self._send(
                        {"type": "rtc_offer", "job_id": self.job_id, "assignment_id": assignment_id, "sdp": offer["sdp"]}
                    )
                    await peer.accept_answer({"type": "answer", "sdp": await answer})
                    await peer.wait_open(self.connect_timeout)
            except (TimeoutError, PeerError) as exc:
                log.warning("job %s: no channel to node %s within %s s (%s)", self.job_id, role, self.connect_timeout, exc)
                await self._fall_back(NO_PEER_CONNECTION)
                return
            if self.outcome.fallback_reason:
                return  # the registry relays the input now, to this node too
            self.outcome.opened.append(assignment_id)
            await peer.send({"kind": "input", "job_id": self.job_id, "assignment_id": assignment_id}, self.raw_inputs)
            while True:
                try:
                    header, payload = await peer.receive(self.timeout)
                except PeerError as exc:
                    # The node dropped: the registry gives its role to another node (a new
                    # peer_assigned) or fetches a committed result itself.
                    log.warning("job %s: node %s's channel ended before its result: %s", self.job_id, role, exc)
                    return
                kind = header.get("kind")
                if kind == "partial" and isinstance(header.get("text"), str):
                    self.emit(Partial(role, header["text"], int(header.get("tokens") or 0)))
                elif kind == "input_refused":
                    reason = str(header.get("reason"))
                    self.outcome.refusals[assignment_id] = reason
                    log.warning("job %s: node %s refused the input: %s", self.job_id, role, reason)
                    if reason.startswith("content_policy:"):
                        raise PeerRefused(422, "content_policy", f"a node refused the input under the subnet's content policy: {reason}")
                    return
                elif kind == "result":
                    await self._received(entry, header, payload)
                    return
        finally:
            self.answers.pop(assignment_id, None)
            await peer.close()

    async def _received(self, entry: dict[str, Any], header: dict[str, Any], payload: bytes) -> None:
        """Check a result against what its node signed, keep it, and tell the registry: the
        committed hash confirms delivery; another hash is a dispute (the registry then
        fetches the node's bytes and judges them itself)."""
        assignment_id = str(entry["assignment_id"])
        actual = protocol.sha256_hex(payload)
        checked = result_checked(self.job, entry, header, actual)
        if not checked:
            log.warning("job %s: the result over node %s's channel does not check out", self.job_id, entry.get("role"))
        self.outcome.received.append(Received(assignment_id, str(entry.get("role", "")), header, payload, checked))
        # A task of its own: the job may settle on the other node's confirmation while this
        # one still waits for its node's commit, and ending the exchange must not cut it off.
        task = asyncio.create_task(self._confirm(entry, actual))
        self.confirming.add(task)
        task.add_done_callback(self.confirming.discard)

    async def _confirm(self, entry: dict[str, Any], result_hash: str) -> None:
        """Once: a confirmation that overtakes the node's commit (it sends the user its bytes
        first) is kept by the registry and judged when the commit arrives."""
        body = {"assignment_id": str(entry["assignment_id"]), "result_hash": result_hash}
        try:
            await asyncio.to_thread(self.request, "POST", f"/api/v1/jobs/{self.job_id}/delivered/", json=body)
        except HttpError as exc:
            log.warning("job %s: confirming node %s's result failed: %s", self.job_id, entry.get("role"), exc)

    async def _fall_back(self, reason: str) -> None:
        """No channel: send the input through the registry (once per job), which relays it to
        every node still waiting; channels not open yet are abandoned."""
        if self.outcome.fallback_reason:
            return
        if not self.relay_fallback:
            raise PeerRefused(409, reason, "no data channel opened and relay_fallback is off")
        self.outcome.fallback_reason = reason
        await asyncio.to_thread(
            self.request, "POST", f"/api/v1/jobs/{self.job_id}/inputs/", json={"inputs": self.inputs, "reason": reason}
        )
        current = asyncio.current_task()
        for assignment_id, task in self.tasks.items():
            if task is not current and assignment_id not in self.outcome.opened:
                task.cancel()

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message, separators=(",", ":")))

    async def _stop_peers(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        with suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.confirming:
            await asyncio.wait(list(self.confirming), timeout=CONFIRM_WAIT_S)


def result_checked(job: dict[str, Any], entry: dict[str, Any], header: dict[str, Any], actual_hash: str) -> bool:
    """The bytes hash to the header's result_hash, for this job's input, and the node's
    session key (from `peers`) signed them as it signs a relay result."""
    try:
        shape = tuple(int(n) for n in header["shape"])
        signed = protocol.result_message(
            job_id=str(job["id"]),
            assignment_id=str(entry["assignment_id"]),
            contract_hash=str(job["contract_hash"]),
            input_hash=str(job["contract"]["input_hash"]),
            result_hash=actual_hash,
            shape=shape,
        )
    except (KeyError, TypeError, ValueError):
        return False
    return (
        header.get("result_hash") == actual_hash
        and header.get("input_hash") == job["contract"]["input_hash"]
        and header.get("assignment_id") == entry["assignment_id"]
        and protocol.signature_valid(str(entry.get("session_key_pub")), str(header.get("signature")), signed)
    )


def _parse(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, str):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None

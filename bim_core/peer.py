"""One end of a job's WebRTC data channel: the user's SDK offers, the node answers.

    user = Peer(ice_servers)                   node = Peer(ice_servers)
    offer = await user.offer()        ──────►  answer = await node.answer(offer)
    await user.accept_answer(answer)  ◄──────
    await user.wait_open(10)                   await node.wait_open(10)
    await user.send({"kind": "prompt"}, data)  header, data = await node.receive(60)

Signalling is not trickled: aiortc gathers every candidate (host, server-reflexive, relay)
before `offer()`/`answer()` return, so each SDP is complete and one message each way is the
whole exchange. A browser peer that trickles can still hand over its candidates one at a time
with `add_remote_candidate({"candidate": "candidate:...", "sdpMid": "0", "sdpMLineIndex": 0})`;
`{"candidate": ""}` (what a browser sends last) ends them.

Framing, normative (a browser implements the same on its RTCDataChannel):
- The channel is the one labelled "bim", ordered and reliable, made by the offerer.
- A message is one text frame, its header: a UTF-8 JSON object of at most 64 KiB with a string
  "kind", a non-negative integer "size" and any other fields; then exactly "size" bytes in
  binary frames of at most 16 KiB each (a message size every browser's SCTP stack delivers).
  "size" 0: no binary frames. A sender sends one message at a time.
- The receiver fails the connection with `PeerError` and closes it on: a header over 64 KiB or
  a "size" over its `max_message_bytes` (`too_large`); a header that is not such an object, a
  binary frame when no bytes are expected or over 16 KiB, more bytes than announced, or a
  header while bytes are still expected (`bad_frame`). It also refuses (`too_large`) a peer
  that leaves more than two messages' worth of bytes unread, so a flood cannot fill memory.
- `send()` writes the "size" field itself; `receive()` returns the header without it.

Relay-only (`relay_only=True`) is aiortc's own `RTCIceTransportPolicy.RELAY` (aiortc >= 1.16,
aioice's `TransportPolicy.RELAY`): only TURN relay candidates are gathered and the related
address is hidden, so the other end never learns this end's address. A relay-only peer with
no usable TURN allocation offers no candidate at all, and `wait_open` fails (`ice_failed`):
the caller then falls back to the registry relay.

Errors: `PeerError(code, detail)` with code `timeout` (wait_open, receive), `ice_failed` (ICE or
DTLS failed), `closed` (either end closed), `bad_sdp`, `bad_candidate`, `bad_frame`,
`too_large`. Local misuse (a header without "kind", a payload over this end's limit) raises
before anything is sent and leaves the connection usable.

`stats()` is synchronous (what it reads is already in memory): `bytes_sent`/`bytes_received`
count data channel payload, header and binary frames alike, as RTCDataChannelStats does in a
browser; `transport_bytes_*` count the DTLS transport's bytes (SCTP and DTLS overhead
included). `relayed` is true when either candidate of the selected pair is a TURN relay.

`allow_loopback()` is an explicit, process-wide opt-in for tests and one-machine demos: aioice
leaves 127.0.0.1 out of host candidates, so two peers on a machine without another interface
would find no pair. Production uses real interfaces, STUN and TURN.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aioice.ice
import aioice.turn
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError
from aiortc.sdp import candidate_from_sdp

LABEL = "bim"
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 16 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# send() waits while more than BUFFER_HIGH bytes are queued in aiortc and resumes below
# BUFFER_LOW: enough in flight to keep the link busy, little enough to bound memory.
BUFFER_HIGH = 1024 * 1024
BUFFER_LOW = 256 * 1024

# aioice's 256 KiB UDP receive buffer overflows at data channel speeds: measured here, 4 MiB
# cut drops from ~9,800 to 19 per 5 MB and ended 1-second SCTP stalls (notes/browser.md).
# The kernel caps it at net.core.rmem_max. Read by aioice each time it opens a socket (host
# and TURN), so setting it at import covers every peer this process makes.
aioice.turn.UDP_SOCKET_BUFFER_SIZE = 4 * 1024 * 1024

_SDP_ERRORS = (ValueError, AssertionError, IndexError, KeyError, InvalidAccessError, InvalidStateError)


class PeerError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def allow_loopback() -> None:
    """Make aioice offer a 127.0.0.1 host candidate too, for every peer made from now on in
    this process (tests, a one-machine demo). Idempotent."""
    gather = aioice.ice.get_host_addresses
    if getattr(gather, "bim_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = gather(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        return ["127.0.0.1", *addresses] if use_ipv4 else addresses

    with_loopback.bim_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = with_loopback


def configuration(ice_servers: list[dict], *, relay_only: bool = False) -> RTCConfiguration:
    """An aiortc configuration from `RTCIceServer` dicts (bim_core.ice.ice_servers). aiortc
    uses the first STUN and the first TURN URL it can (turn: over udp or tcp, turns: over
    tcp) and ignores the rest."""
    servers = []
    for server in ice_servers:
        urls = server["urls"]
        servers.append(
            RTCIceServer(
                urls=list(urls) if isinstance(urls, list | tuple) else [urls],
                username=server.get("username"),
                credential=server.get("credential"),
            )
        )
    if relay_only and not any(url.startswith(("turn:", "turns:")) for s in servers for url in s.urls):
        raise ValueError("relay_only needs a TURN server in ice_servers")
    # An empty list, never None: with None aiortc falls back to Google's public STUN server.
    return RTCConfiguration(
        iceServers=servers,
        iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL,
    )


class Peer:
    def __init__(
        self,
        ice_servers: list[dict],
        *,
        relay_only: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if max_message_bytes < 0:
            raise ValueError("max_message_bytes must not be negative")
        self.max_message_bytes = max_message_bytes
        self._pc = RTCPeerConnection(configuration(ice_servers, relay_only=relay_only))
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._pc.on("datachannel", self._on_datachannel)
        self._channel: RTCDataChannel | None = None
        self._settled = asyncio.Event()  # open, or failed before opening
        self._drained = asyncio.Event()  # aiortc's queue fell below BUFFER_LOW, or failure
        self._failure: PeerError | None = None
        self._inbox: asyncio.Queue[tuple[dict, bytes] | PeerError] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self._closing: asyncio.Future[None] | None = None
        self._final_stats: dict[str, Any] | None = None
        # The message being received: its header and the binary frames so far.
        self._header: dict | None = None
        self._parts: list[bytes] = []
        self._missing = 0
        self._unread = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def channel(self) -> RTCDataChannel | None:
        """The raw data channel (tests send malformed frames through it)."""
        return self._channel

    async def offer(self) -> dict:
        self._attach(self._pc.createDataChannel(LABEL, ordered=True))
        await self._pc.setLocalDescription(await self._pc.createOffer())
        return self._description()

    async def answer(self, offer: dict) -> dict:
        await self._set_remote(offer, "offer")
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        return self._description()

    async def accept_answer(self, answer: dict) -> None:
        await self._set_remote(answer, "answer")

    async def add_remote_candidate(self, candidate: dict) -> None:
        """A browser-style trickled candidate; an empty "candidate" ends them."""
        text = candidate.get("candidate") if isinstance(candidate, dict) else None
        if not isinstance(text, str):
            raise PeerError("bad_candidate", "a candidate is an object with a string 'candidate'")
        parsed = None
        if text:
            fields = text.removeprefix("candidate:").split()
            if len(fields) < 8 or fields[6] != "typ" or not all(fields[i].isdigit() for i in (1, 3, 5)):
                raise PeerError("bad_candidate", f"not an ICE candidate line: {text[:200]!r}")
            parsed = candidate_from_sdp(" ".join(fields))
            parsed.sdpMid = candidate.get("sdpMid")
            parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        try:
            await self._pc.addIceCandidate(parsed)  # None: end of candidates
        except _SDP_ERRORS as exc:  # a candidate after the end, one naming no section
            raise PeerError("bad_candidate", str(exc)) from exc

    async def wait_open(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._settled.wait(), timeout_s)
        except TimeoutError:
            raise PeerError("timeout", f"the data channel did not open within {timeout_s} s") from None
        self._raise_if_failed()

    async def send(self, header: dict, payload: bytes = b"") -> None:
        if not isinstance(header, dict) or not isinstance(header.get("kind"), str) or "size" in header:
            raise ValueError("a header is a dict with a string 'kind' and no 'size' (send() writes it)")
        if len(payload) > self.max_message_bytes:
            raise PeerError("too_large", f"{len(payload)} bytes is over this end's limit of {self.max_message_bytes}")
        # ASCII (json's default escaping), so its length in characters is its length in bytes.
        text = json.dumps({**header, "size": len(payload)}, separators=(",", ":"))
        if len(text) > MAX_HEADER_BYTES:
            raise PeerError("too_large", f"the header is over {MAX_HEADER_BYTES} bytes")
        async with self._send_lock:
            await self._send_frame(text, len(text))
            view = memoryview(payload)
            for start in range(0, len(view), MAX_FRAME_BYTES):
                frame = bytes(view[start : start + MAX_FRAME_BYTES])
                await self._send_frame(frame, len(frame))

    async def receive(self, timeout_s: float) -> tuple[dict, bytes]:
        """The next whole message; messages that arrived before a failure come first."""
        if self._inbox.empty() and self._failure is not None:
            self._raise_if_failed()
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout_s)
        except TimeoutError:
            raise PeerError("timeout", f"no message within {timeout_s} s") from None
        if isinstance(item, PeerError):
            self._raise_if_failed()
        header, payload = item
        self._unread -= len(payload)
        return header, payload

    def stats(self) -> dict[str, Any]:
        """See the module docstring. After close(), what they were when it closed."""
        if self._final_stats is not None:
            return self._final_stats
        pair = self._selected_pair()
        local = pair.local_candidate.type if pair else None
        remote = pair.remote_candidate.type if pair else None
        transport = self._transport_stats()
        return {
            "relayed": "relay" in (local, remote),
            "local_candidate": local,
            "remote_candidate": remote,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "transport_bytes_sent": transport.bytesSent if transport else 0,
            "transport_bytes_received": transport.bytesReceived if transport else 0,
        }

    async def close(self) -> None:
        self._fail(PeerError("closed", "closed by this end"))
        self._close_once()
        await asyncio.shield(self._closing)

    # Internals -------------------------------------------------------------------------

    def _description(self) -> dict:
        description = self._pc.localDescription
        # aiortc starts ICE only once it has a local candidate: without one (relay-only and
        # the TURN allocation refused) the connection would wait forever instead of failing.
        # The description still goes out: the other end, given no candidate, fails at once.
        if "\na=candidate:" not in description.sdp:
            self._fail(PeerError("ice_failed", "no local ICE candidate (relay-only: the TURN allocation failed)"))
        return {"type": description.type, "sdp": description.sdp}

    async def _set_remote(self, description: dict, expected: str) -> None:
        if not isinstance(description, dict) or description.get("type") != expected:
            raise PeerError("bad_sdp", f"expected an {expected}: an object with type {expected!r} and an sdp")
        sdp = description.get("sdp")
        if not isinstance(sdp, str):
            raise PeerError("bad_sdp", "the sdp is not a string")
        # aiortc accepts a description without media; without the data channel's section
        # there would be nothing to open, and the failure would only show as a timeout.
        if not re.search(r"^m=application ", sdp, re.MULTILINE):
            raise PeerError("bad_sdp", "the sdp has no data channel (m=application) section")
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=expected))
        except (*_SDP_ERRORS, InternalError) as exc:
            raise PeerError("bad_sdp", f"{type(exc).__name__}: {exc}") from exc

    def _attach(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.bufferedAmountLowThreshold = BUFFER_LOW
        channel.on("open", self._on_open)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._fail(PeerError("closed", "the data channel closed")))
        channel.on("bufferedamountlow", self._drained.set)
        if channel.readyState == "open":  # the answerer's channel arrives open
            self._on_open()

    def _on_open(self) -> None:
        self._settled.set()

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        # The protocol has exactly one channel, the offerer's "bim": anything else is closed
        # rather than read, so a second channel cannot interleave frames.
        if self._channel is None and channel.label == LABEL:
            self._attach(channel)
        else:
            channel.close()

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state == "failed":
            self._fail(PeerError("ice_failed", "no ICE candidate pair worked, or DTLS failed"))
        elif state == "closed":
            self._fail(PeerError("closed", "the peer connection closed"))

    def _fail(self, error: PeerError) -> None:
        """Record the first failure and wake everything that waits; later ones change nothing."""
        if self._failure is not None:
            return
        self._failure = error
        self._settled.set()
        self._drained.set()
        self._inbox.put_nowait(error)

    def _refuse(self, code: str, detail: str) -> None:
        """A frame broke the protocol: fail, and close the connection (from a task, since
        aiortc calls message handlers synchronously)."""
        self._fail(PeerError(code, detail))
        self._close_once()

    def _close_once(self) -> None:
        # aioice forgets the selected pair on close: keep the stats as they were.
        if self._closing is None:
            self._final_stats = self.stats()
            self._closing = asyncio.ensure_future(self._pc.close())

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise PeerError(self._failure.code, self._failure.detail)

    async def _send_frame(self, frame: str | bytes, size: int) -> None:
        self._raise_if_failed()
        if self._channel is None or self._channel.readyState != "open":
            raise PeerError("closed", "the data channel is not open")
        self._channel.send(frame)
        self.bytes_sent += size
        while self._channel.bufferedAmount > BUFFER_HIGH:
            # Cleared only now: bufferedamountlow fires on the way down through BUFFER_LOW,
            # which has to happen after this point since the amount is above BUFFER_HIGH.
            self._drained.clear()
            await self._drained.wait()
            self._raise_if_failed()

    def _on_message(self, frame: str | bytes) -> None:
        if self._failure is not None:
            return
        if isinstance(frame, str):
            self._on_header(frame)
        else:
            self._on_bytes(frame)

    def _on_header(self, text: str) -> None:
        size = len(text.encode())
        self.bytes_received += size
        if self._missing:
            return self._refuse("bad_frame", f"a header arrived with {self._missing} announced bytes still missing")
        if size > MAX_HEADER_BYTES:
            return self._refuse("too_large", f"a {size}-byte header is over {MAX_HEADER_BYTES} bytes")
        try:
            header = json.loads(text)
        except ValueError:
            return self._refuse("bad_frame", "a header is not JSON")
        if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
            return self._refuse("bad_frame", "a header is not a JSON object with a string 'kind'")
        announced = header.pop("size", None)
        if isinstance(announced, bool) or not isinstance(announced, int) or announced < 0:
            return self._refuse("bad_frame", "a header has no non-negative integer 'size'")
        if announced > self.max_message_bytes:
            return self._refuse("too_large", f"{announced} bytes announced, over the limit of {self.max_message_bytes}")
        if self._unread + announced > 2 * self.max_message_bytes:
            return self._refuse("too_large", "the peer sent more than two messages' worth that is still unread")
        self._header, self._parts, self._missing = header, [], announced
        self._unread += announced
        if announced == 0:
            self._deliver()

    def _on_bytes(self, frame: bytes) -> None:
        self.bytes_received += len(frame)
        if self._header is None:
            return self._refuse("bad_frame", "a binary frame arrived without a header announcing it")
        if len(frame) > MAX_FRAME_BYTES:
            return self._refuse("bad_frame", f"a {len(frame)}-byte binary frame is over {MAX_FRAME_BYTES} bytes")
        if len(frame) > self._missing:
            return self._refuse("bad_frame", f"{len(frame)} bytes arrived where {self._missing} were announced")
        self._parts.append(frame)
        self._missing -= len(frame)
        if self._missing == 0:
            self._deliver()

    def _deliver(self) -> None:
        assert self._header is not None
        self._inbox.put_nowait((self._header, b"".join(self._parts)))
        self._header, self._parts = None, []

    def _selected_pair(self) -> aioice.ice.CandidatePair | None:
        # Neither aiortc's getStats (media only) nor aioice has a public accessor for the
        # selected pair: read aioice's nominated pair for the single component WebRTC uses.
        sctp = self._pc.sctp
        if sctp is None:
            return None
        connection = sctp.transport.transport._connection
        return getattr(connection, "_nominated", {}).get(1)

    def _transport_stats(self) -> Any:
        sctp = self._pc.sctp
        if sctp is None:
            return None
        report = sctp.transport._get_stats()
        return next((s for s in report.values() if s.type == "transport"), None)

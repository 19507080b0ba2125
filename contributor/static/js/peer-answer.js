// The answering end of one peer-to-peer job's WebRTC connection in this page (the user's
// client offers, docs/p2p.md §2): an RTCPeerConnection with the job's ICE servers, the
// answer to the user's offer, the user's trickled candidates, the "bim" data channel framed
// by ./datachannel.js, and the figures `result_commit` reports.
//
// Signalling: the answer goes out once ICE gathering is complete, as one SDP carrying every
// candidate, like the Python node's (aiortc gathers before answering). One message instead of
// one per candidate, on a socket whose every frame counts against the node's rate budget,
// and the user's SDK (aiortc) needs nothing more. Gathering is normally over in milliseconds
// (host candidates; STUN and TURN answer in one round trip); a server that never answers
// would hold it for Chromium's own timeout, so after GATHER_MAX_MS the answer goes with what
// it has, and candidates found later are trickled as `rtc_ice` rather than lost.
//
// The constructor is the parameter `RTCPeerConnectionImpl` (the browser's by default), so
// `transportFigures` and the connection's life can be read under Node with another.

import { FrameError, FramedChannel, LABEL } from "./datachannel.js";

export const GATHER_MAX_MS = 3000;

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** ICE servers as the registry sends them (W3C RTCIceServer); anything else dropped, so one
 * malformed entry does not make the constructor throw. */
export function iceServersOf(raw) {
  if (!Array.isArray(raw)) return [];
  return raw.filter((s) => isObject(s) && (typeof s.urls === "string" || (Array.isArray(s.urls) && s.urls.every((u) => typeof u === "string"))))
    .map(({ urls, username, credential }) => ({ urls, ...(username == null ? {} : { username, credential }) }));
}

/** `result_commit`'s `transport` figures from an RTCStatsReport (a Map of stats by id): the
 * selected candidate pair's candidate types (`relayed` when either is a TURN relay) and the
 * data channel's payload bytes (RTCDataChannelStats: headers and binary frames, what
 * bim_core.peer counts). Chromium drops a channel's stats once it closes, and the user may
 * close it as soon as it has read the result: then the bytes are `counted` ({sent,
 * received}: ./datachannel.js counts the same bytes), and `bytes_from` says which. */
export function transportFigures(report, { label = LABEL, counted = null } = {}) {
  const stats = [...report.values()];
  const byId = new Map(stats.map((s) => [s.id, s]));
  const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  // Chromium names the pair on the transport; the spec's `selected` and a nominated,
  // succeeded pair cover other browsers.
  const pair = (transport && byId.get(transport.selectedCandidatePairId))
    || stats.find((s) => s.type === "candidate-pair" && s.selected)
    || stats.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
  const local = pair ? byId.get(pair.localCandidateId)?.candidateType ?? null : null;
  const remote = pair ? byId.get(pair.remoteCandidateId)?.candidateType ?? null : null;
  const channel = stats.find((s) => s.type === "data-channel" && s.label === label);
  const bytes = channel
    ? { bytes_sent: Number(channel.bytesSent) || 0, bytes_received: Number(channel.bytesReceived) || 0, bytes_from: "getStats" }
    : { bytes_sent: counted?.sent ?? 0, bytes_received: counted?.received ?? 0, bytes_from: counted ? "framing" : "none" };
  return { relayed: local === "relay" || remote === "relay", local_candidate: local, remote_candidate: remote, ...bytes };
}

export class PeerAnswer {
  /** `onCandidate(init)` hears of candidates found after the answer went (to trickle);
   * `onChannel(framed)` of the "bim" channel once it is open. */
  constructor({
    iceServers, relayOnly = false, onCandidate = () => {}, onChannel = () => {}, RTCPeerConnectionImpl = globalThis.RTCPeerConnection, gatherMaxMs = GATHER_MAX_MS,
  }) {
    if (typeof RTCPeerConnectionImpl !== "function") throw new Error("this browser has no WebRTC (RTCPeerConnection)");
    this.pc = new RTCPeerConnectionImpl({ iceServers: iceServersOf(iceServers), iceTransportPolicy: relayOnly ? "relay" : "all" });
    this.gatherMaxMs = gatherMaxMs;
    this.trickling = false; // the answer went before gathering completed: later candidates follow it
    this.closed = false;
    this.opened = false; // the "bim" channel opened
    this.framed = null;
    this.remoteSet = null; // resolves once the offer is set: candidates wait for it
    this.pc.onicecandidate = (event) => {
      if (!this.trickling) return; // in the answer's SDP
      // null: gathering ended; `{candidate: ""}` says so to the other end (bim_core.peer).
      onCandidate(event.candidate ? event.candidate.toJSON() : { candidate: "" });
    };
    this.pc.ondatachannel = (event) => {
      const channel = event.channel;
      // The protocol has exactly one channel, the offerer's "bim": anything else is closed
      // unread, so a second channel cannot interleave frames.
      if (this.framed || channel.label !== LABEL) { channel.close(); return; }
      this.framed = new FramedChannel(channel);
      const open = () => { this.opened = true; onChannel(this.framed); };
      if (channel.readyState === "open") open();
      else channel.addEventListener("open", open, { once: true });
    };
  }

  /** The complete answer SDP to the user's offer. */
  async answer(offerSdp) {
    this.remoteSet = this.pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
    await this.remoteSet;
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    await this.gathered();
    this.trickling = this.pc.iceGatheringState !== "complete";
    return this.pc.localDescription.sdp;
  }

  gathered() {
    if (this.pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, this.gatherMaxMs);
      const pc = this.pc;
      function done() {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
      function check() { if (pc.iceGatheringState === "complete") done(); }
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  /** A candidate the user trickled ({candidate, sdpMid, sdpMLineIndex}; an empty candidate
   * ends them). Waits for the offer to be set; a bad one is refused by the browser. */
  async addRemoteCandidate(candidate) {
    if (!isObject(candidate) || typeof candidate.candidate !== "string") throw new Error("a candidate is an object with a string 'candidate'");
    if (!this.remoteSet) throw new Error("a candidate before the offer");
    await this.remoteSet;
    const { candidate: line, sdpMid = null, sdpMLineIndex = null } = candidate;
    await this.pc.addIceCandidate({ candidate: line, sdpMid, sdpMLineIndex });
  }

  /** `result_commit`'s transport figures (transportFigures), read at once after the last
   * frame is queued: Chromium counts a message's bytes when it is sent, and the channel's
   * stats are gone once it closes. */
  async figures() {
    const counted = this.framed ? { sent: this.framed.bytesSent, received: this.framed.bytesReceived } : null;
    if (this.closed) return transportFigures(new Map(), { counted });
    return transportFigures(await this.pc.getStats(), { counted });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.framed?.fail(new FrameError("closed", "closed by this end"));
    try { this.pc.close(); } catch { /* already closed */ }
  }
}

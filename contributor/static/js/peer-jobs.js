// This page's half of peer-to-peer jobs (docs/p2p.md), as bim_node/p2p.py is the Python
// node's: a `job` offered with `transport: "p2p"` carries no inputs; the page waits for its
// user's `rtc_offer` (relayed by the registry), answers it (./peer-answer.js), reads the
// `input` frame from the data channel and checks it (./jobs.js); once the work loop
// (./session.js) has computed it, the result goes back over the same channel and only a
// signed commit to the registry, the bytes kept (./result-store.js) in case the registry asks
// for them (`upload_request`). A text job streams its tokens to the user over the channel
// first (`partial` frames, sendPartial). When the user falls back to the registry relay (`job_inputs`)
// the job runs as a relay job; when no input comes by the deadline the page gives the job
// back (`input_not_received`, which costs it nothing).
//
// One PeerJobs per socket (./session.js), like the Python node's per connection; nothing
// here awaits on the socket's inbox, so heartbeats and other jobs never wait for a peer.

import { FrameError, jsonFromBytes } from "./datachannel.js";
import { JobRefused, checkP2pInputs } from "./jobs.js";
import { GATHER_MAX_MS, PeerAnswer } from "./peer-answer.js";

export const INPUT_NOT_RECEIVED = "input_not_received";
// The fields of a relay `result` that the data channel's `result` header carries (§3).
export const RESULT_HEADER_FIELDS = ["job_id", "assignment_id", "input_hash", "result_hash", "shape", "encoding", "signature"];
// The user's SDK falls back to the relay after BIM_P2P_CONNECT_S (10 s): an answer whose
// channel has not opened by then is given up, and the page waits for another offer or the
// relay's `job_inputs`.
export const CONNECT_TIMEOUT_MS = 10_000;
export const INPUT_TIMEOUT_MS = 120_000;
// After the result, how long the channel stays for the user to read it and close: closing at
// once could drop bytes still in flight.
export const LINGER_MS = 30_000;
// A user that stops reading must not hold the work loop: the send gives up after this long
// (the registry then fetches the committed bytes itself when the user does not confirm them).
export const SEND_TIMEOUT_MS = 60_000;
// A user's rtc_offer can reach the page before the job it is for: the registry lists the
// job's nodes to its user once the assignment is committed, and the offer's way (user socket
// -> registry -> page) is not ordered with the job's (worker -> page). Such an offer is kept
// this long, EARLY_OFFERS at most, for its job to arrive (as the Python node does).
export const EARLY_OFFER_TTL_MS = 30_000;
export const EARLY_OFFERS = 64;

const sinceMs = (start) => Math.round(performance.now() - start);

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => reject(new FrameError("timeout", `${what} took over ${ms} ms`)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export class PeerJobs {
  /** `send(message)` writes to the registry socket; `enqueue(job)` hands a job with its
   * texts to the work loop; `store` keeps committed results (it outlives the socket);
   * `log(text, cls)` and `record(figures)` (one entry per job whose input came over a
   * channel: set-up times and bytes) are for the person and the tests. */
  constructor({
    send, enqueue, store, log = () => {}, record = () => {}, RTCPeerConnectionImpl = globalThis.RTCPeerConnection,
    connectTimeoutMs = CONNECT_TIMEOUT_MS, inputTimeoutMs = INPUT_TIMEOUT_MS, lingerMs = LINGER_MS, gatherMaxMs = GATHER_MAX_MS,
  }) {
    Object.assign(this, { send, enqueue, store, log, record, RTCPeerConnectionImpl, connectTimeoutMs, inputTimeoutMs, lingerMs, gatherMaxMs });
    this.waiting = new Map(); // assignment id -> offered job whose input has not come
    this.earlyOffers = new Map(); // assignment id -> { at, sdp }: offers ahead of their job
    this.open = new Map(); // assignment id -> {peer, framed, figures}: input came, result goes back there
    this.lingering = new Set();
  }

  // Offers and signalling --------------------------------------------------------------

  /** A checked peer-to-peer offer (checkP2pOffer): wait for its input, until the deadline
   * or INPUT_TIMEOUT_MS, whichever is sooner. */
  offered(job, iceServers, iceTransportPolicy = "all") {
    const waitMs = Math.max(0, Math.min(this.inputTimeoutMs, job.deadline === null ? Infinity : job.deadline - Date.now()));
    const relayOnly = iceTransportPolicy === "relay"; // the operator's choice: TURN candidates only
    const waiting = { job, iceServers, relayOnly, peer: null, done: false };
    waiting.timer = setTimeout(() => this.inputMissing(waiting), waitMs);
    this.waiting.set(job.assignmentId, waiting);
    const early = this.earlyOffers.get(job.assignmentId);
    this.earlyOffers.delete(job.assignmentId);
    if (early && Date.now() - early.at <= EARLY_OFFER_TTL_MS) this.answer(waiting, early.sdp);
  }

  onRtcOffer(message) {
    const assignmentId = String(message.assignment_id);
    if (typeof message.sdp !== "string") return;
    const waiting = this.waiting.get(assignmentId);
    if (!waiting) {
      // Ahead of its job, most likely: kept for it, the oldest dropped first.
      this.log(`an rtc_offer for ${assignmentId.slice(0, 8)} came before its job: kept for it`);
      this.earlyOffers.delete(assignmentId);
      this.earlyOffers.set(assignmentId, { at: Date.now(), sdp: message.sdp });
      while (this.earlyOffers.size > EARLY_OFFERS) this.earlyOffers.delete(this.earlyOffers.keys().next().value);
      return;
    }
    // A new offer replaces the attempt before it (the user's client retried).
    waiting.peer?.close();
    waiting.peer = null;
    this.answer(waiting, message.sdp);
  }

  async answer(waiting, sdp) {
    const { job } = waiting;
    const started = performance.now();
    const figures = { assignmentId: job.assignmentId, jobId: job.jobId };
    let peer;
    try {
      peer = new PeerAnswer({
        iceServers: waiting.iceServers,
        relayOnly: waiting.relayOnly,
        RTCPeerConnectionImpl: this.RTCPeerConnectionImpl,
        gatherMaxMs: this.gatherMaxMs,
        onCandidate: (candidate) => this.send({ type: "rtc_ice", assignment_id: job.assignmentId, candidate }),
        onChannel: (framed) => {
          figures.offerToOpenMs = sinceMs(started);
          this.readInput(waiting, peer, framed, figures, started);
        },
      });
      waiting.peer = peer;
      const answer = await peer.answer(sdp);
      if (waiting.peer !== peer || waiting.done) return;
      figures.offerToAnswerMs = sinceMs(started);
      this.send({ type: "rtc_answer", assignment_id: job.assignmentId, sdp: answer });
    } catch (err) {
      // Whatever one offer breaks (a bad SDP, bad ICE servers), the job still waits for
      // another offer or the relay's fallback.
      this.log(`job ${job.jobId.slice(0, 8)}: answering the user's offer failed: ${err.message || err}`, "warn");
      this.giveUpPeer(waiting, peer);
      return;
    }
    setTimeout(() => {
      if (waiting.peer === peer && !peer.opened) {
        this.log(`job ${job.jobId.slice(0, 8)}: no data channel within ${this.connectTimeoutMs} ms; waiting for the relay`, "warn");
        this.giveUpPeer(waiting, peer);
      }
    }, this.connectTimeoutMs);
  }

  giveUpPeer(waiting, peer) {
    peer?.close();
    if (waiting.peer === peer) waiting.peer = null;
  }

  /** A trickled candidate of the user (a browser user trickles; aiortc's are in its SDP). */
  onRtcIce(message) {
    const waiting = this.waiting.get(String(message.assignment_id));
    if (!waiting?.peer) return;
    waiting.peer.addRemoteCandidate(message.candidate)
      .catch((err) => this.log(`ignored a candidate for ${waiting.job.jobId.slice(0, 8)}: ${err.message || err}`, "warn"));
  }

  /** The user sent the input through the registry after all: run it as a relay job, unless
   * it already came over the channel. */
  onJobInputs(message) {
    const waiting = this.taken(String(message.assignment_id));
    if (!waiting) {
      this.log(`job_inputs for ${String(message.assignment_id).slice(0, 8)}, which waits for no input: ignored`, "warn");
      return;
    }
    this.giveUpPeer(waiting, waiting.peer);
    this.log(`job ${waiting.job.jobId.slice(0, 8)}: input came through the registry`);
    this.accept({ ...waiting.job, transport: "relay" }, message.inputs, null);
  }

  onCancel(assignmentId) {
    const waiting = this.taken(assignmentId);
    if (waiting) this.giveUpPeer(waiting, waiting.peer);
    this.release(assignmentId);
  }

  /** The registry asks for a committed result's bytes (and its input, `with_inputs`): the
   * relay `result` as it was signed. Returns what was sent, or null when it is not kept. */
  onUploadRequest(message) {
    const assignmentId = String(message.assignment_id);
    const kept = this.store.get(assignmentId);
    if (!kept) {
      this.log(`upload of ${assignmentId.slice(0, 8)} asked for (${message.reason}), but its result is no longer kept`, "bad");
      return null;
    }
    const upload = { ...kept.message, ...(message.with_inputs ? { inputs: kept.inputs } : {}) };
    this.log(`uploading ${assignmentId.slice(0, 8)}'s result (${message.reason})`);
    this.send(upload);
    return upload;
  }

  // The input -------------------------------------------------------------------------

  /** The waiting job, no longer waiting; null when it was not (or no longer) waiting. */
  taken(assignmentId) {
    const waiting = this.waiting.get(assignmentId);
    if (!waiting || waiting.done) return null;
    waiting.done = true;
    clearTimeout(waiting.timer);
    this.waiting.delete(assignmentId);
    return waiting;
  }

  async readInput(waiting, peer, framed, figures, started) {
    const { job } = waiting;
    let message;
    try {
      do {
        message = await framed.receive(this.inputTimeoutMs);
        if (message.header.kind !== "input") this.log(`job ${job.jobId.slice(0, 8)}: ignored a ${message.header.kind} frame before the input`, "warn");
      } while (message.header.kind !== "input");
    } catch (err) {
      // A failed channel leaves the job waiting for another offer or the relay's fallback.
      if (waiting.peer === peer) this.log(`job ${job.jobId.slice(0, 8)}: the user's channel failed (${err.message || err})`, "warn");
      this.giveUpPeer(waiting, peer);
      return;
    }
    if (waiting.peer !== peer || !this.taken(job.assignmentId)) { peer.close(); return; }
    figures.offerToInputMs = sinceMs(started);
    figures.inputBytes = message.payload.length;
    const link = { peer, framed, figures };
    const { header, payload } = message;
    if (header.job_id !== job.jobId || header.assignment_id !== job.assignmentId) {
      await this.refuse(job, link, new JobRefused("bad_input", "the input frame names another job or assignment"));
      return;
    }
    const inputs = jsonFromBytes(payload);
    if (inputs === null) {
      await this.refuse(job, link, new JobRefused("bad_input", "the input is not UTF-8 JSON"));
      return;
    }
    await this.accept(job, inputs, link);
  }

  async accept(job, inputs, link) {
    let ready;
    try {
      ready = await checkP2pInputs(job, inputs);
    } catch (err) {
      if (!(err instanceof JobRefused)) throw err;
      // The user's input that breaks its own contract goes to the registry as evidence: it
      // judges the refusal on it (docs/p2p.md §3), keeping only an input with the contract's hash.
      const evidence = err.reason !== "bad_input_hash" && inputs !== null && typeof inputs === "object" && !Array.isArray(inputs);
      await this.refuse(job, link, err, evidence ? inputs : null);
      return;
    }
    if (link) this.open.set(job.assignmentId, link);
    this.log(`job ${job.jobId.slice(0, 8)}: input received ${link ? "peer to peer" : "through the registry"}`);
    this.enqueue(ready);
  }

  async refuse(job, link, refusal, evidence = null) {
    this.log(`job ${job.jobId.slice(0, 8)}: refused its input: ${refusal.message}`, "warn");
    if (link) {
      try {
        await withTimeout(link.framed.send({ kind: "input_refused", reason: refusal.reason }), SEND_TIMEOUT_MS, "input_refused");
      } catch { /* the user is gone: the registry hears of it all the same */ }
      this.linger(link);
    }
    const failed = { type: "job_failed", assignment_id: job.assignmentId, reason: refusal.reason };
    if (evidence !== null) failed.inputs = evidence;
    this.send(failed);
  }

  inputMissing(waiting) {
    const { job } = waiting;
    if (!this.taken(job.assignmentId)) return;
    this.giveUpPeer(waiting, waiting.peer);
    this.log(`job ${job.jobId.slice(0, 8)}: no input from its user in time`, "warn");
    this.send({ type: "job_failed", assignment_id: job.assignmentId, reason: INPUT_NOT_RECEIVED });
  }

  // The result ------------------------------------------------------------------------

  /** A text job's streamed text (./session.js partialSender's `partial` message) to its user
   * over the channel, as a `partial` frame (docs/p2p.md §3), never to the registry, which
   * must not see a peer-to-peer job's output. Framed sends queue in order, so every partial
   * reaches the user before the `result`. Unsigned and unanswered: a partial that cannot go
   * (no open channel, a header over 64 KiB, the user gone) is left out, as the Python node's
   * is. Returns whether it was queued. */
  sendPartial(message) {
    const link = this.open.get(String(message.assignment_id));
    if (!link) return false;
    try {
      link.framed.send({ kind: "partial", text: message.text, tokens: message.tokens }).catch(() => {});
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      return false;
    }
    return true;
  }

  /** Send a computed result to the user over its channel and keep it for an upload; returns
   * the commit for the registry (docs/p2p.md §4), which the caller sends as it sends a relay
   * result. `message` is the signed relay `result` (./jobs.js signedResult), `payload` its
   * bytes. */
  async deliver(job, message, payload) {
    this.store.put(job.assignmentId, message, job.inputs);
    const link = this.open.get(job.assignmentId);
    this.open.delete(job.assignmentId);
    let transport = { relayed: false, bytes_sent: 0, bytes_received: 0 };
    if (link) {
      const header = { kind: "result" };
      for (const name of RESULT_HEADER_FIELDS) header[name] = message[name];
      try {
        await withTimeout(link.framed.send(header, payload), SEND_TIMEOUT_MS, "sending the result");
      } catch (err) {
        // Committed all the same: the registry fetches the bytes when the user does not
        // confirm them (docs/p2p.md §4, case 2).
        this.log(`job ${job.jobId.slice(0, 8)}: the result did not reach the user over the channel: ${err.message || err}`, "warn");
      }
      // At once: the user closes the channel as soon as it has the result (peer-answer.js).
      const figures = await link.peer.figures().catch(() => null);
      if (figures) transport = { relayed: figures.relayed, bytes_sent: figures.bytes_sent, bytes_received: figures.bytes_received };
      // The same object stays in the record: linger() adds when the connection closed.
      Object.assign(link.figures, figures, { resultBytes: payload.length, counted: { sent: link.framed.bytesSent, received: link.framed.bytesReceived } });
      this.record(link.figures);
      this.linger(link);
    }
    const commit = { ...message, type: "result_commit", size: payload.length, transport };
    delete commit.data;
    return commit;
  }

  /** A job that ends without a result (compute error, cancelled, past its deadline). */
  release(assignmentId) {
    const link = this.open.get(assignmentId);
    this.open.delete(assignmentId);
    link?.peer.close();
  }

  /** Close the connection once the user has closed the channel (it read everything), or
   * after `lingerMs`. */
  linger(link) {
    const { peer, framed, figures } = link;
    const started = performance.now();
    this.lingering.add(peer);
    const until = async () => {
      try {
        for (;;) await framed.receive(this.lingerMs); // until the user closes: a FrameError
      } catch { /* closed, or lingered long enough */ }
    };
    withTimeout(until(), this.lingerMs, "lingering").catch(() => {}).finally(() => {
      peer.close();
      this.lingering.delete(peer);
      figures.closedAfterMs = sinceMs(started);
    });
  }

  /** The socket ended: stop waiting and close every connection. */
  close() {
    for (const id of [...this.waiting.keys()]) {
      const waiting = this.taken(id);
      if (waiting) this.giveUpPeer(waiting, waiting.peer);
    }
    for (const id of [...this.open.keys()]) this.release(id);
    for (const peer of this.lingering) peer.close();
    this.lingering.clear();
  }
}

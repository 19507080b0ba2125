// The node websocket as this page speaks it, like the Python node (bim_node/client.py):
// challenge → hello with a fresh certified session key → welcome → ready, then the
// registry's benchmark and jobs, one at a time, answered with session-signed results;
// heartbeats; reconnection with capped backoff; the close codes and errors after which
// retrying cannot help (docs/protocol.md §4, §6.1, §7).
//
// No DOM: what the person sees goes through `view` (./view.js in the page, a recorder in
// tests/js/connection.test.mjs), what tests and the curious read through `state`
// (window.bim). The socket class is a parameter so Node can drive the whole machine. The
// work each socket carries is ./session.js's.

import { JobRefused, benchmarkTask, checkJob, checkP2pOffer, taskItems } from "./jobs.js";
import { sessionKeyCertified } from "./keystore.js";
import { LOST_ON_RECONNECT, PROTOCOL, SUBNET_PAUSED } from "./protocol.js";
import { ResultStore } from "./result-store.js";
import { Session, errorText } from "./session.js";

// Close codes after which reconnecting cannot help (docs/protocol.md §6.1).
export const FATAL_CLOSE = {
  4401: "the registry did not accept this session (log in again)",
  4001: "the registry rejected this browser's hello signature",
  4003: "the registry does not know this browser's node for your account",
  4409: "this node connected from another tab or window; this one stopped",
  4403: "this node is banned for a while after repeated strikes (wrong or missing results)",
};
// Errors answered to `ready` that need the person, not a retry.
const FATAL_ERRORS = new Set(["license_not_accepted", "unknown_subnet", "model_mismatch"]);
const DEFAULT_HEARTBEAT_S = 10;
const BUSY_RESEND_MS = 500;
// Peer-to-peer jobs' figures kept in state.peerJobs for the curious and the tests.
const PEER_FIGURES_KEPT = 50;

/** Capped exponential backoff with jitter (§7): 1 s × 2^failures, at most 60 s, times a
 * random factor in [0.5, 1). */
export const reconnectDelayMs = (failures, random = Math.random) =>
  Math.min(60_000, 1000 * 2 ** failures) * (0.5 + random() / 2);

export class NodeConnection {
  /** `state` holds nodeId, key (the long-term pair), env, subnet and engine when connect()
   * is first called; `url` is the websocket's; `onComputed({kind, texts, ms})` hears of
   * every model call (./session.js). */
  constructor({
    state, view, url, WebSocketImpl = globalThis.WebSocket, RTCPeerConnectionImpl = globalThis.RTCPeerConnection, onComputed = () => {},
  }) {
    Object.assign(this, { state, view, url, WebSocketImpl, RTCPeerConnectionImpl, onComputed, current: null, failures: 0, reconnectTimer: null });
    this.disconnectWaiters = [];
    // Committed peer-to-peer results outlive a socket: an upload may be asked for after a
    // reconnect (./result-store.js).
    this.resultStore = new ResultStore();
  }

  log(text, cls) { this.state.log.push(this.view.log(text, cls)); }

  peerFigures(figures) {
    const kept = (this.state.peerJobs ??= []);
    kept.push(figures);
    kept.splice(0, kept.length - PEER_FIGURES_KEPT);
  }

  setPhase(text, dot) { this.state.phase = text; this.view.showConnection(text, dot); }

  count(name) {
    this.state.counts[name] += 1;
    this.view.showCount(name, this.state.counts[name]);
  }

  connect() {
    const { state } = this;
    if (state.paused || state.stopped || this.current) return;
    clearTimeout(this.reconnectTimer);
    this.setPhase("connecting", "busy");
    // No ?token=: the registry authenticates this socket by the session cookie (and Origin).
    const session = new Session(new this.WebSocketImpl(this.url), {
      engine: state.engine,
      report: {
        view: this.view, log: (text, cls) => this.log(text, cls), count: (name) => this.count(name),
        computed: (work) => this.onComputed(work), peer: (figures) => this.peerFigures(figures),
      },
      store: this.resultStore,
      RTCPeerConnectionImpl: this.RTCPeerConnectionImpl,
      // Pausing waits for the running task; the socket closes once the queue is dry.
      onIdle: () => { if (state.paused && this.current === session) session.ws.close(1000, "paused"); },
    });
    this.current = session;
    state.connects += 1;
    session.ws.onmessage = (event) => {
      let message = null;
      try { message = JSON.parse(event.data); } catch { /* not JSON: ignored below */ }
      if (message === null || typeof message !== "object" || typeof message.type !== "string") {
        this.log("ignored a frame that is not a JSON object", "warn");
        return;
      }
      // Computing happens apart (the work loop), so the inbox never waits for a model run.
      session.inbox = session.inbox.then(() => this.handle(session, message)).catch((err) => this.log(`error: ${errorText(err)}`, "bad"));
    };
    session.ws.onclose = (event) => this.closed(session, event);
    session.ws.onerror = () => this.log("websocket error", "warn");
  }

  /** Finish the running job, leave queued ones to the registry, then close with 1000.
   * `why` is for the log ("this tab is hidden", ...). */
  pause(why = "") {
    this.state.paused = true;
    clearTimeout(this.reconnectTimer);
    if (!this.current) {
      // Between connections (waiting to reconnect), or not connected yet: nothing to finish.
      this.log(`paused${why ? ` (${why})` : ""}`);
      this.setPhase("paused", "off");
      return;
    }
    this.log(`paused${why ? ` (${why})` : ""}: finishing the running job, then disconnecting`);
    this.current.abandonQueued();
    if (!this.current.working) this.current.ws.close(1000, "paused");
    this.setPhase("pausing", "busy");
  }

  /** A new connection, so a new session key. */
  resume() {
    this.state.paused = false;
    this.log("resumed");
    this.failures = 0;
    // Not registered yet (the model is still loading): the page connects once it is.
    if (!this.state.nodeId) { this.setPhase("starting", "busy"); return; }
    this.connect();
  }

  /** Resolves once no socket is open (at once when none is): a paused node's running job
   * has been answered and its socket closed, so the engine may be swapped. */
  disconnected() {
    if (!this.current) return Promise.resolve();
    return new Promise((resolve) => this.disconnectWaiters.push(resolve));
  }

  stop(reason) {
    this.state.stopped = reason;
    this.setPhase("stopped", "off");
    this.view.notice("Contributing stopped", reason);
    this.log(reason, "bad");
    this.view.pauseButton({ enabled: false });
    if (this.current) this.current.ws.close(1000, "stopping");
  }

  closed(session, event) {
    session.open = false;
    clearInterval(session.heartbeat);
    if (this.current === session) {
      this.current = null;
      for (const resolve of this.disconnectWaiters.splice(0)) resolve();
    }
    // Jobs queued or running die with the socket: the next session key could not sign them,
    // and the registry re-dispatches them. So do the peer connections of its jobs.
    session.abandonQueued();
    session.peerJobs.close();
    if (FATAL_CLOSE[event.code]) {
      this.stop(`Closed by the registry (${event.code}): ${FATAL_CLOSE[event.code]}.`);
      return;
    }
    if (this.state.paused || this.state.stopped) {
      this.setPhase(this.state.paused ? "paused" : "stopped", "off");
      return;
    }
    const delay = reconnectDelayMs(this.failures);
    this.failures += 1;
    this.setPhase(`disconnected (${event.code}); reconnecting in ${(delay / 1000).toFixed(1)} s`, "off");
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  async handle(session, message) {
    switch (message.type) {
      case "challenge": return this.onChallenge(session, message);
      case "welcome": return this.onWelcome(session, message);
      case "ready_ok":
        this.setPhase(`ready on ${message.subnet}`, "on");
        this.log(`ready on ${message.subnet}`);
        return;
      case "benchmark": return this.onBenchmark(session, message);
      case "benchmark_ok":
        this.state.benchmark = { passed: true, itemsPerS: message.items_per_s, p50: message.latency_p50_ms, id: message.benchmark_id };
        this.view.showBenchmark("passed: outputs match the registry's reference", "ok");
        this.view.showBenchmarkScore(message.items_per_s, message.latency_p50_ms);
        this.log(`benchmark passed: ${Number(message.items_per_s).toFixed(1)} ${this.state.engine?.taskType === "text" ? "prompts" : "texts"}/s`, "ok");
        return;
      case "job": return this.onJob(session, message);
      // Peer-to-peer jobs (docs/p2p.md): none of these waits on a peer, so the inbox moves on.
      case "rtc_offer": return session.peerJobs.onRtcOffer(message);
      case "rtc_ice": return session.peerJobs.onRtcIce(message);
      case "job_inputs": return session.peerJobs.onJobInputs(message);
      case "upload_request": {
        const upload = session.peerJobs.onUploadRequest(message);
        if (upload) session.unacknowledged.set(String(upload.assignment_id), { message: upload, resent: false, upload: true });
        return;
      }
      case "subnet_state": return this.onSubnetState(message);
      case "cancel":
        session.cancelled.add(String(message.assignment_id));
        session.peerJobs.onCancel(String(message.assignment_id));
        this.view.jobMark(String(message.assignment_id), "cancelled");
        return;
      case "result_ok": {
        const id = String(message.assignment_id);
        const pending = session.unacknowledged.get(id);
        // An upload's acknowledgement is not a second accepted job.
        if (session.unacknowledged.delete(id) && !pending.upload) this.count("accepted");
        if (!pending?.upload) this.view.jobMark(id, "submitted");
        return;
      }
      case "error": return this.onError(session, message);
      default: return; // pong, and message types nodes do not know
    }
  }

  async onChallenge(session, message) {
    if (message.protocol !== PROTOCOL) {
      this.stop(`The registry speaks ${message.protocol}, this page ${PROTOCOL}: reload the page.`);
      return;
    }
    if (typeof message.nonce !== "string") throw new Error("challenge without a nonce");
    const { nodeId, key, env } = this.state;
    // A fresh session key for every connection; the long-term key certifies it.
    const certified = await sessionKeyCertified(key.privateKey, nodeId, message.nonce);
    session.sessionKey = certified.privateKey;
    session.send({ type: "hello", node_id: nodeId, session_key_pub: certified.sessionKeyPub, signature: certified.signature, env });
  }

  onWelcome(session, message) {
    const { subnet, engine } = this.state;
    this.failures = 0;
    const offered = (message.subnets || []).find((s) => s && s.slug === subnet.slug);
    if (!offered) { this.stop(`The registry does not serve ${subnet.slug} to this node.`); return; }
    if (offered.model_checksum !== engine.modelChecksum) {
      this.stop(`${subnet.slug} now runs another model (${String(offered.model_checksum).slice(0, 12)}…): reload the page to fetch it.`);
      return;
    }
    // Work of earlier sockets died with them (see closed()): give back what the registry
    // still counts as ours now, so no user waits for its deadline.
    const listed = Array.isArray(message.assignments) ? message.assignments : [];
    for (const id of listed.slice(0, 4096)) {
      if (typeof id === "string") session.send({ type: "job_failed", assignment_id: id, reason: LOST_ON_RECONNECT });
    }
    this.state.subnetState = offered.state || "active";
    const seconds = Number(message.heartbeat_s) > 0 ? Number(message.heartbeat_s) : DEFAULT_HEARTBEAT_S;
    session.heartbeat = setInterval(() => session.send({ type: "heartbeat" }), seconds * 1000);
    this.setPhase("connected; reporting ready", "busy");
    session.send({ type: "ready", subnet: subnet.slug, model_checksum: engine.modelChecksum, max_concurrent: 1 });
    this.view.pauseButton({ enabled: true });
    if (this.state.subnetState === "paused") this.showSubnetPaused();
  }

  /** The operator paused, resumed or retired a subnet (docs/protocol.md §4.2): a paused
   * subnet's new offers are declined (work already taken finishes), a retired one ends
   * contributing. The socket stays open while paused, to hear of the resume. */
  onSubnetState(message) {
    const { subnet, engine } = this.state;
    if (message.subnet !== subnet.slug) return;
    if (message.state === "retired") {
      this.stop(`${subnet.slug} was retired by its operator: there is nothing left to serve.`);
      return;
    }
    if (message.state === "active" && message.model_checksum && message.model_checksum !== engine.modelChecksum) {
      this.stop(`${subnet.slug} resumed with another model (${String(message.model_checksum).slice(0, 12)}…): reload the page to fetch it.`);
      return;
    }
    const before = this.state.subnetState;
    this.state.subnetState = message.state;
    if (message.state === "paused") this.showSubnetPaused();
    else if (message.state === "active" && before !== "active") {
      this.setPhase(`ready on ${subnet.slug}`, "on");
      this.view.notice("Subnet resumed", `${subnet.slug} takes jobs again.`);
      this.log(`${subnet.slug} resumed by its operator`, "ok");
    }
  }

  showSubnetPaused() {
    const { slug } = this.state.subnet;
    this.setPhase(`${slug} paused by its operator`, "off");
    this.view.notice("Subnet paused", `${slug} is paused by its operator: no new jobs until it resumes. This page stays connected.`);
    this.log(`${slug} paused by its operator: declining new jobs`, "warn");
  }

  onBenchmark(session, message) {
    const task = benchmarkTask(message, this.state.engine?.taskType);
    if (!task) {
      this.log("ignored a malformed benchmark", "warn");
      return;
    }
    this.view.showBenchmark(`queued: ${task.runs} runs of ${taskItems(task)} ${task.taskType === "text" ? "prompt" : "texts"}`);
    session.enqueue(task);
  }

  async onJob(session, message) {
    const assignmentId = message.assignment_id;
    if (typeof assignmentId !== "string") { this.log("dropped a job without an assignment id", "warn"); return; }
    const { engine } = this.state;
    if (this.state.subnetState === "paused") {
      // An offer that crossed the pause on the wire: given back, at no cost to this node.
      session.send({ type: "job_failed", assignment_id: assignmentId, reason: SUBNET_PAUSED });
      return;
    }
    // A peer-to-peer offer has no inputs: its user brings them over a data channel.
    const p2p = message.transport === "p2p" && !("inputs" in message);
    const loaded = { modelChecksum: engine.modelChecksum, tokenizerChecksum: engine.manifest?.tokenizer_checksum, taskType: engine.taskType };
    try {
      const job = await (p2p ? checkP2pOffer : checkJob)(message, loaded);
      this.view.jobAdd(job);
      if (!p2p) { session.enqueue(job); return; }
      session.peerJobs.offered(job, message.ice_servers, message.ice_transport_policy);
      this.view.jobMark(assignmentId, "waiting for input");
    } catch (err) {
      if (!(err instanceof JobRefused)) throw err;
      this.log(`refused job ${assignmentId.slice(0, 8)}: ${err.message}`, "warn");
      session.failJob(assignmentId, err.reason);
    }
  }

  onError(session, message) {
    const id = message.assignment_id == null ? null : String(message.assignment_id);
    const pending = id ? session.unacknowledged.get(id) : undefined;
    if (message.code === "busy" && pending && !pending.resent) {
      // Nothing was recorded: the same signed result once more, after a short pause.
      pending.resent = true;
      this.log("registry busy; sending the result again", "warn");
      setTimeout(() => session.send(pending.message), BUSY_RESEND_MS);
      return;
    }
    if (message.code === "benchmark_refused") {
      this.state.benchmark = { passed: false, reason: message.detail };
      this.view.showBenchmark(`refused: ${message.detail}`, "bad");
    }
    if (!id && FATAL_ERRORS.has(message.code)) {
      this.stop(`The registry refused this node: ${message.code} (${message.detail}).`);
      return;
    }
    if (id) { session.unacknowledged.delete(id); this.view.jobMark(id, `refused: ${message.code}`); }
    this.log(`registry error ${message.code}${id ? ` (${id.slice(0, 8)})` : ""}: ${message.detail}`, "warn");
  }
}

// One websocket session of the node (./connection.js opens and closes them): its session
// key, and the work the registry sends over it, run one task at a time on the engine
// (max_concurrent 1: the model already uses every thread it has) and answered with messages
// that session key signs. Everything here dies with the socket: the next session key could
// not sign these results, and the registry re-dispatches the jobs (docs/protocol.md §4.4).
// Peer-to-peer jobs wait for their input in ./peer-jobs.js, join the same work loop once it
// came, and their result goes back to the user with a commit to the registry.

import { buildBenchmarkResult, computeTask, signedResult } from "./jobs.js";
import { PeerJobs } from "./peer-jobs.js";
import { roundMs } from "./protocol.js";
import { unitOf } from "./task-families.js";

const SOCKET_OPEN = 1; // WebSocket.OPEN
// Streamed text (`partial`) at most this often per job, as the Python node (bim_node/jobs.py).
export const PARTIAL_INTERVAL_MS = 100;
// docs/protocol.md §4.3: a partial's text is at most this long.
const PARTIAL_MAX_CHARS = 64_000;

export const errorText = (err) => String(err?.message || err);

/** "3 texts", "1 image": a task's items in its family's unit. */
export function itemsText(task) {
  const unit = unitOf(task.taskType);
  return `${task.items} ${task.items === 1 ? unit.replace(/s$/, "") : unit}`;
}

/** The `onToken` of a text job: the text so far as a `partial` message, at most every
 * PARTIAL_INTERVAL_MS (unsigned and unanswered), for `send`: the registry, which shows it to
 * the job's user, or peer to peer the user's channel (./peer-jobs.js sendPartial). */
export function partialSender(job, send, now = () => performance.now()) {
  let last = -Infinity;
  return ({ text, count }) => {
    const at = now();
    if (at - last < PARTIAL_INTERVAL_MS) return;
    last = at;
    // Cut by code points, as the registry counts them: never half of a surrogate pair.
    const capped = text.length > PARTIAL_MAX_CHARS ? [...text].slice(0, PARTIAL_MAX_CHARS).join("") : text;
    send({ type: "partial", assignment_id: job.assignmentId, job_id: job.jobId, text: capped, tokens: count });
  };
}

export class Session {
  sessionKey = null; // set by the hello
  queue = []; // tasks from ./jobs.js: {kind: "job", ...} and {kind: "benchmark", ...}
  cancelled = new Set();
  unacknowledged = new Map(); // assignment id -> {message, resent}: results sent, not yet result_ok
  inbox = Promise.resolve(); // the registry's messages, handled one at a time in arrival order
  heartbeat = null;
  working = false;
  open = true;

  /** `report` is what the person sees: {view, log(text, cls), count(name), computed(work),
   * peer(figures)}, where `computed` hears of each model call's time ({kind:
   * "job"|"benchmark", items, ms}: the volunteer's daily limit and the speed on real jobs
   * count it) and `peer` of each peer-to-peer job's set-up times and bytes; `onIdle` runs
   * whenever the queue has run dry. `store` keeps committed peer-to-peer results across
   * sockets (./result-store.js). */
  constructor(ws, { engine, report, onIdle, store, RTCPeerConnectionImpl }) {
    Object.assign(this, { ws, engine, report, onIdle });
    this.peerJobs = new PeerJobs({
      send: (message) => this.send(message),
      enqueue: (job) => { report.view.jobMark(job.assignmentId, "queued"); this.enqueue(job); },
      store,
      log: report.log,
      record: (figures) => report.peer?.(figures),
      RTCPeerConnectionImpl,
    });
  }

  send(message) {
    if (this.open && this.ws.readyState === SOCKET_OPEN) this.ws.send(JSON.stringify(message));
  }

  enqueue(task) {
    this.queue.push(task);
    if (!this.working) this.work();
  }

  /** Drops the queued jobs (pause, or the socket closed): the registry re-dispatches them. */
  abandonQueued() {
    for (const task of this.queue) {
      if (task.kind !== "job") continue;
      this.peerJobs.release(task.assignmentId);
      this.report.view.jobMark(task.assignmentId, "abandoned");
    }
    this.queue.length = 0;
  }

  failJob(assignmentId, reason) {
    this.report.count("failed");
    this.report.view.jobMark(assignmentId, `failed: ${reason}`);
    this.send({ type: "job_failed", assignment_id: assignmentId, reason });
  }

  async work() {
    this.working = true;
    try {
      while (this.open && this.queue.length) {
        const task = this.queue.shift();
        if (task.kind === "benchmark") await this.runBenchmark(task);
        else await this.runJob(task);
      }
    } finally {
      this.working = false;
      this.onIdle();
    }
  }

  async runBenchmark(task) {
    const { view, log } = this.report;
    view.showBenchmark(`running: ${task.runs} runs of ${itemsText(task)}`);
    const timings = [];
    let output = null;
    try {
      for (let i = 0; i < task.runs; i++) {
        const started = performance.now();
        output = await computeTask(this.engine, task);
        const ms = performance.now() - started;
        timings.push(roundMs(ms));
        this.report.computed?.({ kind: "benchmark", items: task.items, ms });
      }
      const message = await buildBenchmarkResult(task, output, timings, this.sessionKey);
      view.showBenchmarkRuns(timings);
      view.showBenchmark("sent; the registry is checking the outputs");
      this.send(message);
    } catch (err) {
      view.showBenchmark(`failed to compute: ${errorText(err)}`, "bad");
      log(`benchmark failed: ${errorText(err)}`, "bad");
    }
  }

  async runJob(job) {
    const { view, log, count } = this.report;
    const id = job.assignmentId;
    // A peer-to-peer job that ends here without a result closes its channel at once.
    if (this.cancelled.has(id)) { this.peerJobs.release(id); return; }
    if (job.deadline !== null && job.deadline <= Date.now()) { this.peerJobs.release(id); this.failJob(id, "deadline_passed"); return; }
    view.jobMark(id, "computing");
    const started = performance.now();
    let signed;
    try {
      // Streamed text goes to the registry, or peer to peer to the user over the channel.
      const streamTo = job.transport === "p2p" ? (m) => this.peerJobs.sendPartial(m) : (m) => this.send(m);
      const output = await computeTask(this.engine, job, job.taskType === "text" ? partialSender(job, streamTo) : undefined);
      const ms = performance.now() - started;
      this.report.computed?.({ kind: "job", items: job.items, ms });
      signed = await signedResult(job, output, this.sessionKey, ms);
    } catch (err) {
      // An input the engine refused to read (an image that does not decode) is the job's
      // fault, not the engine's: refused as the Python node refuses it before computing.
      const refused = err?.code === "bad_input";
      log(`job ${job.jobId.slice(0, 8)} ${refused ? "refused" : "failed to compute"}: ${errorText(err)}`, "bad");
      this.peerJobs.release(id);
      this.failJob(id, refused ? (job.transport === "p2p" ? "bad_input" : "bad_message") : "compute_error");
      return;
    }
    if (this.cancelled.has(id)) { this.peerJobs.release(id); return; }
    if (!this.open) {
      // The socket (and its session key) went while this ran: the registry re-dispatches it.
      this.peerJobs.release(id);
      view.jobMark(id, "abandoned");
      return;
    }
    // Peer to peer: the bytes go to the user, the registry gets the signed commit.
    const p2p = job.transport === "p2p";
    const message = p2p ? await this.peerJobs.deliver(job, signed.message, signed.payload) : signed.message;
    this.unacknowledged.set(id, { message, resent: false });
    this.send(message);
    count("done");
    view.jobMark(id, "sent", message.elapsed_ms);
    const where = p2p ? "sent to its user, committed to the registry" : "signed and sent";
    const what = job.taskType === "text" ? `${message.shape[0]} tokens` : itemsText(job);
    log(`job ${job.jobId.slice(0, 8)} (${job.role}): ${what} in ${message.elapsed_ms} ms, ${where}`);
  }
}

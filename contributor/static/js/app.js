// BIM contributor dashboard: this browser as a node (docs/protocol.md, protocol bim/1).
//
// A long-term Ed25519 key (WebCrypto, non-extractable, kept in IndexedDB so the same
// browser is the same node on its next visit) is registered for the logged-in user; the
// engine (./engine.js: Service Worker model cache + onnxruntime-web in a Web Worker) loads
// the subnet's verified model; then the page speaks the node websocket exactly like the
// Python node (bim_node/client.py): hello with a fresh session key certified by
// the long-term key, ready, the registry's benchmark, jobs, results signed with the
// session key. Every hashed or signed byte string is built the way bim_core/protocol.py
// builds it; the pure functions below are exported so tests can check them against the
// protocol's worked example under Node.

export const PROTOCOL = "bim/1";
export const ENCODING = "f32le";

// Close codes after which reconnecting cannot help (docs/protocol.md §6.1).
const FATAL_CLOSE = {
  4401: "the registry did not accept this session (log in again)",
  4001: "the registry rejected this browser's hello signature",
  4003: "the registry does not know this browser's node for your account",
  4409: "this node connected from another tab or window; this one stopped",
};
// Errors answered to `ready` that need the person, not a retry.
const FATAL_ERRORS = new Set(["license_not_accepted", "unknown_subnet", "model_mismatch"]);
const enc = new TextEncoder();

// ------------------------------------------------------------------ protocol (pure)

/** UTF-8 JSON with sorted keys, no whitespace, non-ASCII as itself: what hashes cover. */
export function canonicalJson(value) {
  if (Array.isArray(value)) return "[" + value.map(canonicalJson).join(",") + "]";
  if (value !== null && typeof value === "object") {
    return "{" + Object.keys(value).sort()
      .map((k) => JSON.stringify(k) + ":" + canonicalJson(value[k])).join(",") + "}";
  }
  if (typeof value === "number" && !Number.isFinite(value)) throw new Error("NaN or infinity has no canonical JSON");
  if (typeof value === "string" && /[\uD800-\uDFFF]/.test(value.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, ""))) {
    throw new Error("a lone surrogate has no UTF-8 encoding");
  }
  if (value === undefined || typeof value === "function" || typeof value === "bigint") {
    throw new Error(`${typeof value} has no canonical JSON`);
  }
  return JSON.stringify(value);
}

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Standard alphabet with padding (RFC 4648 §4), never base64url. */
export function b64encode(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export const inputHash = (inputs) => sha256Hex(enc.encode(canonicalJson(inputs)));
export const contractHash = (contract) => sha256Hex(enc.encode(canonicalJson(contract)));

/** (rows, dim) float32, row-major, little-endian whatever the CPU: DataView fixes the order. */
export function encodeVectors(data, rows, dim) {
  if (data.length !== rows * dim) throw new Error(`${data.length} values do not make ${rows}x${dim}`);
  const view = new DataView(new ArrayBuffer(rows * dim * 4));
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) throw new Error("NaN or infinity in the vectors");
    view.setFloat32(i * 4, data[i], true);
  }
  return new Uint8Array(view.buffer);
}

export const helloMessage = (nodeId, nonce, sessionKeyPub) =>
  enc.encode(`${PROTOCOL}/hello\n${nodeId}\n${nonce}\n${sessionKeyPub}\n`);

export const resultMessage = (m) => enc.encode(
  `${PROTOCOL}/result\n${m.job_id}\n${m.assignment_id}\n${m.contract_hash}\n` +
  `${m.input_hash}\n${m.result_hash}\n${m.shape[0]}x${m.shape[1]}\n`);

/** Timings as sent in `timings_ms`, each printed with three decimals (Python's f"{t:.3f}"). */
export const benchmarkMessage = (m) => enc.encode(
  `${PROTOCOL}/benchmark\n${m.benchmark_id}\n${m.result_hash}\n${m.shape[0]}x${m.shape[1]}\n` +
  `${m.timings_ms.map((t) => t.toFixed(3)).join(",")}\n`);

/** A run time in ms with three decimals, at least 0.001 (the registry refuses zero). The
 * number travels as JSON and the registry re-prints it with three decimals, so rounding
 * here makes both sides sign the same string. */
export const roundMs = (ms) => Math.max(0.001, Math.round(ms * 1000) / 1000);

export async function signB64(privateKey, bytes) {
  return b64encode(new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, privateKey, bytes)));
}

export async function publicKeyB64(publicKey) {
  return b64encode(new Uint8Array(await crypto.subtle.exportKey("raw", publicKey)));
}

export async function newEd25519Key() {
  // Non-extractable: the private half never leaves WebCrypto (IndexedDB stores the CryptoKey).
  return crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
}

class JobRefused extends Error {
  constructor(reason, detail) { super(`${reason}: ${detail}`); this.reason = reason; }
}

/** The checks a node makes before spending compute (docs/protocol.md §4.4), in order. */
export async function checkJob(message, { modelChecksum, tokenizerChecksum }) {
  const { contract, contract_hash: cHash, inputs, job_id: jobId } = message;
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (!isObject(contract) || typeof cHash !== "string" || typeof jobId !== "string" || !isObject(inputs)) {
    throw new JobRefused("bad_message", "job lacks contract, contract_hash, job_id or inputs");
  }
  const texts = inputs.texts;
  if (!Array.isArray(texts) || !texts.length || !texts.every((t) => typeof t === "string")) {
    throw new JobRefused("bad_message", "inputs.texts must be a non-empty list of strings");
  }
  let actualInputHash, actualContractHash;
  try {
    actualInputHash = await inputHash(inputs);
    actualContractHash = await contractHash(contract);
  } catch (err) {
    throw new JobRefused("bad_message", String(err.message || err));
  }
  if (actualInputHash !== contract.input_hash) throw new JobRefused("bad_input_hash", "inputs do not hash to contract.input_hash");
  if (actualContractHash !== cHash) throw new JobRefused("bad_contract_hash", "contract does not hash to contract_hash");
  if (contract.job_id !== jobId) throw new JobRefused("bad_message", "contract.job_id differs from job_id");
  if (contract.model_checksum !== modelChecksum) throw new JobRefused("model_mismatch", "contract names another model");
  if (contract.tokenizer_checksum && tokenizerChecksum && contract.tokenizer_checksum !== tokenizerChecksum) {
    throw new JobRefused("model_mismatch", "contract names another tokenizer");
  }
  const deadline = message.deadline == null ? null : Date.parse(message.deadline);
  if (deadline !== null && Number.isNaN(deadline)) throw new JobRefused("bad_message", "deadline is not ISO 8601");
  return {
    kind: "job", assignmentId: message.assignment_id, jobId, role: String(message.role || ""),
    contract, contractHash: cHash, texts, deadline,
  };
}

/** Embed, check and sign one job's result with the connection's session key. */
export async function buildResult(job, output, sessionPrivateKey, elapsedMs) {
  const { data, rows, dim } = output;
  if (rows !== job.texts.length || !(dim > 0)) throw new Error(`compute returned ${rows}x${dim} for ${job.texts.length} texts`);
  const payload = encodeVectors(data, rows, dim);
  const resultHash = await sha256Hex(payload);
  const fields = {
    job_id: job.jobId, assignment_id: job.assignmentId, contract_hash: job.contractHash,
    input_hash: String(job.contract.input_hash), result_hash: resultHash, shape: [rows, dim],
  };
  return {
    type: "result", assignment_id: job.assignmentId, job_id: job.jobId, input_hash: fields.input_hash,
    result_hash: resultHash, shape: [rows, dim], encoding: ENCODING, data: b64encode(payload),
    elapsed_ms: Math.round(elapsedMs), signature: await signB64(sessionPrivateKey, resultMessage(fields)),
  };
}

export async function buildBenchmarkResult(benchmarkId, output, timings, sessionPrivateKey) {
  const { data, rows, dim } = output;
  const payload = encodeVectors(data, rows, dim);
  const resultHash = await sha256Hex(payload);
  const fields = { benchmark_id: benchmarkId, result_hash: resultHash, shape: [rows, dim], timings_ms: timings };
  return {
    type: "benchmark_result", benchmark_id: benchmarkId, timings_ms: timings, shape: [rows, dim],
    encoding: ENCODING, data: b64encode(payload), result_hash: resultHash,
    signature: await signB64(sessionPrivateKey, benchmarkMessage(fields)),
  };
}

/** OS family as the protocol names it (§3.3). */
export function osFamily(platform) {
  const p = String(platform || "").toLowerCase();
  if (p.includes("android")) return "android";
  if (/iphone|ipad|ipod|\bios\b/.test(p)) return "ios";
  if (p.includes("cros") || p.includes("chrome os")) return "chromeos";
  if (p.includes("mac")) return "macos";
  if (p.includes("win")) return "windows";
  if (p.includes("linux") || p.includes("x11")) return "linux";
  return "unknown";
}

// ------------------------------------------------------------------ key storage

const DB_NAME = "bim-contributor";
const KEY_STORE = "keys";

function idbOpen() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(KEY_STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function idbRequest(db, mode, fn) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(KEY_STORE, mode);
    const request = fn(tx.objectStore(KEY_STORE));
    tx.oncomplete = () => resolve(request.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/** The browser's long-term node key: made once, kept as a non-extractable CryptoKey. */
async function nodeKeyLoadOrCreate(username) {
  const db = await idbOpen();
  // One key per account on this browser: a key belongs to one owner in the registry.
  const name = `node-key:${username}`;
  try {
    let stored = await idbRequest(db, "readonly", (s) => s.get(name));
    if (!stored) {
      const pair = await newEd25519Key();
      stored = { privateKey: pair.privateKey, publicKey: pair.publicKey, created: new Date().toISOString() };
      await idbRequest(db, "readwrite", (s) => s.put(stored, name));
      stored.fresh = true;
    }
    return { ...stored, publicKeyB64: await publicKeyB64(stored.publicKey) };
  } finally {
    db.close();
  }
}

// ------------------------------------------------------------------ the page

const $ = (id) => document.getElementById(id);
const config = () => JSON.parse($("bim-config").textContent);

// What tests and the curious can read: window.bim mirrors the dashboard's state.
const state = {
  phase: "starting", nodeId: null, subnet: null, engine: null, env: null, paused: false, stopped: null,
  benchmark: null, model: null, jobs: new Map(), counts: { done: 0, accepted: 0, failed: 0 },
  balances: null, verified: 0, disagreed: 0, connects: 0, log: [],
};

function log(text, cls = "") {
  const line = `${new Date().toISOString().slice(11, 19)} ${text}`;
  state.log.push(line);
  const list = $("log");
  if (!list) return;
  const li = document.createElement("li");
  li.textContent = line;
  if (cls) li.className = cls;
  list.prepend(li);
  while (list.children.length > 60) list.lastChild.remove();
}

function notice(title, text, kind = "blocking") {
  const box = $("notice");
  box.hidden = false;
  box.className = `card wide notice ${kind}`;
  $("notice-title").textContent = title;
  $("notice-text").textContent = text;
}

function setText(id, text, cls) {
  const el = $(id);
  if (!el) return;
  el.textContent = text;
  if (cls !== undefined) el.className = cls;
}

function setConnection(text, dot) {
  state.phase = text;
  setText("conn-state", text);
  $("conn-dot").className = `dot ${dot}`;
}

const credits = (micro) => `${(micro / 1e6).toFixed(6).replace(/\.?0+$/, "")} credits`;

async function capabilities() {
  const caps = { ed25519: false, wasm: typeof WebAssembly === "object", isolated: self.crossOriginIsolated === true,
    webgpu: typeof navigator.gpu !== "undefined", subtle: typeof crypto !== "undefined" && !!crypto.subtle };
  if (caps.subtle) {
    try {
      const pair = await newEd25519Key();
      const sig = await crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, enc.encode("probe"));
      caps.ed25519 = await crypto.subtle.verify({ name: "Ed25519" }, pair.publicKey, sig, enc.encode("probe"));
    } catch { caps.ed25519 = false; }
  }
  setText("cap-ed25519", caps.ed25519 ? "yes" : "missing", caps.ed25519 ? "ok" : "bad");
  setText("cap-wasm", caps.wasm ? "yes" : "missing", caps.wasm ? "ok" : "bad");
  setText("cap-isolated", caps.isolated ? "yes (WASM threads)" : "no (single-threaded WASM)", caps.isolated ? "ok" : "warn");
  let adapter = null;
  if (caps.webgpu) {
    try { adapter = await navigator.gpu.requestAdapter(); } catch { adapter = null; }
  }
  caps.webgpuAdapter = Boolean(adapter);
  setText("cap-webgpu", adapter ? `adapter: ${adapter.info?.vendor || "unknown vendor"}` : caps.webgpu ? "no adapter" : "not available",
    adapter ? "ok" : "muted");
  return caps;
}

function requirementsMissing(caps) {
  if (!caps.subtle) {
    return "WebCrypto is not available: open this page over https:// (or http://127.0.0.1 / http://localhost).";
  }
  if (!caps.ed25519) {
    return "This browser's WebCrypto has no Ed25519, which signs every result. Use a current Chrome, Edge, Firefox or Safari.";
  }
  if (!caps.wasm) return "This browser has no WebAssembly, which runs the model.";
  return null;
}

async function gpuFamily(engine) {
  if (engine.gpuFamily) return String(engine.gpuFamily).toLowerCase();
  if (engine.backend !== "webgpu") return "none";
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return String(adapter?.info?.vendor || "unknown").toLowerCase() || "unknown";
  } catch { return "unknown"; }
}

async function loadEngine(subnet) {
  const { createEngine } = await import("./engine.js");
  setText("model-phase", "fetching the manifest");
  const engine = await createEngine({
    manifestUrl: subnet.manifest_url,
    // The engine refuses a manifest naming another model than the one the registry lists.
    expectedChecksum: subnet.model_checksum,
    onProgress: ({ phase, done, total, fromCache }) => {
      const labels = { manifest: "fetching the manifest", chunks: "fetching and verifying chunks",
        load: "loading the model", ready: "ready" };
      setText("model-phase", `${labels[phase] || phase}${total ? ` ${done}/${total}` : ""}${fromCache ? " (cache)" : ""}`);
      const bar = $("model-progress");
      if (total) { bar.max = total; bar.value = done; }
    },
  });
  if (engine.modelChecksum !== subnet.model_checksum) {
    await engine.close?.();
    throw new Error(`the loaded model ${engine.modelChecksum} is not the subnet's ${subnet.model_checksum}`);
  }
  const cache = engine.cache || {};
  state.model = { checksum: engine.modelChecksum, fromCache: !!cache.fromCache, chunkRequests: cache.chunkRequests, bytes: cache.bytes };
  setText("model-phase", "verified and loaded", "ok");
  const bar = $("model-progress");
  bar.max = 1; bar.value = 1;
  setText("model-cache", cache.fromCache
    ? `from this browser's cache (${cache.chunkRequests ?? 0} chunk downloads)`
    : `downloaded ${cache.chunkRequests ?? "?"} chunks${cache.bytes ? `, ${(cache.bytes / 2 ** 20).toFixed(1)} MiB` : ""}, now cached`);
  setText("model-checksum", `${engine.modelChecksum.slice(0, 16)}…`);
  setText("backend", `${engine.backend}${engine.threads ? `, ${engine.threads} thread${engine.threads > 1 ? "s" : ""}` : ""} (${engine.runtime})`);
  return engine;
}

async function registerNode(cfg, key, env) {
  const response = await fetch(cfg.register_url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": $("csrf").value },
    body: JSON.stringify({ public_key: key.publicKeyB64, subnets: [state.subnet.slug], env }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`registration refused (${response.status}): ${body.detail || body.code || "?"}`);
  return body.id;
}

// ------------------------------------------------------------------ the websocket

class Connection {
  constructor(ws) {
    this.ws = ws;
    this.sessionKey = null;
    this.queue = [];
    this.cancelled = new Set();
    this.unacknowledged = new Map();
    this.inbox = Promise.resolve();
    this.heartbeat = null;
    this.working = false;
    this.open = true;
  }
  send(message) {
    if (this.open && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }
}

let current = null;
let failures = 0;
let reconnectTimer = null;

function socketUrl(path) {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
}

function connect() {
  if (state.paused || state.stopped || current) return;
  clearTimeout(reconnectTimer);
  setConnection("connecting", "busy");
  // No ?token=: the registry authenticates this socket by the session cookie (and Origin).
  const conn = new Connection(new WebSocket(socketUrl(config().socket_path)));
  current = conn;
  state.connects += 1;
  conn.ws.onmessage = (event) => {
    let message = null;
    try { message = JSON.parse(event.data); } catch { /* not JSON: ignored below */ }
    if (message === null || typeof message !== "object" || typeof message.type !== "string") {
      log("ignored a frame that is not a JSON object", "warn");
      return;
    }
    // One message at a time, in arrival order; computing happens apart (work loop).
    conn.inbox = conn.inbox.then(() => handle(conn, message)).catch((err) => log(`error: ${err.message || err}`, "bad"));
  };
  conn.ws.onclose = (event) => closed(conn, event);
  conn.ws.onerror = () => log("websocket error", "warn");
}

function closed(conn, event) {
  conn.open = false;
  clearInterval(conn.heartbeat);
  if (current === conn) current = null;
  // Jobs queued or running die with the socket: the next session key could not sign them,
  // and the registry re-dispatches them.
  for (const job of conn.queue) if (job.kind === "job") markJob(job.assignmentId, "abandoned");
  conn.queue.length = 0;
  if (FATAL_CLOSE[event.code]) {
    stop(`Closed by the registry (${event.code}): ${FATAL_CLOSE[event.code]}.`);
    return;
  }
  if (state.paused || state.stopped) {
    setConnection(state.paused ? "paused" : "stopped", "off");
    return;
  }
  const delay = Math.min(60_000, 1000 * 2 ** failures) * (0.5 + Math.random() / 2);
  failures += 1;
  setConnection(`disconnected (${event.code}); reconnecting in ${(delay / 1000).toFixed(1)} s`, "off");
  reconnectTimer = setTimeout(connect, delay);
}

function stop(reason) {
  state.stopped = reason;
  setConnection("stopped", "off");
  notice("Contributing stopped", reason);
  log(reason, "bad");
  $("pause").disabled = true;
  if (current) current.ws.close(1000, "stopping");
}

async function handle(conn, message) {
  switch (message.type) {
    case "challenge": return onChallenge(conn, message);
    case "welcome": return onWelcome(conn, message);
    case "ready_ok":
      setConnection(`ready on ${message.subnet}`, "on");
      log(`ready on ${message.subnet}`);
      return;
    case "benchmark": return onBenchmark(conn, message);
    case "benchmark_ok":
      state.benchmark = { passed: true, itemsPerS: message.items_per_s, p50: message.latency_p50_ms, id: message.benchmark_id };
      setText("bench-state", "passed: outputs match the registry's reference", "ok");
      setText("bench-ips", `${Number(message.items_per_s).toFixed(1)} texts/s`);
      setText("bench-p50", `${Number(message.latency_p50_ms).toFixed(0)} ms`);
      log(`benchmark passed: ${Number(message.items_per_s).toFixed(1)} texts/s`, "ok");
      return;
    case "job": return onJob(conn, message);
    case "cancel":
      conn.cancelled.add(String(message.assignment_id));
      markJob(String(message.assignment_id), "cancelled");
      return;
    case "result_ok": {
      const id = String(message.assignment_id);
      if (conn.unacknowledged.delete(id)) {
        state.counts.accepted += 1;
        setText("jobs-accepted", String(state.counts.accepted));
      }
      markJob(id, "submitted");
      return;
    }
    case "error": return onError(conn, message);
    case "pong": return;
    default: return; // nodes ignore message types they do not know
  }
}

async function onChallenge(conn, message) {
  if (message.protocol !== PROTOCOL) {
    stop(`The registry speaks ${message.protocol}, this page ${PROTOCOL}: reload the page.`);
    return;
  }
  if (typeof message.nonce !== "string") throw new Error("challenge without a nonce");
  // A fresh session key for every connection; the long-term key certifies it.
  const session = await newEd25519Key();
  conn.sessionKey = session.privateKey;
  const sessionPub = await publicKeyB64(session.publicKey);
  conn.send({
    type: "hello", node_id: state.nodeId, session_key_pub: sessionPub,
    signature: await signB64(state.key.privateKey, helloMessage(state.nodeId, message.nonce, sessionPub)),
    env: state.env,
  });
}

function onWelcome(conn, message) {
  failures = 0;
  const offered = (message.subnets || []).find((s) => s && s.slug === state.subnet.slug);
  if (!offered) { stop(`The registry does not serve ${state.subnet.slug} to this node.`); return; }
  if (offered.model_checksum !== state.engine.modelChecksum) {
    stop(`${state.subnet.slug} now runs another model (${String(offered.model_checksum).slice(0, 12)}…): reload the page to fetch it.`);
    return;
  }
  const seconds = Number(message.heartbeat_s) > 0 ? Number(message.heartbeat_s) : 10;
  conn.heartbeat = setInterval(() => conn.send({ type: "heartbeat" }), seconds * 1000);
  setConnection("connected; reporting ready", "busy");
  conn.send({ type: "ready", subnet: state.subnet.slug, model_checksum: state.engine.modelChecksum, max_concurrent: 1 });
  $("pause").disabled = false;
}

function onBenchmark(conn, message) {
  const texts = message.inputs?.texts;
  const runs = message.runs;
  if (!(Array.isArray(texts) && texts.length && texts.every((t) => typeof t === "string")) ||
      !(Number.isInteger(runs) && runs >= 1 && runs <= 20)) {
    log("ignored a malformed benchmark", "warn");
    return;
  }
  setText("bench-state", `queued: ${runs} runs of ${texts.length} texts`);
  enqueue(conn, { kind: "benchmark", benchmarkId: String(message.benchmark_id), texts, runs });
}

async function onJob(conn, message) {
  const assignmentId = message.assignment_id;
  if (typeof assignmentId !== "string") { log("dropped a job without an assignment id", "warn"); return; }
  try {
    const job = await checkJob(message, { modelChecksum: state.engine.modelChecksum, tokenizerChecksum: state.engine.manifest?.tokenizer_checksum });
    addJobRow(job);
    enqueue(conn, job);
  } catch (err) {
    if (!(err instanceof JobRefused)) throw err;
    log(`refused job ${assignmentId.slice(0, 8)}: ${err.message}`, "warn");
    failJob(conn, assignmentId, err.reason);
  }
}

function onError(conn, message) {
  const id = message.assignment_id == null ? null : String(message.assignment_id);
  const pending = id ? conn.unacknowledged.get(id) : undefined;
  if (message.code === "busy" && pending && !pending.resent) {
    // Nothing was recorded: the same signed result once more, after a short pause.
    pending.resent = true;
    log("registry busy; sending the result again", "warn");
    setTimeout(() => conn.send(pending.message), 500);
    return;
  }
  if (message.code === "benchmark_refused") {
    state.benchmark = { passed: false, reason: message.detail };
    setText("bench-state", `refused: ${message.detail}`, "bad");
  }
  if (!id && FATAL_ERRORS.has(message.code)) {
    stop(`The registry refused this node: ${message.code} (${message.detail}).`);
    return;
  }
  if (id) { conn.unacknowledged.delete(id); markJob(id, `refused: ${message.code}`); }
  log(`registry error ${message.code}${id ? ` (${id.slice(0, 8)})` : ""}: ${message.detail}`, "warn");
}

function failJob(conn, assignmentId, reason) {
  state.counts.failed += 1;
  setText("jobs-failed", String(state.counts.failed));
  markJob(assignmentId, `failed: ${reason}`);
  conn.send({ type: "job_failed", assignment_id: assignmentId, reason });
}

function enqueue(conn, task) {
  conn.queue.push(task);
  if (!conn.working) work(conn);
}

/** One task at a time (max_concurrent 1): the model already uses every thread it has. */
async function work(conn) {
  conn.working = true;
  try {
    while (conn.open && conn.queue.length) {
      const task = conn.queue.shift();
      if (task.kind === "benchmark") await runBenchmark(conn, task);
      else await runJob(conn, task);
    }
  } finally {
    conn.working = false;
    if (state.paused && current === conn) conn.ws.close(1000, "paused");
  }
}

async function runBenchmark(conn, task) {
  setText("bench-state", `running: ${task.runs} runs of ${task.texts.length} texts`);
  const timings = [];
  let output = null;
  try {
    for (let i = 0; i < task.runs; i++) {
      const started = performance.now();
      output = await state.engine.embed(task.texts);
      timings.push(roundMs(performance.now() - started));
    }
    const message = await buildBenchmarkResult(task.benchmarkId, output, timings, conn.sessionKey);
    setText("bench-runs", timings.map((t) => t.toFixed(0)).join(", ") + " ms");
    setText("bench-state", "sent; the registry is checking the outputs");
    conn.send(message);
  } catch (err) {
    setText("bench-state", `failed to compute: ${err.message || err}`, "bad");
    log(`benchmark failed: ${err.message || err}`, "bad");
  }
}

async function runJob(conn, job) {
  if (conn.cancelled.has(job.assignmentId)) return;
  if (job.deadline !== null && job.deadline <= Date.now()) { failJob(conn, job.assignmentId, "deadline_passed"); return; }
  markJob(job.assignmentId, "computing");
  const started = performance.now();
  let message;
  try {
    const output = await state.engine.embed(job.texts);
    message = await buildResult(job, output, conn.sessionKey, performance.now() - started);
  } catch (err) {
    log(`job ${job.jobId.slice(0, 8)} failed to compute: ${err.message || err}`, "bad");
    failJob(conn, job.assignmentId, "compute_error");
    return;
  }
  if (conn.cancelled.has(job.assignmentId)) return;
  if (!conn.open) {
    // The socket (and its session key) went while this ran: the registry re-dispatches it.
    markJob(job.assignmentId, "abandoned");
    return;
  }
  conn.unacknowledged.set(job.assignmentId, { message, resent: false });
  conn.send(message);
  state.counts.done += 1;
  setText("jobs-done", String(state.counts.done));
  const row = state.jobs.get(job.assignmentId);
  if (row) row.elapsedMs = message.elapsed_ms;
  markJob(job.assignmentId, "sent");
  log(`job ${job.jobId.slice(0, 8)} (${job.role}): ${job.texts.length} text${job.texts.length > 1 ? "s" : ""} in ${message.elapsed_ms} ms, signed and sent`);
}

// ------------------------------------------------------------------ jobs view and ledger

function addJobRow(job) {
  const body = $("jobs-body");
  body.querySelector("tr.empty")?.remove();
  const tr = document.createElement("tr");
  tr.dataset.assignment = job.assignmentId;
  for (const text of [job.jobId.slice(0, 8), job.role, String(job.texts.length), "–", "queued"]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  tr.children[0].title = job.jobId;
  body.prepend(tr);
  while (body.children.length > 50) body.lastChild.remove();
  state.jobs.set(job.assignmentId, { jobId: job.jobId, status: "queued", tr, elapsedMs: null });
}

function markJob(assignmentId, status) {
  const row = state.jobs.get(assignmentId);
  if (!row) return;
  // Registry verdicts are final: a late local event never overwrites them.
  if (["agreed", "disagreed"].includes(row.status)) return;
  row.status = status;
  const cells = row.tr.children;
  if (row.elapsedMs != null) cells[3].textContent = `${row.elapsedMs} ms`;
  const label = { agreed: "verified ✓", submitted: "accepted, awaiting partner", sent: "sent" }[status] || status;
  cells[4].textContent = label;
  cells[4].className = `state-${status.split(":")[0]}`;
}

async function refreshStatus() {
  const cfg = config();
  try {
    const url = cfg.status_url + (state.nodeId ? `?node=${encodeURIComponent(state.nodeId)}` : "");
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const body = await response.json();
    state.balances = body.balances;
    setText("earnings", credits(body.balances.earnings_micro));
    setText("escrow", credits(body.balances.escrow_micro));
    if (body.node) {
      state.verified = body.node.counts.agreed || 0;
      state.disagreed = body.node.counts.disagreed || 0;
      setText("jobs-verified", String(state.verified));
      setText("jobs-disagreed", String(state.disagreed));
      for (const a of body.node.assignments) {
        if (["agreed", "disagreed", "lost", "cancelled"].includes(a.state)) markJob(a.assignment_id, a.state);
      }
      const link = body.node.subnets.find((s) => s.slug === state.subnet?.slug);
      if (link && link.items_per_s && !state.benchmark) {
        setText("bench-ips", `${link.items_per_s.toFixed(1)} texts/s (last benchmark)`);
        setText("bench-p50", `${link.latency_p50_ms.toFixed(0)} ms`);
      }
    }
  } catch { /* the next poll tries again */ }
}

function togglePause() {
  const button = $("pause");
  if (!state.paused) {
    state.paused = true;
    clearTimeout(reconnectTimer);
    button.textContent = "Resume";
    log("paused: finishing the running job, then disconnecting");
    // Queued jobs go back to the registry when the socket closes; a running one finishes first.
    if (current) {
      for (const job of current.queue) if (job.kind === "job") markJob(job.assignmentId, "abandoned");
      current.queue.length = 0;
      if (!current.working) current.ws.close(1000, "paused");
    }
    setConnection("pausing", "busy");
  } else {
    state.paused = false;
    button.textContent = "Pause";
    log("resumed");
    failures = 0;
    connect();
  }
}

async function main() {
  window.bim = state;
  const cfg = config();
  const caps = await capabilities();
  const missing = requirementsMissing(caps);
  if (missing) {
    state.phase = "unsupported";
    notice("This browser cannot contribute", missing);
    return;
  }
  if (!caps.isolated) {
    const note = $("cap-note");
    note.hidden = false;
    note.textContent = "This page is not cross-origin isolated (COOP/COEP headers missing), so WASM cannot use " +
      "threads: the model runs on one thread, slower but still verified.";
  }
  refreshStatus();
  setInterval(refreshStatus, 3000);
  const subnet = cfg.subnets.find((s) => s.opted_in && s.task_type === "embedding");
  if (!subnet) {
    state.phase = "no subnet";
    notice("Opt into a subnet to start", "Review a subnet's model license below and accept it; this browser then fetches the model and starts computing.", "warning");
    return;
  }
  state.subnet = subnet;
  $("pause").addEventListener("click", togglePause);
  try {
    state.key = await nodeKeyLoadOrCreate(cfg.username);
    log(state.key.fresh ? "made this browser's node key" : "found this browser's node key");
    state.engine = await loadEngine(subnet);
    const environment = (await import("./engine.js")).environment?.() || {};
    state.env = {
      os: osFamily(navigator.userAgentData?.platform || environment.userAgent || navigator.userAgent),
      runtime: state.engine.runtime,
      backend: state.engine.backend,
      gpu_family: await gpuFamily(state.engine),
      cpu_count: environment.hardwareConcurrency || navigator.hardwareConcurrency || 1,
    };
    state.nodeId = await registerNode(cfg, state.key, state.env);
    setText("node-id", state.nodeId);
    log(`registered as node ${state.nodeId.slice(0, 8)}`);
    refreshStatus();
    connect();
  } catch (err) {
    state.phase = "error";
    notice("Could not start", String(err.message || err));
    log(String(err.message || err), "bad");
  }
}

if (typeof document !== "undefined" && document.getElementById("bim-dashboard")) main();

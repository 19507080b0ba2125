// The dashboard's DOM (templates/contributor/dashboard.html): every read of the page and
// every update of its elements, by id. No protocol here: ./app.js and ./connection.js say
// what to show, and the jobs table only keeps a registry verdict over later local events.

import { PAUSE_REASONS } from "./controls.js";

const $ = (id) => document.getElementById(id);
const MAX_LOG_LINES = 60;
const MAX_JOB_ROWS = 50;
// Labels that differ from the status word itself.
const JOB_LABELS = { agreed: "verified ✓", submitted: "accepted, awaiting partner" };
// Registry verdicts are final: a late local event never overwrites them.
const FINAL_JOB_STATES = new Set(["agreed", "disagreed"]);
// The subnet this browser computes, and what its speed counts ("texts", "images").
const serving = { slug: null, unit: "texts", plan: "" };
const MODEL_PHASES = {
  manifest: "fetching the manifest", chunks: "fetching and verifying chunks", load: "loading the model", ready: "ready",
};

/** Whether this page is the contributor dashboard (the module is loaded by it only, but
 * being sure costs nothing). */
export const isDashboard = () => typeof document !== "undefined" && Boolean($("bim-dashboard"));

/** The template's json_script: {username, register_url, status_url, socket_path, subnets}. */
export const pageConfig = () => JSON.parse($("bim-config").textContent);
export const csrfToken = () => $("csrf").value;

function setText(id, text, cls) {
  const el = $(id);
  if (!el) return;
  el.textContent = text;
  if (cls !== undefined) el.className = cls;
}

const credits = (micro) => `${(micro / 1e6).toFixed(6).replace(/\.?0+$/, "")} credits`;

/** Prepends a timestamped line to the page's log; returns the line. */
export function log(text, cls = "") {
  const line = `${new Date().toISOString().slice(11, 19)} ${text}`;
  const list = $("log");
  if (!list) return line;
  const li = document.createElement("li");
  li.textContent = line;
  if (cls) li.className = cls;
  list.prepend(li);
  while (list.children.length > MAX_LOG_LINES) list.lastChild.remove();
  return line;
}

export function notice(title, text, kind = "blocking") {
  const box = $("notice");
  box.hidden = false;
  box.className = `card wide notice ${kind}`;
  $("notice-title").textContent = title;
  $("notice-text").textContent = text;
}

/** The connection line: its text and the dot's colour class ("on", "busy", "off"). */
export function showConnection(text, dot) {
  setText("conn-state", text);
  $("conn-dot").className = `dot ${dot}`;
}

export function pauseButton({ onClick, enabled, label }) {
  const button = $("pause");
  if (onClick) button.addEventListener("click", onClick);
  if (enabled !== undefined) button.disabled = !enabled;
  if (label) button.textContent = label;
}

export function showCapabilities(caps) {
  setText("cap-ed25519", caps.ed25519 ? "yes" : "missing", caps.ed25519 ? "ok" : "bad");
  setText("cap-wasm", caps.wasm ? "yes" : "missing", caps.wasm ? "ok" : "bad");
  setText("cap-isolated", caps.isolated ? "yes (WASM threads)" : "no (single-threaded WASM)", caps.isolated ? "ok" : "warn");
  const adapter = caps.webgpuAdapter !== null;
  setText("cap-webgpu", adapter ? `adapter: ${caps.webgpuAdapter || "unknown vendor"}` : caps.webgpu ? "no adapter" : "not available",
    adapter ? "ok" : "muted");
}

export function showNotIsolated() {
  const note = $("cap-note");
  note.hidden = false;
  note.textContent = "This page is not cross-origin isolated (COOP/COEP headers missing), so WASM cannot use " +
    "threads: the model runs on one thread, slower but still verified.";
}

/** The engine's onProgress: {phase, done, total, fromCache}. */
export function showModelProgress({ phase, done, total, fromCache }) {
  setText("model-phase", `${MODEL_PHASES[phase] || phase}${total ? ` ${done}/${total}` : ""}${fromCache ? " (cache)" : ""}`);
  const bar = $("model-progress");
  if (total) { bar.max = total; bar.value = done; }
}

export function showModelLoaded(engine) {
  const cache = engine.cache || {};
  setText("model-phase", "verified and loaded", "ok");
  const bar = $("model-progress");
  bar.max = 1; bar.value = 1;
  setText("model-cache", cache.fromCache
    ? `from this browser's cache (${cache.chunkRequests ?? 0} chunk downloads)`
    : `downloaded ${cache.chunkRequests ?? "?"} chunks${cache.bytes ? `, ${(cache.bytes / 2 ** 20).toFixed(1)} MiB` : ""}, now cached`);
  setText("model-checksum", `${engine.modelChecksum.slice(0, 16)}…`);
  setText("backend", `${engine.backend}${engine.threads ? `, ${engine.threads} thread${engine.threads > 1 ? "s" : ""}` : ""} (${engine.runtime})`);
}

export const showNodeId = (nodeId) => setText("node-id", nodeId);

/** Marks the subnets table's row of the subnet this browser computes; `unit` is what its
 * speed figures count. */
export function showServing(slug, unit = "texts") {
  Object.assign(serving, { slug, unit });
  setText(`serving-${slug}`, "serving in this browser", "ok");
}

const backendText = ({ backend, threads, runtime }) =>
  `${backend === "webgpu" ? "WebGPU" : `WASM, ${threads} thread${threads > 1 ? "s" : ""}`}${runtime ? ` (${runtime})` : ""}`;

/** The subnets table's backend cell of a subnet this browser can compute: the backend it
 * would use ({backend, threads}), or the running engine's ({backend, threads, runtime}). */
export function showSubnetPlan(slug, engine) {
  if (slug === serving.slug) serving.plan = backendText(engine);
  setText(`plan-${slug}`, backendText(engine), "");
}

/** The served subnet's backend cell with its benchmark speed. */
function showServedSpeed(itemsPerS, note) {
  if (!serving.slug || !serving.plan) return;
  setText(`plan-${serving.slug}`, `${serving.plan}: ${Number(itemsPerS).toFixed(1)} ${serving.unit}/s${note}`, "ok");
}

/** The benchmark's state line; `cls` "ok" or "bad" once it is decided. */
export const showBenchmark = (text, cls) => setText("bench-state", text, cls);

export function showBenchmarkScore(itemsPerS, latencyP50Ms, note = "") {
  setText("bench-ips", `${Number(itemsPerS).toFixed(1)} ${serving.unit}/s${note}`);
  showServedSpeed(itemsPerS, note || " (benchmark)");
  setText("bench-p50", `${Number(latencyP50Ms).toFixed(0)} ms`);
}

export const showBenchmarkRuns = (timings) => setText("bench-runs", timings.map((t) => t.toFixed(0)).join(", ") + " ms");

/** One of the job counters: "done", "accepted", "verified", "disagreed", "failed". */
export const showCount = (name, value) => setText(`jobs-${name}`, String(value));

export function showBalances(balances) {
  setText("earnings", credits(balances.earnings_micro));
  setText("escrow", credits(balances.escrow_micro));
}

// ------------------------------------------------------------------ the jobs table

const jobRows = new Map(); // assignment id -> {tr, status}

export function jobAdd(job) {
  const body = $("jobs-body");
  body.querySelector("tr.empty")?.remove();
  const tr = document.createElement("tr");
  tr.dataset.assignment = job.assignmentId;
  // A peer-to-peer job's texts come later; its contract says how many.
  for (const text of [job.jobId.slice(0, 8), job.role, String(job.texts ? job.texts.length : job.items ?? 1), "–", "queued"]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  tr.children[0].title = job.jobId;
  body.prepend(tr);
  jobRows.set(job.assignmentId, { tr, status: "queued" });
  while (body.children.length > MAX_JOB_ROWS) {
    jobRows.delete(body.lastChild.dataset.assignment);
    body.lastChild.remove();
  }
}

/** A job's status ("computing", "sent", "refused: not_assigned", a registry verdict, ...),
 * with its compute time once known. */
export function jobMark(assignmentId, status, elapsedMs) {
  const row = jobRows.get(assignmentId);
  if (!row || FINAL_JOB_STATES.has(row.status)) return;
  row.status = status;
  const cells = row.tr.children;
  if (elapsedMs != null) cells[3].textContent = `${elapsedMs} ms`;
  cells[4].textContent = JOB_LABELS[status] || status;
  cells[4].className = `state-${status.split(":")[0]}`;
}

// ------------------------------------------------------------------ the controls card

const minutesText = (ms) => (ms < 60_000 ? `${Math.round(ms / 1000)} s` : `${(ms / 60_000).toFixed(1)} min`);

/** Binds the controls' inputs: `onChange(changes)` gets {threads} / {pauseWhenHidden} /
 * {pauseOnBattery} / {dailyCapMinutes} as the person edits them, `onRestart()` the
 * Restart button. */
export function controlsBind({ cores, onChange, onRestart }) {
  setText("ctl-cores", String(cores));
  $("ctl-threads").max = String(cores);
  for (const [id, name] of [["ctl-threads", "threads"], ["ctl-cap", "dailyCapMinutes"]]) {
    const input = $(id);
    input.addEventListener("input", () => { input.dataset.editing = "1"; });
    input.addEventListener("change", () => {
      delete input.dataset.editing;
      onChange({ [name]: input.value });
    });
  }
  $("ctl-hidden").addEventListener("change", (event) => onChange({ pauseWhenHidden: event.target.checked }));
  $("ctl-battery").addEventListener("change", (event) => onChange({ pauseOnBattery: event.target.checked }));
  $("ctl-restart").addEventListener("click", onRestart);
  $("controls").addEventListener("submit", (event) => event.preventDefault());
}

/** An input's value, unless the person is typing in it (a job ending would overwrite what
 * they have not committed yet; once committed, the clamped value shows). */
function inputShow(id, value) {
  const input = $(id);
  if (input.dataset.editing) return;
  if (input.type === "checkbox") input.checked = value;
  else input.value = String(value);
}

/** The controls' snapshot (./controls.js) and the running engine's threads (null before
 * one runs): inputs show the stored, clamped values, whatever was typed. */
export function showControls(snapshot, { engineThreads, isolated }) {
  const { settings, reasons, computedTodayMs, capMs } = snapshot;
  inputShow("ctl-threads", settings.threads);
  inputShow("ctl-cap", settings.dailyCapMinutes);
  inputShow("ctl-hidden", settings.pauseWhenHidden);
  inputShow("ctl-battery", settings.pauseOnBattery);
  setText("ctl-today", capMs ? `${minutesText(computedTodayMs)} of ${minutesText(capMs)}` : minutesText(computedTodayMs));
  setText("ctl-reasons", reasons.length ? reasons.map((r) => PAUSE_REASONS[r] || r).join("; ") : "none",
    reasons.length ? "warn" : "");
  let note = engineThreads == null ? "The model loads with this many threads." : `The model runs with ${engineThreads} thread${engineThreads > 1 ? "s" : ""}.`;
  if (!isolated) note += " This page is not cross-origin isolated, so WASM uses one thread whatever is chosen.";
  setText("ctl-threads-note", note);
  $("ctl-restart").disabled = engineThreads == null || engineThreads === settings.threads || reasons.includes("engine");
}

/** What the Battery Status API says, or that this browser does not say. */
export function showBattery(text, cls, { supported = true } = {}) {
  setText("ctl-battery-state", text, cls);
  if (!supported) $("ctl-battery").disabled = true;
}

/** ./job-speed.js's summary: this browser's items/s on real jobs, compute time only. */
export function showJobSpeed({ jobs, textsPerS }) {
  if (textsPerS == null) return;
  setText("speed-jobs", `${textsPerS.toFixed(1)} ${serving.unit}/s (last ${jobs} job${jobs > 1 ? "s" : ""})`);
}

/** The registry's own figure for real jobs (offer to result, on its clock). */
export function showObservedSpeed(itemsPerS, latencyMs) {
  if (!itemsPerS) return;
  setText("speed-observed", `${Number(itemsPerS).toFixed(1)} ${serving.unit}/s${latencyMs ? `, ${Number(latencyMs).toFixed(0)} ms a job` : ""}`);
}

// BIM contributor dashboard: this browser as a node (docs/protocol.md §9, protocol bim/1).
//
// The entry that templates/contributor/dashboard.html loads. It wires the modules, each of
// one subject: ./environment.js (what this browser can do, its `env`), ./keystore.js (the
// long-term key in IndexedDB, session keys), ./engine.js (the verified model in a Web
// Worker), ./registry-api.js (registration and status over HTTP), ./connection.js (the
// node websocket), ./controls.js (the volunteer's threads, pause conditions and daily
// limit), ./job-speed.js (the speed on real jobs), ./view.js (the page); ./protocol.js and
// ./jobs.js hold the bytes. ./text-engine.js replaces ./engine.js for a text subnet
// (llama.cpp in WebAssembly): ENGINES says which engine computes which task family.
//
// Order: check the browser, load or make the key, fetch and verify the subnet's model,
// register, connect; poll the ledger status all along. The controls pause and resume the
// connection whenever their reasons change, from the first moment on.

import { NodeConnection } from "./connection.js";
import { resultsRestore } from "./result-db.js";
import { PAUSE_REASONS, VolunteerControls } from "./controls.js";
import { createEngine } from "./engine.js";
import { capabilitiesProbe, nodeEnv, requirementsMissing } from "./environment.js";
import { JobSpeed } from "./job-speed.js";
import { TASK_TYPES } from "./jobs.js";
import { nodeKeyLoadOrCreate } from "./keystore.js";
import { nodeRegister, statusFetch } from "./registry-api.js";
import { unitOf } from "./task-families.js";
import { createTextEngine } from "./text-engine.js";
import * as view from "./view.js";

// The task families this page computes, each with its engine (contributor/selectors.py
// BROWSER_TASK_TYPES says the same to the dashboard's table).
export const ENGINES = { embedding: createEngine, image: createEngine, text: createTextEngine };

const STATUS_POLL_MS = 3000;
// Timers sleep with the laptop and are throttled in hidden tabs: besides the one set for
// local midnight, the day is checked this often.
const DAY_CHECK_MS = 30_000;
// Assignment states from the registry that the jobs table shows as they come.
const REGISTRY_VERDICTS = new Set(["agreed", "disagreed", "lost", "cancelled"]);

// What tests and the curious can read: window.bim mirrors the dashboard's state.
const state = {
  phase: "starting", nodeId: null, subnet: null, engine: null, env: null, paused: false, stopped: null,
  benchmark: null, model: null, counts: { done: 0, accepted: 0, failed: 0 },
  balances: null, verified: 0, disagreed: 0, connects: 0, log: [],
  // The volunteer's controls: settings, the reasons the node is paused for, today's compute.
  controls: null, pauseReasons: [], computedTodayMs: 0,
  // Speed: this browser's on real jobs (compute time only), and the registry's observation.
  jobSpeed: null, observedSpeed: null,
  // Peer-to-peer jobs whose input came over a data channel: set-up times and bytes (connection.js).
  peerJobs: [],
};

const log = (text, cls) => state.log.push(view.log(text, cls));

let controls = null;
let connection = null;
let isolated = false;
const jobSpeed = new JobSpeed();

async function loadEngine(subnet, threads) {
  view.showModelProgress({ phase: "manifest" });
  const engine = await ENGINES[subnet.task_type]({
    manifestUrl: subnet.manifest_url,
    threads,
    // The engine refuses a manifest naming another model than the one the registry lists.
    expectedChecksum: subnet.model_checksum,
    onProgress: view.showModelProgress,
  });
  if (engine.modelChecksum !== subnet.model_checksum) {
    await engine.close?.();
    throw new Error(`the loaded model ${engine.modelChecksum} is not the subnet's ${subnet.model_checksum}`);
  }
  const cache = engine.cache || {};
  state.model = { checksum: engine.modelChecksum, fromCache: !!cache.fromCache, chunkRequests: cache.chunkRequests, bytes: cache.bytes };
  view.showModelLoaded(engine);
  view.showSubnetPlan(subnet.slug, { backend: engine.backend, threads: engine.threads, runtime: engine.runtime });
  return engine;
}

async function refreshStatus(cfg) {
  let body;
  try {
    body = await statusFetch({ url: cfg.status_url, nodeId: state.nodeId });
  } catch {
    return; // the next poll tries again
  }
  if (!body) return;
  state.balances = body.balances;
  view.showBalances(body.balances);
  if (!body.node) return;
  state.verified = body.node.counts.agreed || 0;
  state.disagreed = body.node.counts.disagreed || 0;
  view.showCount("verified", state.verified);
  view.showCount("disagreed", state.disagreed);
  for (const a of body.node.assignments) if (REGISTRY_VERDICTS.has(a.state)) view.jobMark(a.assignment_id, a.state);
  const link = body.node.subnets.find((s) => s.slug === state.subnet?.slug);
  if (link && link.items_per_s && !state.benchmark) view.showBenchmarkScore(link.items_per_s, link.latency_p50_ms, " (last benchmark)");
  if (link && link.observed_items_per_s) {
    state.observedSpeed = { itemsPerS: link.observed_items_per_s, latencyMs: link.observed_latency_ms };
    view.showObservedSpeed(link.observed_items_per_s, link.observed_latency_ms);
  }
}

function socketUrl(path) {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
}

// ------------------------------------------------------------------ the volunteer's controls

/** localStorage, or null where touching it throws (storage blocked for this site). */
function storageOrNull() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null;
  }
}

function controlsShow(snapshot = controls.snapshot()) {
  state.controls = snapshot.settings;
  state.pauseReasons = snapshot.reasons;
  state.computedTodayMs = snapshot.computedTodayMs;
  view.showControls(snapshot, { engineThreads: state.engine?.threads ?? null, isolated });
  view.pauseButton({ label: snapshot.reasons.includes("user") ? "Resume" : "Pause" });
}

/** The connection follows the reasons: paused while any holds, resumed once none does. */
function pauseApply(reasons) {
  if (!connection || state.stopped) return;
  if (reasons.length && !state.paused) connection.pause(reasons.map((r) => PAUSE_REASONS[r]).join("; "));
  else if (!reasons.length && state.paused) connection.resume();
}

function controlsChanged(snapshot) {
  controlsShow(snapshot);
  pauseApply(snapshot.reasons);
}

/** navigator.getBattery where the browser has it (Chromium); elsewhere the page says that
 * the option cannot work rather than pretending it does. */
async function batteryWatch() {
  const unsupported = () =>
    view.showBattery("not reported by this browser, so this option has no effect here", "muted", { supported: false });
  if (typeof navigator.getBattery !== "function") { unsupported(); return; }
  let battery;
  try {
    battery = await navigator.getBattery();
  } catch {
    unsupported(); // refused, e.g. by a Permissions-Policy
    return;
  }
  const report = () => {
    controls.observe({ charging: battery.charging });
    view.showBattery(battery.charging ? "on mains power" : `on battery, ${Math.round(battery.level * 100)} %`);
  };
  battery.addEventListener("chargingchange", report);
  report();
}

function midnightWatch() {
  // A second past midnight, so that every later clock reading is in the new day.
  setTimeout(() => { controls.tick(); midnightWatch(); }, controls.msUntilNextDay() + 1000);
}

function controlsStart() {
  controls = new VolunteerControls({
    storage: storageOrNull(), hardwareConcurrency: navigator.hardwareConcurrency, onChange: controlsChanged,
  });
  view.controlsBind({ cores: controls.cores, onChange: (changes) => controls.update(changes), onRestart: engineRestart });
  const hidden = () => document.visibilityState === "hidden";
  document.addEventListener("visibilitychange", () => {
    controls.observe({ hidden: hidden() });
    controls.tick();
  });
  controls.observe({ hidden: hidden() });
  batteryWatch();
  midnightWatch();
  setInterval(() => controls.tick(), DAY_CHECK_MS);
}

/** The engine again with the chosen threads: pause (the running job finishes and the
 * socket closes), swap the engine, then resume unless another reason holds. */
async function engineRestart() {
  if (!state.engine || !connection || state.pauseReasons.includes("engine")) return;
  controls.hold("engine", true);
  try {
    await connection.disconnected();
    const old = state.engine;
    state.engine = null;
    await old.close();
    state.engine = await loadEngine(state.subnet, controls.settings.threads);
    log(`engine restarted with ${state.engine.threads} thread${state.engine.threads > 1 ? "s" : ""}`);
  } catch (err) {
    // Without an engine there is nothing to compute with: stay paused and say so.
    view.notice("Could not restart the engine", `${String(err.message || err)}. Reload the page.`);
    log(`engine restart failed: ${String(err.message || err)}`, "bad");
    return;
  }
  controls.hold("engine", false);
}

/** Every model call's time counts against the daily limit; jobs' also make the speed. */
function computed({ kind, items, ms }) {
  controls.computeAdd(ms);
  if (kind !== "job") return;
  jobSpeed.record(items, ms);
  state.jobSpeed = jobSpeed.summary();
  view.showJobSpeed(state.jobSpeed);
}

async function main() {
  window.bim = state;
  const cfg = view.pageConfig();
  controlsStart();
  const caps = await capabilitiesProbe();
  isolated = caps.isolated;
  controlsShow();
  view.showCapabilities(caps);
  const missing = requirementsMissing(caps);
  if (missing) {
    state.phase = "unsupported";
    view.notice("This browser cannot contribute", missing);
    return;
  }
  if (!caps.isolated) view.showNotIsolated();
  refreshStatus(cfg);
  setInterval(() => refreshStatus(cfg), STATUS_POLL_MS);
  // Every subnet this browser can compute, with the backend it would run on (the engine's
  // "auto": WebGPU where an adapter is given, else WASM with the volunteer's threads).
  const computable = cfg.subnets.filter((s) => !s.unavailable && TASK_TYPES.includes(s.task_type));
  const planned = caps.webgpuAdapter !== null ? { backend: "webgpu", threads: 1 } : { backend: "wasm", threads: isolated ? controls.settings.threads : 1 };
  // The text engine (llama.cpp in WebAssembly) has no WebGPU backend.
  for (const s of computable) view.showSubnetPlan(s.slug, s.task_type === "text" ? { ...planned, backend: "wasm" } : planned);
  // Opted in, computable here, and not held back by the registry (a changed license):
  // the dashboard's table says why any other subnet is not served.
  const subnet = computable.find((s) => s.opted_in);
  if (!subnet) {
    state.phase = "no subnet";
    view.notice("Opt into a subnet to start", "Review a subnet's model license below and accept it; this browser then fetches the model and starts computing.", "warning");
    return;
  }
  state.subnet = subnet;
  view.showServing(subnet.slug, unitOf(subnet.task_type));
  connection = new NodeConnection({ state, view, url: socketUrl(cfg.socket_path), onComputed: computed });
  // The person's Pause is one reason among the controls'; Resume clears that one only.
  view.pauseButton({ onClick: () => controls.hold("user", !state.pauseReasons.includes("user")) });
  // A limit reached earlier today, a hidden tab, a battery: paused before connecting.
  pauseApply(state.pauseReasons);
  try {
    state.key = await nodeKeyLoadOrCreate(cfg.username);
    log(state.key.fresh ? "made this browser's node key" : "found this browser's node key");
    state.engine = await loadEngine(subnet, controls.settings.threads);
    controlsShow();
    state.env = await nodeEnv(state.engine);
    state.nodeId = await nodeRegister({
      url: cfg.register_url, csrfToken: view.csrfToken(), publicKey: state.key.publicKeyB64, subnet: subnet.slug, env: state.env,
    });
    view.showNodeId(state.nodeId);
    log(`registered as node ${state.nodeId.slice(0, 8)}`);
    refreshStatus(cfg);
    await resultsRestore(connection.resultStore, log);
    connection.connect();
  } catch (err) {
    state.phase = "error";
    view.notice("Could not start", String(err.message || err));
    log(String(err.message || err), "bad");
  }
}

if (view.isDashboard()) main();

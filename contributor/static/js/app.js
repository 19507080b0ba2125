// BIM contributor dashboard: this browser as a node (docs/protocol.md §9, protocol bim/1).
//
// The entry that templates/contributor/dashboard.html loads. It wires the modules, each of
// one subject: ./environment.js (what this browser can do, its `env`), ./keystore.js (the
// long-term key in IndexedDB, session keys), ./engine.js (the verified model in a Web
// Worker), ./registry-api.js (registration and status over HTTP), ./connection.js (the
// node websocket), ./view.js (the page); ./protocol.js and ./jobs.js hold the bytes.
//
// Order: check the browser, load or make the key, fetch and verify the subnet's model,
// register, connect; poll the ledger status all along.

import { NodeConnection } from "./connection.js";
import { createEngine } from "./engine.js";
import { capabilitiesProbe, nodeEnv, requirementsMissing } from "./environment.js";
import { TASK_TYPE } from "./jobs.js";
import { nodeKeyLoadOrCreate } from "./keystore.js";
import { nodeRegister, statusFetch } from "./registry-api.js";
import * as view from "./view.js";

const STATUS_POLL_MS = 3000;
// Assignment states from the registry that the jobs table shows as they come.
const REGISTRY_VERDICTS = new Set(["agreed", "disagreed", "lost", "cancelled"]);

// What tests and the curious can read: window.bim mirrors the dashboard's state.
const state = {
  phase: "starting", nodeId: null, subnet: null, engine: null, env: null, paused: false, stopped: null,
  benchmark: null, model: null, counts: { done: 0, accepted: 0, failed: 0 },
  balances: null, verified: 0, disagreed: 0, connects: 0, log: [],
};

const log = (text, cls) => state.log.push(view.log(text, cls));

async function loadEngine(subnet) {
  view.showModelProgress({ phase: "manifest" });
  const engine = await createEngine({
    manifestUrl: subnet.manifest_url,
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
}

function socketUrl(path) {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${path}`;
}

async function main() {
  window.bim = state;
  const cfg = view.pageConfig();
  const caps = await capabilitiesProbe();
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
  const subnet = cfg.subnets.find((s) => s.opted_in && s.task_type === TASK_TYPE);
  if (!subnet) {
    state.phase = "no subnet";
    view.notice("Opt into a subnet to start", "Review a subnet's model license below and accept it; this browser then fetches the model and starts computing.", "warning");
    return;
  }
  state.subnet = subnet;
  const connection = new NodeConnection({ state, view, url: socketUrl(cfg.socket_path) });
  view.pauseButton({
    onClick: () => {
      if (state.paused) connection.resume();
      else connection.pause();
      view.pauseButton({ label: state.paused ? "Resume" : "Pause" });
    },
  });
  try {
    state.key = await nodeKeyLoadOrCreate(cfg.username);
    log(state.key.fresh ? "made this browser's node key" : "found this browser's node key");
    state.engine = await loadEngine(subnet);
    state.env = await nodeEnv(state.engine);
    state.nodeId = await nodeRegister({
      url: cfg.register_url, csrfToken: view.csrfToken(), publicKey: state.key.publicKeyB64, subnet: subnet.slug, env: state.env,
    });
    view.showNodeId(state.nodeId);
    log(`registered as node ${state.nodeId.slice(0, 8)}`);
    refreshStatus(cfg);
    connection.connect();
  } catch (err) {
    state.phase = "error";
    view.notice("Could not start", String(err.message || err));
    log(String(err.message || err), "bad");
  }
}

if (view.isDashboard()) main();

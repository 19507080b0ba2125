// The browser's text engine, page side: the wrapper around ./text-worker.js (llama.cpp in
// WebAssembly through wllama, the subnet's GGUF from the verified chunk store). Same shape
// as ./engine.js's embedding engine, so the dashboard and the session drive either:
//
//   createTextEngine({manifestUrl, threads = 1, onProgress, budgetBytes, expectedChecksum})
//     -> {taskType: "text", runtime ("wllama-<version>"), backend ("wasm"), threads,
//         modelChecksum, cache: {fromCache, chunkRequests, bytes}, manifest, settings,
//         async generate({prompt, max_tokens}, onToken) -> {finish, text, tokens, timings},
//         async promptTokens(prompt) -> ids (tests), async close()}
//   onToken({token, delta, text, count}) hears every generated token as it comes.
//
// Threads: 1 unless asked. wllama's threaded build needs cross-origin isolation; on one
// thread its output was measured against the Python node (bench/browser_agreement.py).

import { registerServiceWorker } from "./engine.js";

export async function createTextEngine({ manifestUrl, threads = 1, onProgress = () => {}, budgetBytes, expectedChecksum = "" } = {}) {
  if (!manifestUrl) throw new Error("createTextEngine needs a manifestUrl");
  await registerServiceWorker();
  try { await navigator.storage?.persist?.(); } catch { /* not granted */ }
  const worker = new Worker(new URL("./text-worker.js", import.meta.url), { type: "module", name: "bim-text-engine" });
  const pending = new Map();
  let nextId = 1;
  let closed = false;
  worker.onmessage = (event) => {
    const msg = event.data;
    if (msg.type === "progress") {
      try { onProgress(msg.progress); } catch (err) { console.error(err); }
      return;
    }
    const waiter = pending.get(msg.id);
    if (!waiter) return;
    if (msg.type === "token") {
      const { token, delta, text, count } = msg;
      try { waiter.onToken?.({ token, delta, text, count }); } catch (err) { console.error(err); }
      return;
    }
    pending.delete(msg.id);
    if (msg.ok) waiter.resolve(msg.result);
    else {
      const error = new Error(msg.message);
      error.workerStack = msg.error;
      waiter.reject(error);
    }
  };
  worker.onerror = (event) => {
    const error = new Error(`text engine worker failed: ${event.message || "error"}`);
    for (const waiter of pending.values()) waiter.reject(error);
    pending.clear();
  };
  const call = (op, args, onToken) => {
    if (closed) return Promise.reject(new Error("engine closed"));
    return new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject, onToken });
      worker.postMessage({ id, op, args });
    });
  };

  let info;
  try {
    info = await call("init", { manifestUrl: new URL(manifestUrl, location.href).href, threads, budgetBytes, expectedChecksum });
  } catch (err) {
    worker.terminate();
    throw err;
  }
  const cache = { fromCache: info.cache.fromCache, chunkRequests: info.cache.chunkRequests, bytes: info.cache.bytes };
  onProgress({ phase: "ready", done: 1, total: 1, fromCache: cache.fromCache });
  return {
    taskType: "text",
    runtime: info.runtime,
    backend: info.backend,
    threads: info.threads,
    modelChecksum: info.modelChecksum,
    cache,
    manifest: info.manifest,
    settings: info.settings,
    // timings ({promptMs, decodeMs}) are for measurements; a result signs finish, text, tokens.
    async generate(inputs, onToken) {
      const { finish, text, tokens, timings } = await call("generate", { prompt: inputs.prompt, maxTokens: inputs.max_tokens }, onToken);
      return { finish, text, tokens, timings };
    },
    async promptTokens(prompt) {
      return call("promptTokens", { prompt });
    },
    async close() {
      if (closed) return;
      try { await call("close", {}); } catch { /* terminating anyway */ }
      closed = true;
      worker.terminate();
      for (const waiter of pending.values()) waiter.reject(new Error("engine closed"));
      pending.clear();
    },
  };
}

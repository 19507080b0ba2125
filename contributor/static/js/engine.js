// The browser contributor's engine: the page-side wrapper around js/engine-worker.js.
// See js/ENGINE.md. Interface (the dashboard codes against it; keep it stable):
//
//   createEngine({manifestUrl, backend = "auto", threads, onProgress, budgetBytes, expectedChecksum})
//     backend: "auto" (webgpu when navigator.gpu gives an adapter, else wasm) | "wasm" | "webgpu"
//     onProgress({phase: "manifest"|"chunks"|"load"|"ready", done, total, fromCache})
//     -> {runtime, backend, threads, taskType ("embedding" | "image", the manifest's), modelChecksum,
//         cache: {fromCache, chunkRequests, bytes},
//         async embed(texts) -> {data: Float32Array (rows*dim, row-major), rows, dim,
//           timings: {tokenizeMs, modelMs, poolMs} (for measurements; not part of a result)},
//         async tokenize(texts) -> number[][] (the ids the model sees),
//         async upscale(imageB64) -> {data: Uint8Array (height*width*3, row-major RGB), height, width,
//           timings: {decodeMs, modelMs, tilingMs}}
//           (an image subnet: the base64 PNG of a job's inputs, 2x; an image that does not
//           decode rejects with an error whose `code` is "bad_input"),
//         async close()}
//   environment() -> {crossOriginIsolated, webgpu (navigator.gpu exists; an adapter may still be
//                     missing: "auto" asks for one), hardwareConcurrency, userAgent}
//   registerServiceWorker() -> the registration, or null where Service Workers are unavailable

import { workerClient } from "./worker-rpc.js";

const SW_URL = new URL("../sw.js", import.meta.url);

export function environment() {
  return {
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    webgpu: typeof navigator !== "undefined" && Boolean(navigator.gpu),
    hardwareConcurrency: (typeof navigator !== "undefined" && navigator.hardwareConcurrency) || 1,
    userAgent: (typeof navigator !== "undefined" && navigator.userAgent) || "",
  };
}

/** Register sw.js (scope "/") so chunk URLs are answered from IndexedDB. Best effort: the
 * engine verifies and caches chunks itself without it. */
export async function registerServiceWorker({ timeoutMs = 3000 } = {}) {
  if (typeof navigator === "undefined" || !("serviceWorker" in navigator) || !globalThis.isSecureContext) return null;
  try {
    const registration = await navigator.serviceWorker.register(SW_URL.href, { scope: "/", type: "module" });
    await Promise.race([navigator.serviceWorker.ready, new Promise((resolve) => setTimeout(resolve, timeoutMs))]);
    return registration;
  } catch (err) {
    console.warn("bim: Service Worker not registered", err);
    return null;
  }
}

/** An engine's Web Worker (`script`) started and initialized, as every engine starts one:
 * sw.js registered, persistent storage asked for (best effort: the browser may say no, and
 * the engine then simply downloads again next time), the worker's "init" run with `init`
 * (its manifestUrl made absolute), the worker terminated if that fails, "ready" reported.
 * -> {call, close, info (init's answer), cache: {fromCache, chunkRequests, bytes}} */
export async function startEngineWorker(script, { workerName, engineName, onProgress, init }) {
  await registerServiceWorker();
  try { await navigator.storage?.persist?.(); } catch { /* not granted */ }
  const worker = new Worker(script, { type: "module", name: workerName });
  const { call, close, terminate } = workerClient(worker, { name: engineName, onProgress });
  let info;
  try {
    info = await call("init", { ...init, manifestUrl: new URL(init.manifestUrl, location.href).href });
  } catch (err) {
    terminate();
    throw err;
  }
  const cache = { fromCache: info.cache.fromCache, chunkRequests: info.cache.chunkRequests, bytes: info.cache.bytes };
  onProgress({ phase: "ready", done: 1, total: 1, fromCache: cache.fromCache });
  return { call, close, info, cache };
}

/** Half the logical cores, at most 4: onnxruntime-web's own default (and ./controls.js's).
 * Every core was the default before, which left none to the page and the browser. */
function defaultThreads() {
  if (!globalThis.crossOriginIsolated) return 1;
  return Math.min(4, Math.ceil((navigator.hardwareConcurrency || 1) / 2));
}

export async function createEngine({ manifestUrl, backend = "auto", threads, onProgress = () => {}, budgetBytes, expectedChecksum = "", batch } = {}) {
  if (!manifestUrl) throw new Error("createEngine needs a manifestUrl");
  const { call, close, info, cache } = await startEngineWorker(new URL("./engine-worker.js", import.meta.url), {
    workerName: "bim-engine",
    engineName: "engine",
    onProgress,
    init: { manifestUrl, backend, threads: threads ?? defaultThreads(), budgetBytes, expectedChecksum, batch },
  });
  return {
    runtime: info.runtime,
    backend: info.backend,
    threads: info.threads,
    taskType: info.taskType,
    modelChecksum: info.modelChecksum,
    cache,
    manifest: info.manifest,
    async embed(texts) {
      return call("embed", { texts });
    },
    async tokenize(texts) {
      return call("tokenize", { texts });
    },
    async upscale(imageB64) {
      return call("upscale", { image: imageB64 });
    },
    close,
  };
}

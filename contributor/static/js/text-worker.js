// The browser's text engine: a module Web Worker that loads a text subnet's GGUF from the
// verified chunk store (./model-store.js: every chunk checked against its SHA-256, the whole
// file against the manifest's, cached under the byte budget) and runs it with wllama
// (llama.cpp in WebAssembly, which starts a worker of its own). Generation follows
// ./text-generation.js under the subnet's pinned settings: context, prompt batch size, chat
// template, greedy decoding. Requests and answers as ./worker-rpc.js defines them, plus
// {type: "progress"} and {type: "token", id, ...} (streamed tokens of request id) out.
import { controlTokens } from "./gguf.js";
import { DEFAULT_BUDGET_BYTES, modelLoad } from "./model-store.js";
import { generate, generationSettings, promptTokens } from "./text-generation.js";
import { workerServe } from "./worker-rpc.js";

const VENDOR = new URL("../vendor/wllama/", import.meta.url);
// The sampler as argmax: temperature 0 keeps the first maximum in id order (the lowest id on
// a tie, like numpy's argmax in the Python node); every other stage is switched off, so none
// reorders the candidates first.
const GREEDY = { temp: 0, top_k: 0, top_p: 1, min_p: 0, typ_p: 1, penalty_repeat: 1, penalty_last_n: 0, penalty_freq: 0, penalty_present: 0 };

let wllama = null;
let model = null;
let settings = null;

// wllama resolves its asset paths against document.baseURI, which a worker lacks; the paths
// given are absolute, so the worker's own URL serves as the base.
if (typeof globalThis.document === "undefined") globalThis.document = { baseURI: self.location.href };

async function init({ manifestUrl, threads = 1, budgetBytes = DEFAULT_BUDGET_BYTES, expectedChecksum = "" }) {
  const progress = (p) => self.postMessage({ type: "progress", progress: p });
  const loaded = await modelLoad(new URL(manifestUrl, self.location.href).href, { budgetBytes, expectedChecksum, onProgress: progress });
  const { manifest, files } = loaded;
  if (manifest.task_type !== "text") throw new Error(`this engine runs text subnets, not ${manifest.task_type}`);
  settings = generationSettings(manifest.preprocessing || {});
  progress({ phase: "load", done: 0, total: 2, fromCache: loaded.cache.fromCache });
  const control = controlTokens(files.model);
  const { Wllama } = await import(new URL("index.js", VENDOR).href);
  wllama = new Wllama({
    "single-thread/wllama.wasm": new URL("single-thread/wllama.wasm", VENDOR).href,
    "multi-thread/wllama.wasm": new URL("multi-thread/wllama.wasm", VENDOR).href,
  }, { suppressNativeLog: true });
  const usedThreads = self.crossOriginIsolated ? Math.max(1, threads | 0) : 1;
  // The verified bytes as the Blob wllama reads; the ArrayBuffer is then let go.
  await wllama.loadModel([new Blob([files.model])], {
    n_ctx: settings.nCtx,
    n_batch: settings.nBatch,
    n_threads: usedThreads,
    seed: settings.seed,
    // As the Python node's llama-cpp-python (flash_attn=False): the attention kernels are
    // part of the logits' last bits.
    flash_attn: false,
  });
  files.model = null;
  await wllama.samplingInit(GREEDY);
  // The ids the context holds, in order, so a job's prompt reuses the prefix it shares
  // with the last one (./text-generation.js prefill); emptied first, so a failed call
  // leaves nothing to reuse.
  let cached = [];
  model = {
    control,
    bos: wllama.getBOS(),
    get cached() { return cached; },
    tokenize: (text, special) => wllama.tokenize(text, special),
    reset: async () => { cached = []; await wllama.kvClear(); },
    keep: async (n) => {
      const kept = cached.slice(0, n);
      cached = [];
      await wllama.kvRemove(n, -1);
      cached = kept;
    },
    feed: async (ids) => {
      const before = cached;
      cached = [];
      await wllama.decode(ids, {});
      cached = before.concat(ids);
    },
    next: () => wllama.samplingSample(),
    isStop: (token) => wllama.isTokenEOG(token),
  };
  // Warm-up before `ready`: the first pass pays for memory growth the registry's
  // benchmark, timed on its clock, should not see.
  await generate(model, { prompt: "warm up", maxTokens: 2, settings });
  progress({ phase: "load", done: 2, total: 2, fromCache: loaded.cache.fromCache });
  return {
    runtime: `wllama-${(await versionOf()) || "unknown"}`,
    backend: "wasm",
    threads: wllama.isMultithread() ? wllama.getNumThreads() : 1,
    modelChecksum: manifest.model_checksum,
    cache: loaded.cache,
    manifest: { ...manifest, artifacts: undefined },
    settings,
  };
}

async function versionOf() {
  try {
    const response = await fetch(new URL("../versions.json", VENDOR).href, { credentials: "same-origin" });
    return (await response.json())["@wllama/wllama"];
  } catch {
    return "";
  }
}

async function run(id, { prompt, maxTokens }) {
  if (!model) throw new Error("engine not initialised");
  if (typeof prompt !== "string" || !prompt) throw new Error("prompt must be a non-empty string");
  if (maxTokens > settings.maxNewTokens) throw new Error(`max_tokens ${maxTokens} exceeds the subnet's ${settings.maxNewTokens}`);
  const result = await generate(model, { prompt, maxTokens, settings }, (token) => self.postMessage({ type: "token", id, ...token }));
  return result;
}

async function close() {
  if (wllama) await wllama.exit();
  wllama = null;
  model = null;
  return true;
}

workerServe(self, {
  init,
  generate: (args, id) => run(id, args),
  promptTokens: ({ prompt }) => promptTokens(model, prompt, settings.systemPrompt),
  close,
});

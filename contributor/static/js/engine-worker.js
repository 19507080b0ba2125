// The browser contributor's compute: a module Web Worker that loads the subnet's verified
// model (js/model-store.js) and runs it with onnxruntime-web (WebGPU or WASM,
// js/ort-session.js). Embedding subnets are computed here: the math is
// bim_core/runtimes/embedder.py's: the tokenizer.json's own truncation and padding are
// overridden (the first max_tokens-1 ids, then [SEP]), inputs padded with [PAD] per batch,
// mean pooling over the attention mask, L2 normalization, float32 out. Image subnets are
// js/image-runner.js's (upscaler.py's tiling). Requests and answers as ./worker-rpc.js
// defines them, plus {type: "progress"} out.
import { batchPlan } from "./batching.js";
import { imageRunnerCreate } from "./image-runner.js";
import { modelLoad, DEFAULT_BUDGET_BYTES } from "./model-store.js";
import { ortSession, tensorData } from "./ort-session.js";
import { workerServe } from "./worker-rpc.js";

const VENDOR = new URL("../vendor/", import.meta.url);
let batchSize = 32;

let ort = null;
let session = null;
let tokenizer = null;
let state = null;
let lowercases = false;
let imageRunner = null;

function normalizerLowercases(normalizer) {
  if (!normalizer) return false;
  if (normalizer.type === "Lowercase") return true;
  if (normalizer.type === "BertNormalizer") return normalizer.lowercase !== false;
  if (normalizer.type === "Sequence") return (normalizer.normalizers || []).some(normalizerLowercases);
  return false;
} // {maxTokens, normalize, clsId, sepId, padId, inputNames, outputName}

async function init({ manifestUrl, backend = "auto", threads = 1, budgetBytes = DEFAULT_BUDGET_BYTES, expectedChecksum = "", batch = 32 }) {
  batchSize = Math.max(1, batch | 0);
  const progress = (p) => self.postMessage({ type: "progress", progress: p });
  const loaded = await modelLoad(new URL(manifestUrl, self.location.href).href, { budgetBytes, expectedChecksum, onProgress: progress });
  const { manifest, files } = loaded;
  const described = (info) => ({
    ...info, taskType: manifest.task_type, modelChecksum: manifest.model_checksum, cache: loaded.cache, manifest: { ...manifest, artifacts: undefined },
  });
  if (manifest.task_type === "image") {
    progress({ phase: "load", done: 0, total: 1, fromCache: loaded.cache.fromCache });
    imageRunner = await imageRunnerCreate(files, manifest, { backend, threads });
    progress({ phase: "load", done: 1, total: 1, fromCache: loaded.cache.fromCache });
    return described(imageRunner.info);
  }
  if (manifest.task_type !== "embedding") throw new Error(`this engine runs embedding and image subnets, not ${manifest.task_type}`);
  if (!files.tokenizer) throw new Error("the manifest has no tokenizer artifact");
  const prep = manifest.preprocessing || {};
  if ((prep.pooling || "mean") !== "mean") throw new Error(`pooling ${JSON.stringify(prep.pooling)} is not supported (only "mean")`);

  progress({ phase: "load", done: 0, total: 2, fromCache: loaded.cache.fromCache });
  const { Tokenizer } = await import(new URL("tokenizers/tokenizers.min.mjs", VENDOR).href);
  const tokenizerJson = JSON.parse(new TextDecoder().decode(files.tokenizer));
  tokenizer = new Tokenizer(tokenizerJson, {});
  lowercases = normalizerLowercases(tokenizerJson.normalizer);
  const id = (token, fallback) => {
    const value = tokenizer.token_to_id(token);
    return value === undefined ? fallback : value;
  };

  const loadedSession = await ortSession(files.model, { backend, threads });
  ({ ort, session } = loadedSession);
  state = {
    maxTokens: Number(prep.max_tokens ?? 256),
    normalize: prep.normalize === undefined ? true : Boolean(prep.normalize),
    clsId: id("[CLS]", 101),
    sepId: id("[SEP]", 102),
    padId: id("[PAD]", 0),
    inputNames: new Set(session.inputNames),
    outputName: session.outputNames[0],
  };
  // Warm-up before the page says `ready`: it learns the output width, and keeps first-run
  // costs out of the registry's benchmark, which is timed on the registry's clock from the
  // moment it is issued (every run's share of that is its floor). A text at the widest
  // input (max_tokens) grows onnxruntime's memory arena to what a long text needs: with a
  // short warm-up only, the first run of a suite holding a long text took 0.5 to 1.4 s more
  // than the next; with this one, 0.1 to 0.3 s (Chromium 156, WASM, 1 and 2 threads).
  state.dim = (await embed({ texts: ["warm up", "warm up ".repeat(state.maxTokens)] })).dim;
  progress({ phase: "load", done: 2, total: 2, fromCache: loaded.cache.fromCache });
  const { runtime, backend: used, threads: usedThreads } = loadedSession;
  return described({ runtime, backend: used, threads: usedThreads });
}

function tokenize(texts) {
  const { maxTokens, sepId } = state;
  return texts.map((text) => {
    // JavaScript's toLowerCase maps a word-final capital sigma to "ς" (Unicode's Final_Sigma
    // rule); the Rust tokenizers lowercase letter by letter ("σ"), and the ids differ.
    // Lowering Σ first gives the Rust result in both.
    const input = lowercases ? String(text).replaceAll("\u03a3", "\u03c3") : String(text);
    const ids = tokenizer.encode(input, { add_special_tokens: true }).ids;
    // The Python node truncates to max_tokens keeping [CLS] ... [SEP]: the same ids as the
    // first max_tokens-1 ids followed by [SEP].
    return ids.length > maxTokens ? [...ids.slice(0, maxTokens - 1), sepId] : ids;
  });
}

async function embedBatch(rows, out, indices, dim, timings) {
  const width = Math.max(...rows.map((r) => r.length));
  const n = rows.length;
  const inputIds = new BigInt64Array(n * width).fill(BigInt(state.padId));
  const mask = new BigInt64Array(n * width);
  rows.forEach((row, r) => {
    for (let t = 0; t < row.length; t++) {
      inputIds[r * width + t] = BigInt(row[t]);
      mask[r * width + t] = 1n;
    }
  });
  const feeds = {};
  const shape = [n, width];
  if (state.inputNames.has("input_ids")) feeds.input_ids = new ort.Tensor("int64", inputIds, shape);
  if (state.inputNames.has("attention_mask")) feeds.attention_mask = new ort.Tensor("int64", mask, shape);
  if (state.inputNames.has("token_type_ids")) feeds.token_type_ids = new ort.Tensor("int64", new BigInt64Array(n * width), shape);
  const ran = performance.now();
  const results = await session.run(feeds, [state.outputName]);
  const hidden = results[state.outputName];
  const hiddenData = await tensorData(hidden);
  timings.modelMs += performance.now() - ran;
  const d = hidden.dims[2];
  if (dim.value === 0) dim.value = d;
  for (let r = 0; r < n; r++) {
    // float32 accumulation like numpy's sum over the token axis of a float32 array.
    const pooled = new Float32Array(d);
    const len = rows[r].length;
    for (let t = 0; t < len; t++) {
      const base = (r * width + t) * d;
      for (let k = 0; k < d; k++) pooled[k] += hiddenData[base + k];
    }
    for (let k = 0; k < d; k++) pooled[k] /= Math.max(len, 1e-9);
    if (state.normalize) {
      let sq = 0;
      for (let k = 0; k < d; k++) sq += pooled[k] * pooled[k];
      const norm = Math.max(Math.sqrt(sq), 1e-12);
      for (let k = 0; k < d; k++) pooled[k] /= norm;
    }
    out.set(indices[r], pooled);
  }
  if (hidden.dispose) hidden.dispose();
}

async function embed({ texts }) {
  if (!session) throw new Error("engine not initialised");
  if (!Array.isArray(texts) || texts.some((t) => typeof t !== "string")) throw new Error("texts must be a list of strings");
  if (texts.length === 0) return { data: new Float32Array(0), rows: 0, dim: state.dim || 0 };
  const started = performance.now();
  const encodings = tokenize(texts);
  // For measurements: tokenizing, the model calls, the rest (inputs, pooling, assembly).
  const timings = { tokenizeMs: performance.now() - started, modelMs: 0, poolMs: 0 };
  const rowsOut = new Map();
  const dim = { value: 0 };
  // Calls of similar lengths, so that no call pads short texts to a long one's width.
  for (const batch of batchPlan(encodings.map((ids) => ids.length), { maxBatch: batchSize })) {
    await embedBatch(batch.map((i) => encodings[i]), rowsOut, batch, dim, timings);
  }
  const data = new Float32Array(texts.length * dim.value);
  for (let i = 0; i < texts.length; i++) data.set(rowsOut.get(i), i * dim.value);
  timings.poolMs = performance.now() - started - timings.tokenizeMs - timings.modelMs;
  return { data, rows: texts.length, dim: dim.value, timings };
}

async function upscale({ image }) {
  if (!imageRunner) throw new Error("this engine does not run an image subnet");
  return imageRunner.upscale(image);
}

async function close() {
  if (session) await session.release();
  if (imageRunner) await imageRunner.close();
  session = null;
  imageRunner = null;
  return true;
}

workerServe(self, { init, embed, upscale, close, tokenize: ({ texts }) => tokenize(texts) });

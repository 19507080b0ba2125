// onnxruntime-web as every ONNX family of the engine's worker uses it: the backend ("auto":
// WebGPU when the browser gives an adapter, else WASM), the build that carries it, and a
// session pinned like bim_core/runtimes/onnx_session.py's (optimization level, sequential
// execution, one inter-op thread); only the WASM threads are the volunteer's choice.

const VENDOR = new URL("../vendor/", import.meta.url);

export async function pickBackend(requested) {
  if (requested === "wasm" || requested === "webgpu") return requested;
  if (requested !== "auto") throw new Error(`unknown backend ${JSON.stringify(requested)}`);
  try {
    if (self.navigator.gpu && (await self.navigator.gpu.requestAdapter())) return "webgpu";
  } catch (err) {
    console.info("bim engine: no WebGPU adapter", err);
  }
  return "wasm";
}

/** {ort, session, backend, threads, runtime} for the model bytes. `webgpuLayout` ("NCHW")
 * keeps onnxruntime's WebGPU backend from converting convolutions to NHWC (see
 * ./image-runner.js for why a model may need that). */
export async function ortSession(modelBytes, { backend = "auto", threads = 1, webgpuLayout = null } = {}) {
  const used = await pickBackend(backend);
  // The WebGPU build also carries the WASM backend; the WASM-only build is the smaller
  // download and the binary whose output was measured against native onnxruntime.
  const ort = await import(new URL(used === "webgpu" ? "ort/ort.webgpu.min.mjs" : "ort/ort.wasm.min.mjs", VENDOR).href);
  ort.env.wasm.wasmPaths = new URL("ort/", VENDOR).href;
  ort.env.wasm.proxy = false;
  const usedThreads = self.crossOriginIsolated ? Math.max(1, threads | 0) : 1;
  ort.env.wasm.numThreads = usedThreads;
  ort.env.logLevel = "error";
  const session = await ort.InferenceSession.create(new Uint8Array(modelBytes), {
    executionProviders: [used === "webgpu" && webgpuLayout ? { name: "webgpu", preferredLayout: webgpuLayout } : used],
    // Pinned like the Python node: the optimization level changes the last bits.
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    interOpNumThreads: 1,
  });
  const versions = ort.env.versions || {};
  return {
    ort,
    session,
    backend: used,
    threads: used === "wasm" ? usedThreads : 1,
    runtime: `onnxruntime-web-${versions.web || versions.common || "unknown"}`,
  };
}

/** A tensor's values on the CPU: an output left on the GPU is downloaded and released. */
export async function tensorData(tensor) {
  return !tensor.location || tensor.location === "cpu" ? tensor.data : tensor.getData(true);
}

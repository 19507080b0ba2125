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

import { startEngineWorker } from "./engine.js";

export async function createTextEngine({ manifestUrl, threads = 1, onProgress = () => {}, budgetBytes, expectedChecksum = "" } = {}) {
  if (!manifestUrl) throw new Error("createTextEngine needs a manifestUrl");
  const { call, close, info, cache } = await startEngineWorker(new URL("./text-worker.js", import.meta.url), {
    workerName: "bim-text-engine",
    engineName: "text engine",
    onProgress,
    init: { manifestUrl, threads, budgetBytes, expectedChecksum },
  });
  return {
    taskType: "text",
    runtime: info.runtime,
    backend: info.backend,
    threads: info.threads,
    modelChecksum: info.modelChecksum,
    cache,
    manifest: info.manifest,
    settings: info.settings,
    // timings ({tokenizeMs, promptMs, decodeMs}) are for measurements; a result signs finish, text, tokens.
    async generate(inputs, onToken) {
      const heard = onToken && ((msg) => onToken({ token: msg.token, delta: msg.delta, text: msg.text, count: msg.count }));
      const { finish, text, tokens, timings } = await call("generate", { prompt: inputs.prompt, maxTokens: inputs.max_tokens }, heard);
      return { finish, text, tokens, timings };
    },
    async promptTokens(prompt) {
      return call("promptTokens", { prompt });
    },
    close,
  };
}

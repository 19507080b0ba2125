// What this browser can do (the dashboard refuses to start without what every result needs)
// and how it describes itself to the registry: the `env` of registration and of every hello
// (docs/protocol.md §3.3, §9).

import { environment } from "./engine.js";
import { ed25519Works } from "./keystore.js";

/** {subtle, ed25519, wasm, isolated, webgpu (navigator.gpu exists), webgpuAdapter: the adapter's
 * vendor, "" when the adapter does not say, null when there is no adapter}. */
export async function capabilitiesProbe() {
  const caps = {
    subtle: typeof crypto !== "undefined" && Boolean(crypto.subtle),
    ed25519: false,
    wasm: typeof WebAssembly === "object",
    isolated: globalThis.crossOriginIsolated === true,
    webgpu: typeof navigator !== "undefined" && typeof navigator.gpu !== "undefined",
    webgpuAdapter: null,
  };
  if (caps.subtle) caps.ed25519 = await ed25519Works();
  if (caps.webgpu) caps.webgpuAdapter = await adapterVendor();
  return caps;
}

async function adapterVendor() {
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? String(adapter.info?.vendor || "") : null;
  } catch {
    return null;
  }
}

/** Why this browser cannot contribute, or null when it can. */
export function requirementsMissing(caps) {
  if (!caps.subtle) {
    return "WebCrypto is not available: open this page over https:// (or http://127.0.0.1 / http://localhost).";
  }
  if (!caps.ed25519) {
    return "This browser's WebCrypto has no Ed25519, which signs every result. Use a current Chrome, Edge, Firefox or Safari.";
  }
  if (!caps.wasm) return "This browser has no WebAssembly, which runs the model.";
  return null;
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

async function gpuFamily(engine) {
  if (engine.gpuFamily) return String(engine.gpuFamily).toLowerCase();
  if (engine.backend !== "webgpu") return "none";
  return ((await adapterVendor()) || "unknown").toLowerCase();
}

/** The `env` object for a loaded engine. */
export async function nodeEnv(engine) {
  const seen = environment();
  return {
    os: osFamily(navigator.userAgentData?.platform || seen.userAgent || navigator.userAgent),
    runtime: engine.runtime,
    backend: engine.backend,
    gpu_family: await gpuFamily(engine),
    cpu_count: seen.hardwareConcurrency || navigator.hardwareConcurrency || 1,
    // Without it, the registry sends peer-to-peer jobs to other nodes while it can. Every
    // family this page computes takes them (./peer-jobs.js; text streams over the channel).
    webrtc: typeof globalThis.RTCPeerConnection === "function",
  };
}

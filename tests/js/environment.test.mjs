// contributor/static/js/environment.js: how the browser names itself in `env`, and what
// stops the dashboard before it makes a key.
import assert from "node:assert/strict";
import { test } from "node:test";

import { js } from "./helpers.mjs";

const environment = await import(js("environment.js"));

test("OS families as the protocol names them (§3.3)", () => {
  const cases = {
    "Linux": "linux", "X11; Ubuntu": "linux", "Windows": "windows", "Win32": "windows", "macOS": "macos",
    "MacIntel": "macos", "Android": "android", "Linux; Android 14": "android", "iPhone": "ios", "iPad": "ios",
    "CrOS x86_64": "chromeos", "Chrome OS": "chromeos", "": "unknown", "Plan 9": "unknown",
  };
  for (const [platform, family] of Object.entries(cases)) assert.equal(environment.osFamily(platform), family, platform);
  assert.equal(environment.osFamily(undefined), "unknown");
});

test("what a browser lacks, most fundamental first", () => {
  const able = { subtle: true, ed25519: true, wasm: true };
  assert.equal(environment.requirementsMissing(able), null);
  assert.match(environment.requirementsMissing({ ...able, subtle: false, ed25519: false }), /WebCrypto is not available/);
  assert.match(environment.requirementsMissing({ ...able, ed25519: false }), /no Ed25519/);
  assert.match(environment.requirementsMissing({ ...able, wasm: false }), /no WebAssembly/);
});

test("Node's WebCrypto and WebAssembly pass the probe", async () => {
  const caps = await environment.capabilitiesProbe();
  assert.equal(caps.subtle, true);
  assert.equal(caps.ed25519, true);
  assert.equal(caps.wasm, true);
  assert.equal(environment.requirementsMissing(caps), null);
});

test("env says webrtc when the browser has RTCPeerConnection, for every task family", async () => {
  const saved = { navigator: globalThis.navigator, RTCPeerConnection: globalThis.RTCPeerConnection };
  Object.defineProperty(globalThis, "navigator", { value: { userAgent: "X11; Linux x86_64", hardwareConcurrency: 4 }, configurable: true, writable: true });
  try {
    for (const taskType of ["embedding", "image", "text"]) {
      const engine = { runtime: "test-1", backend: "wasm", taskType };
      globalThis.RTCPeerConnection = function RTCPeerConnection() {};
      assert.equal((await environment.nodeEnv(engine)).webrtc, true, taskType);
      delete globalThis.RTCPeerConnection;
      assert.equal((await environment.nodeEnv(engine)).webrtc, false, taskType);
    }
  } finally {
    Object.defineProperty(globalThis, "navigator", { value: saved.navigator, configurable: true, writable: true });
    if (saved.RTCPeerConnection) globalThis.RTCPeerConnection = saved.RTCPeerConnection;
  }
});

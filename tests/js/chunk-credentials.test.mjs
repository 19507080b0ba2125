// A model whose license forbids redistribution serves its chunks only to a signed-in user who
// accepted it (docs/protocol.md §3.4): the page's downloads and the Service Worker's both
// send the session cookie (a same-origin fetch with credentials), and a refusal (401/403) is
// never taken for the chunk. Node's fetch, Response and WebCrypto stand in for the browser's.
import assert from "node:assert/strict";
import { test } from "node:test";

import { js } from "./helpers.mjs";

const store = await import(js("model-store.js"));

const BYTES = new TextEncoder().encode("restricted weights");
const SHA256 = await store.sha256Hex(BYTES);
const CHUNK = { sha256: SHA256, url: `/artifacts/chunks/${SHA256}`, sri: store.sriFor(SHA256), size: BYTES.byteLength };

function recordingFetch(answers) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ url, init });
    const [status, body] = answers.length > 1 ? answers.shift() : answers[0];
    return new Response(body, { status });
  };
  return { calls, fetchImpl };
}

test("a chunk download sends the session cookie (same-origin credentials)", async () => {
  const { calls, fetchImpl } = recordingFetch([[200, BYTES]]);
  const bytes = await store.chunkDownload(CHUNK, { fetchImpl });
  assert.deepEqual(new Uint8Array(bytes), BYTES);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].init.credentials, "same-origin");
  assert.equal(calls[0].init.integrity, CHUNK.sri);
});

test("a refused chunk (license not accepted) is never used", async () => {
  const refusal = JSON.stringify({ code: "license_not_accepted", detail: "accept the license first" });
  const { calls, fetchImpl } = recordingFetch([[403, refusal]]);
  await assert.rejects(store.chunkDownload(CHUNK, { fetchImpl, attempts: 2 }), /HTTP 403/);
  assert.equal(calls.length, 2);
});

test("the Service Worker's own download keeps the credentials", async () => {
  const handlers = {};
  const calls = [];
  globalThis.self = {
    location: { origin: "https://bim.test" },
    addEventListener: (type, handler) => { handlers[type] = handler; },
    clients: { claim: async () => {} },
    skipWaiting: () => {},
  };
  const realFetch = globalThis.fetch;
  const realWarn = console.warn;
  console.warn = () => {}; // no IndexedDB under Node: the worker says so and goes to the network
  globalThis.fetch = async (url, init) => {
    calls.push({ url, init });
    return new Response(BYTES, { status: 200 });
  };
  try {
    await import(new URL("../../contributor/static/sw.js", import.meta.url).href);
    let answered;
    handlers.fetch({
      request: { method: "GET", url: `https://bim.test${CHUNK.url}` },
      respondWith: (promise) => { answered = promise; },
    });
    const response = await answered;
    assert.equal(response.status, 200);
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), BYTES);
    assert.equal(calls.length, 1);
    assert.equal(calls[0].url, CHUNK.url);
    assert.equal(calls[0].init.credentials, "same-origin");
  } finally {
    globalThis.fetch = realFetch;
    console.warn = realWarn;
    delete globalThis.self;
  }
});

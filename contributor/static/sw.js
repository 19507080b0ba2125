// BIM Service Worker (module, registered by engine.js at scope "/"; served with
// Service-Worker-Allowed: / by bim_site.middleware).
//
// It intercepts GET /artifacts/chunks/<sha256> only. A chunk already in IndexedDB (and still
// hashing to its address) is answered from there: a second visit makes no chunk request.
// Otherwise it downloads the chunk, checks its SHA-256 and size, refuses wrong bytes and
// downloads again (at most MAX_DOWNLOADS times), and answers 502 when no download matched:
// no page or worker it controls ever receives bytes that do not match their address.
// It does not write to the store: js/model-store.js stores chunks under the byte budget and
// keeps the per-model records LRU eviction needs (see the comment at its top).
import { chunkDownload, chunkGetVerified, sriFor, MAX_DOWNLOADS } from "./js/model-store.js";

const CHUNK_PATH = /^\/artifacts\/chunks\/([0-9a-f]{64})$/;

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  const match = CHUNK_PATH.exec(url.pathname);
  if (!match) return;
  event.respondWith(answerChunk(match[1], url));
});

function chunkResponse(bytes, source) {
  return new Response(bytes, {
    status: 200,
    headers: {
      "Content-Type": "application/octet-stream",
      "Cross-Origin-Resource-Policy": "same-origin",
      "X-BIM-Chunk-Source": source,
    },
  });
}

async function answerChunk(sha256, url) {
  try {
    const cached = await chunkGetVerified(sha256);
    if (cached) return chunkResponse(cached, "indexeddb");
  } catch (err) {
    console.warn("bim sw: IndexedDB read failed, going to the network", err);
  }
  try {
    // The size is not in the URL: the hash alone decides (the page checks the size too).
    const bytes = await chunkDownload(
      { sha256, url: url.pathname, sri: sriFor(sha256), size: -1 },
      { attempts: MAX_DOWNLOADS, fetchImpl: (u, init) => fetch(u, init) },
    );
    return chunkResponse(bytes, "network");
  } catch (err) {
    return new Response(String(err && err.message ? err.message : err), { status: 502, headers: { "Content-Type": "text/plain" } });
  }
}

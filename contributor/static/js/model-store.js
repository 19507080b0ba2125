// Model delivery in the browser: the subnet manifest, content-addressed chunks verified
// before they are stored or used, IndexedDB as the cache, LRU eviction under a byte budget.
// Follows docs/protocol.md §3.4 step by step, like bim_node/artifacts.py.
//
// Who does what:
// - This module (imported by the engine's Web Worker, by sw.js and by test pages) does the
//   whole job: manifest checks, chunk lookups in IndexedDB (re-verified on every read),
//   downloads with `integrity` + its own SHA-256 check (bounded retries), storage under the
//   budget, reassembly, whole-artifact checks. Running in the worker keeps 23 MB of hashing
//   and assembly off the page's main thread.
// - sw.js (the Service Worker, scope "/") intercepts GET /artifacts/chunks/<sha256> from any
//   page or worker it controls: it answers from IndexedDB when the chunk is there (so a
//   second visit puts nothing on the network) and otherwise fetches, verifies and hands back
//   only bytes that hash to the address (a 502 after the retries). It never writes to the
//   store: only this module stores, so the byte budget and the model records stay exact.
//
// IndexedDB "bim-models" v1:
//   chunks: key sha256 -> {sha256, size, bytes: ArrayBuffer}
//   models: key model_checksum -> {key, subnet, manifestUrl, chunks: [sha256...], bytes,
//           lastUsed, complete}
// A model's bytes are the sum of its distinct chunks (model + tokenizer). Chunks shared by two
// models are stored once and deleted only when no remaining model lists them.

export const DB_NAME = "bim-models";
export const DEFAULT_BUDGET_BYTES = 512 * 1024 * 1024;
export const MAX_DOWNLOADS = 3;
const HEX64 = /^[0-9a-f]{64}$/;

export class ArtifactError extends Error {
  constructor(message) {
    super(message);
    this.name = "ArtifactError";
  }
}

// ---------- hashing ----------

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  let out = "";
  for (const b of digest) out += b.toString(16).padStart(2, "0");
  return out;
}

export function sriFor(hex) {
  let binary = "";
  for (let i = 0; i < 64; i += 2) binary += String.fromCharCode(parseInt(hex.slice(i, i + 2), 16));
  return "sha256-" + btoa(binary);
}

function requireHex(value, what) {
  // Hashes become IndexedDB keys: anything but 64 lowercase hex digits is refused.
  if (typeof value !== "string" || !HEX64.test(value)) throw new ArtifactError(`${what}: ${JSON.stringify(value)} is not a lowercase hex SHA-256`);
}

// ---------- IndexedDB ----------

function promisify(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  });
}

let dbPromise = null;

export function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, 1);
      request.onupgradeneeded = () => {
        const db = request.result;
        if (!db.objectStoreNames.contains("chunks")) db.createObjectStore("chunks", { keyPath: "sha256" });
        if (!db.objectStoreNames.contains("models")) db.createObjectStore("models", { keyPath: "key" });
      };
      request.onsuccess = () => {
        const db = request.result;
        // Another context upgrading the schema: let it, reopen next time.
        db.onversionchange = () => { db.close(); dbPromise = null; };
        resolve(db);
      };
      request.onerror = () => { dbPromise = null; reject(request.error); };
    });
  }
  return dbPromise;
}

async function storeGet(name, key) {
  const db = await openDb();
  return promisify(db.transaction(name, "readonly").objectStore(name).get(key));
}

async function storeGetAll(name) {
  const db = await openDb();
  return promisify(db.transaction(name, "readonly").objectStore(name).getAll());
}

async function storeAllKeys(name) {
  const db = await openDb();
  return promisify(db.transaction(name, "readonly").objectStore(name).getAllKeys());
}

async function storePut(name, value) {
  const db = await openDb();
  const tx = db.transaction(name, "readwrite");
  tx.objectStore(name).put(value);
  return done(tx);
}

/** A cached chunk's bytes, or null when absent or when they no longer hash to the key
 * (then it is deleted so that the caller fetches it again). */
export async function chunkGetVerified(sha256) {
  requireHex(sha256, "chunk");
  const record = await storeGet("chunks", sha256);
  if (!record) return null;
  if ((await sha256Hex(record.bytes)) !== sha256) {
    console.warn(`bim: cached chunk ${sha256} is corrupt; dropping it`);
    const db = await openDb();
    const tx = db.transaction("chunks", "readwrite");
    tx.objectStore("chunks").delete(sha256);
    await done(tx);
    return null;
  }
  return record.bytes;
}

async function chunkPut(sha256, bytes) {
  // Checked again right here: nothing that does not hash to its key is ever stored.
  if ((await sha256Hex(bytes)) !== sha256) throw new ArtifactError(`refusing to store chunk ${sha256}: its bytes hash differently`);
  await storePut("chunks", { sha256, size: bytes.byteLength, bytes });
}

/** What the store holds: models (most recently used first) and the bytes of all chunks. */
export async function cacheStatus() {
  const models = (await storeGetAll("models")).sort((a, b) => b.lastUsed - a.lastUsed);
  const keys = await storeAllKeys("chunks");
  const sizes = new Map();
  for (const m of models) for (const [sha, size] of m.chunkSizes || []) sizes.set(sha, size);
  let bytes = 0;
  for (const k of keys) bytes += sizes.get(k) || 0;
  return {
    models: models.map((m) => ({ key: m.key, subnet: m.subnet, bytes: m.bytes, lastUsed: m.lastUsed, complete: m.complete })),
    chunks: keys.length,
    bytes,
  };
}

/** Drop everything (a user's "clear cache" button, tests). */
export async function cacheClear() {
  const db = await openDb();
  const tx = db.transaction(["chunks", "models"], "readwrite");
  tx.objectStore("chunks").clear();
  tx.objectStore("models").clear();
  await done(tx);
}

/** Make room for `needed` more bytes for model `keepKey`, dropping least recently used models
 * (never keepKey). Returns whether it fits. Also removes chunks no model lists (left by a
 * crash between storing chunks and recording the model). */
async function makeRoom(keepKey, keepChunks, budget) {
  const models = await storeGetAll("models");
  const others = models.filter((m) => m.key !== keepKey).sort((a, b) => a.lastUsed - b.lastUsed);
  const sizeOf = new Map(keepChunks);
  const usedBytes = (list) => {
    const seen = new Map(keepChunks);
    for (const m of list) for (const [sha, size] of m.chunkSizes || []) seen.set(sha, size);
    let total = 0;
    for (const size of seen.values()) total += size;
    return total;
  };
  let own = 0;
  for (const size of sizeOf.values()) own += size;
  // A model bigger than the whole budget is run from memory, not cached: evicting the
  // others would not make it fit.
  if (own > budget) return { fits: false, evicted: [] };
  const evicted = [];
  while (others.length && usedBytes(others) > budget) evicted.push(others.shift());
  const fits = usedBytes(others) <= budget;
  const referenced = new Set(sizeOf.keys());
  for (const m of others) for (const [sha] of m.chunkSizes || []) referenced.add(sha);
  const stored = await storeAllKeys("chunks");
  const db = await openDb();
  const tx = db.transaction(["chunks", "models"], "readwrite");
  for (const m of evicted) tx.objectStore("models").delete(m.key);
  for (const sha of stored) if (!referenced.has(sha)) tx.objectStore("chunks").delete(sha);
  await done(tx);
  for (const m of evicted) console.info(`bim: evicted model ${m.key} (${m.subnet}, ${m.bytes} bytes) to stay under ${budget} bytes`);
  return { fits, evicted: evicted.map((m) => m.key) };
}

// ---------- network ----------

/** Download one chunk until its bytes hash to its address: `integrity` makes the browser
 * check the SRI, then the SHA-256 and size are checked here too. Wrong bytes are refused
 * (never stored, never returned) and fetched again, at most `attempts` downloads. */
export async function chunkDownload(chunk, { attempts = MAX_DOWNLOADS, fetchImpl = fetch, onRefused } = {}) {
  let lastError = "";
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      // no-store: IndexedDB is the cache; a refused response must not come back from the
      // HTTP cache on the retry.
      const response = await fetchImpl(chunk.url, { integrity: chunk.sri, cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const bytes = await response.arrayBuffer();
      const sizeOk = chunk.size < 0 || bytes.byteLength === chunk.size; // -1: size unknown (sw.js)
      if (sizeOk && (await sha256Hex(bytes)) === chunk.sha256) return bytes;
      lastError = `served ${bytes.byteLength} bytes that do not hash to the chunk's sha256`;
    } catch (err) {
      lastError = String(err && err.message ? err.message : err);
    }
    console.warn(`bim: chunk ${chunk.sha256} refused (download ${attempt} of ${attempts}): ${lastError}`);
    if (onRefused) onRefused(chunk.sha256, attempt, lastError);
  }
  throw new ArtifactError(`chunk ${chunk.sha256} from ${chunk.url} did not match its sha256 in ${attempts} downloads (${lastError})`);
}

function checkManifest(manifest, expectedChecksum) {
  if (!manifest || typeof manifest !== "object" || !Array.isArray(manifest.artifacts)) throw new ArtifactError("not a manifest");
  requireHex(manifest.model_checksum, "model_checksum");
  if (expectedChecksum && manifest.model_checksum !== expectedChecksum) {
    throw new ArtifactError(`manifest model_checksum ${manifest.model_checksum} differs from the subnet's ${expectedChecksum}`);
  }
  for (const artifact of manifest.artifacts) {
    requireHex(artifact.sha256, artifact.name);
    let total = 0;
    for (const chunk of artifact.chunks) {
      requireHex(chunk.sha256, `${artifact.name} chunk`);
      // The browser checks the SRI string, we check the hex: both must name the same bytes.
      if (chunk.sri !== undefined && chunk.sri !== sriFor(chunk.sha256)) throw new ArtifactError(`${artifact.name}: chunk ${chunk.sha256} has an sri that names other bytes`);
      if (!Number.isInteger(chunk.size) || chunk.size < 0) throw new ArtifactError(`${artifact.name}: chunk ${chunk.sha256} has no size`);
      total += chunk.size;
    }
    if (total !== artifact.size) throw new ArtifactError(`${artifact.name}: chunk sizes add up to ${total}, not ${artifact.size}`);
  }
  if (!manifest.artifacts.some((a) => a.role === "model")) throw new ArtifactError("the manifest lists no artifact with role 'model'");
}

/**
 * Fetch (or read from IndexedDB) and verify every artifact of a subnet's manifest.
 * Resolves to {manifest, files: {role: ArrayBuffer}, checksums: {role: hex},
 * cache: {fromCache, chunkRequests, bytes, persisted, evicted}}.
 */
export async function modelLoad(manifestUrl, { expectedChecksum = "", budgetBytes = DEFAULT_BUDGET_BYTES, onProgress = () => {}, fetchImpl = fetch, attempts = MAX_DOWNLOADS } = {}) {
  onProgress({ phase: "manifest", done: 0, total: 1, fromCache: false });
  const response = await fetchImpl(manifestUrl, { credentials: "same-origin", cache: "no-cache" });
  if (!response.ok) throw new ArtifactError(`${manifestUrl}: HTTP ${response.status}`);
  const manifest = await response.json();
  checkManifest(manifest, expectedChecksum);
  onProgress({ phase: "manifest", done: 1, total: 1, fromCache: false });

  const key = manifest.model_checksum;
  const chunkSizes = new Map();
  for (const artifact of manifest.artifacts) for (const c of artifact.chunks) chunkSizes.set(c.sha256, c.size);
  let modelBytes = 0;
  for (const size of chunkSizes.values()) modelBytes += size;

  // Room first (sizes are known from the manifest), so the store never goes over budget.
  const { fits, evicted } = await makeRoom(key, chunkSizes, budgetBytes);
  const previous = await storeGet("models", key);
  const record = {
    key,
    subnet: manifest.subnet,
    manifestUrl,
    chunkSizes: [...chunkSizes.entries()],
    bytes: modelBytes,
    lastUsed: Date.now(),
    complete: false,
  };
  if (fits) await storePut("models", { ...record, complete: Boolean(previous && previous.complete) });

  const got = new Map();
  let chunkRequests = 0;
  let fromCacheCount = 0;
  const total = chunkSizes.size;
  let doneCount = 0;
  for (const artifact of manifest.artifacts) {
    for (const chunk of artifact.chunks) {
      if (got.has(chunk.sha256)) continue;
      let bytes = await chunkGetVerified(chunk.sha256);
      if (bytes && bytes.byteLength === chunk.size) {
        fromCacheCount += 1;
      } else {
        bytes = await chunkDownload(chunk, {
          attempts,
          fetchImpl,
          onRefused: () => { chunkRequests += 1; },
        });
        chunkRequests += 1;
        if (fits) await chunkPut(chunk.sha256, bytes);
      }
      got.set(chunk.sha256, bytes);
      doneCount += 1;
      onProgress({ phase: "chunks", done: doneCount, total, fromCache: fromCacheCount === doneCount });
    }
  }

  const files = {};
  const checksums = {};
  for (const artifact of manifest.artifacts) {
    const whole = new Uint8Array(artifact.size);
    let offset = 0;
    for (const chunk of artifact.chunks) {
      whole.set(new Uint8Array(got.get(chunk.sha256)), offset);
      offset += chunk.size;
    }
    const hex = await sha256Hex(whole);
    if (offset !== artifact.size || hex !== artifact.sha256) throw new ArtifactError(`${artifact.name}: reassembled file does not match its size and sha256`);
    files[artifact.role] = whole.buffer;
    checksums[artifact.role] = hex;
  }
  if (checksums.model !== manifest.model_checksum) throw new ArtifactError("the model artifact does not hash to the manifest's model_checksum");
  if (manifest.tokenizer_checksum && checksums.tokenizer !== manifest.tokenizer_checksum) {
    throw new ArtifactError("the tokenizer artifact does not hash to the manifest's tokenizer_checksum");
  }
  if (fits) await storePut("models", { ...record, lastUsed: Date.now(), complete: true });
  return {
    manifest,
    files,
    checksums,
    cache: { fromCache: chunkRequests === 0, chunkRequests, bytes: modelBytes, persisted: fits, evicted },
  };
}

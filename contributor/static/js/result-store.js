// Committed peer-to-peer results and their inputs, kept in memory so this page can answer the
// registry's `upload_request` (docs/p2p.md §4): the signed relay `result` message, `data`
// included, exactly as it would have gone to the registry, and the inputs for `with_inputs`.
// It outlives one socket (an upload may be asked for after a reconnect: the stored message
// keeps the signature of the session that committed it, which is what the registry checks),
// as bim_node/p2p.py's ResultStore does. Bounded by bytes and by age, oldest dropped first:
// an upload comes within the job's lifetime, minutes at most, or never.
//
// It also outlives the page: with a `backend` (./result-db.js, IndexedDB) every entry kept
// or dropped is written through, and `restore` loads them when the page starts again, so a
// reload between a commit and its upload request costs the node no strike (the registry asks
// again after the next `welcome`).
//
// Pure: runs under Node 20 for tests/js/.

import { canonicalJson } from "./protocol.js";

export const DEFAULT_MAX_BYTES = 32 * 1024 * 1024;
export const DEFAULT_TTL_MS = 10 * 60 * 1000;

export class ResultStore {
  constructor({ maxBytes = DEFAULT_MAX_BYTES, ttlMs = DEFAULT_TTL_MS, clock = () => Date.now(), backend = null } = {}) {
    Object.assign(this, { maxBytes, ttlMs, clock, backend });
    this.entries = new Map(); // assignment id -> {at, size, message, inputs}, oldest first
    this.bytes = 0;
  }

  /** Keep one; false when it alone is over the budget (then it is not kept). */
  put(assignmentId, message, inputs) {
    // What the page holds: the base64 payload and the input's text, about two bytes a char.
    const size = String(message.data ?? "").length + canonicalJson(inputs).length;
    this.drop(assignmentId);
    if (size > this.maxBytes) return false;
    const entry = { at: this.clock(), size, message, inputs };
    this.entries.set(assignmentId, entry);
    this.bytes += size;
    this.backend?.put(assignmentId, entry);
    this.expire();
    while (this.bytes > this.maxBytes) this.drop(this.entries.keys().next().value);
    return true;
  }

  /** Entries a backend kept ({id, at, size, message, inputs}), oldest first, within the
   * same age and byte bounds; those past them are dropped from the backend too. */
  restore(saved) {
    for (const { id, at, size, message, inputs } of [...saved].sort((a, b) => a.at - b.at)) {
      if (typeof id !== "string" || !Number.isFinite(at) || !Number.isFinite(size) || !message) continue;
      this.entries.delete(id);
      this.entries.set(id, { at, size, message, inputs });
      this.bytes += size;
    }
    this.expire();
    while (this.bytes > this.maxBytes) this.drop(this.entries.keys().next().value);
  }

  /** {message, inputs}, or null when it was never kept, dropped or expired. */
  get(assignmentId) {
    this.expire();
    const entry = this.entries.get(assignmentId);
    return entry ? { message: entry.message, inputs: entry.inputs } : null;
  }

  get size() {
    this.expire();
    return this.entries.size;
  }

  expire() {
    const cutoff = this.clock() - this.ttlMs;
    for (const [id, entry] of this.entries) {
      if (entry.at >= cutoff) break;
      this.drop(id);
    }
  }

  drop(assignmentId) {
    const entry = this.entries.get(assignmentId);
    if (!entry) return;
    this.entries.delete(assignmentId);
    this.bytes -= entry.size;
    this.backend?.remove(assignmentId);
  }
}

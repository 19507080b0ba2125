// contributor/static/js/result-store.js: committed peer-to-peer results kept for uploads,
// bounded by bytes and by age.
import assert from "node:assert/strict";
import { test } from "node:test";

import { js } from "./helpers.mjs";

const { ResultStore } = await import(js("result-store.js"));

const result = (data) => ({ type: "result", assignment_id: "a", data });
const INPUTS = { texts: ["x"] }; // canonical JSON: 15 characters

test("keeps results by assignment until the byte budget drops the oldest", () => {
  const store = new ResultStore({ maxBytes: 100 });
  assert.equal(store.put("a1", result("A".repeat(35)), INPUTS), true); // 50
  assert.equal(store.put("a2", result("B".repeat(35)), INPUTS), true); // 100: at the budget
  assert.deepEqual(store.get("a1"), { message: result("A".repeat(35)), inputs: INPUTS });
  store.put("a3", result("C".repeat(5)), INPUTS); // 20 more: the oldest goes
  assert.equal(store.get("a1"), null);
  assert.ok(store.get("a2") && store.get("a3"));
  assert.equal(store.bytes, 70);
  // Putting the same assignment again replaces it, not counted twice.
  store.put("a3", result("D".repeat(5)), INPUTS);
  assert.equal(store.bytes, 70);
  assert.equal(store.get("a3").message.data, "DDDDD");
  // One result over the whole budget is not kept, and evicts nothing.
  assert.equal(store.put("big", result("E".repeat(200)), INPUTS), false);
  assert.equal(store.get("big"), null);
  assert.equal(store.size, 2);
});

test("forgets results older than its ttl", () => {
  let now = 1_000;
  const store = new ResultStore({ ttlMs: 600, clock: () => now });
  store.put("old", result("x"), INPUTS);
  now += 400;
  store.put("new", result("y"), INPUTS);
  now += 300; // "old" is 700 ms old, "new" 300
  assert.equal(store.get("old"), null);
  assert.ok(store.get("new"));
  now += 400;
  assert.equal(store.size, 0);
  assert.equal(store.bytes, 0);
});

test("a backend sees every entry kept and dropped, and a new page restores what is still due", () => {
  let now = 1_000;
  const saved = new Map();
  const backend = { put: (id, entry) => saved.set(id, { id, ...entry }), remove: (id) => saved.delete(id) };
  const first = new ResultStore({ maxBytes: 150, ttlMs: 60_000, clock: () => now, backend }); // 52 bytes each
  first.put("a", { data: "x".repeat(40) }, { texts: [] });
  now += 10;
  first.put("b", { data: "y".repeat(40) }, { texts: [] });
  assert.deepEqual([...saved.keys()], ["a", "b"]);
  now += 10;
  first.put("c", { data: "z".repeat(40) }, { texts: [] }); // over 150 bytes: "a" goes, in the backend too
  assert.deepEqual([...saved.keys()].sort(), ["b", "c"]);

  // The page reloads: a new store, the backend's entries restored in age order.
  now += 30_000;
  const second = new ResultStore({ maxBytes: 150, ttlMs: 60_000, clock: () => now });
  second.restore([...saved.values()].reverse());
  assert.equal(second.get("b").message.data, "y".repeat(40));
  assert.equal(second.get("c").message.data, "z".repeat(40));
  assert.equal(second.get("a"), null);
  // Past their age, restored entries go as kept ones do.
  now += 40_000;
  assert.equal(second.get("b"), null);
});

test("restore skips malformed entries a backend may hold", () => {
  const store = new ResultStore({ clock: () => 5 });
  store.restore([{ id: 7, at: 1, size: 1, message: {} }, { id: "ok", at: 2, size: 3, message: { data: "abc" } }, { id: "x", at: "no" }]);
  assert.equal(store.size, 1);
  assert.equal(store.get("ok").message.data, "abc");
});

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

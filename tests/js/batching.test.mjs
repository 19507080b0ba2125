// contributor/static/js/batching.js: how the engine groups texts into model calls, so that
// no call pads short texts to a long one's width.
import assert from "node:assert/strict";
import { test } from "node:test";

import { js } from "./helpers.mjs";

const { MAX_PADDING_RATIO, batchPlan } = await import(js("batching.js"));

const padded = (call, lengths) => call.length * Math.max(...call.map((i) => lengths[i]));
const real = (call, lengths) => call.reduce((sum, i) => sum + lengths[i], 0);

test("a long text is not a call's width for short ones (the registry's fixed suite)", () => {
  // Token lengths of subnets/defaults.py BENCHMARK_TEXTS: one is truncated at 256.
  const lengths = [14, 14, 18, 15, 5, 15, 21, 27, 19, 13, 20, 256, 19, 12, 16, 13];
  const calls = batchPlan(lengths);
  assert.deepEqual(calls.at(-1), [11]);
  assert.deepEqual(calls.flat().sort((a, b) => a - b), lengths.map((_, i) => i)); // every text once
  const area = calls.reduce((sum, call) => sum + padded(call, lengths), 0);
  assert.ok(area <= MAX_PADDING_RATIO * real(lengths.map((_, i) => i), lengths), area);
  assert.ok(area < 600, `one call would pad to 16 × 256 = 4096 tokens; the plan pads to ${area}`);
});

test("every call stays within the padding ratio and the batch size, sorted by length", () => {
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let round = 0; round < 200; round++) {
    const lengths = Array.from({ length: 1 + Math.floor(random() * 80) }, () => 1 + Math.floor(random() * 256));
    const maxBatch = 1 + Math.floor(random() * 40);
    const calls = batchPlan(lengths, { maxBatch });
    assert.deepEqual(calls.flat().sort((a, b) => a - b), lengths.map((_, i) => i));
    for (const call of calls) {
      assert.ok(call.length >= 1 && call.length <= maxBatch);
      if (call.length > 1) assert.ok(padded(call, lengths) <= MAX_PADDING_RATIO * real(call, lengths));
      for (let k = 1; k < call.length; k++) assert.ok(lengths[call[k - 1]] <= lengths[call[k]]);
    }
  }
});

test("texts of similar lengths share a call; nothing in, nothing out", () => {
  assert.deepEqual(batchPlan([10, 12, 11, 10]), [[0, 3, 2, 1]]);
  assert.deepEqual(batchPlan([10, 12, 11, 10], { maxBatch: 2 }), [[0, 3], [2, 1]]);
  assert.deepEqual(batchPlan([]), []);
  assert.deepEqual(batchPlan([0, 0]), [[0, 1]]); // an empty encoding still gets its row
  assert.deepEqual(batchPlan([5, 300], { maxBatch: 0 }), [[0], [1]]);
});

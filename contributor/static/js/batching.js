// How the engine (./engine-worker.js) groups texts into model calls. Every row of a call is
// padded to the call's longest text, and the model's cost grows with that padded area (and
// faster, with attention), so one long text in a call of short ones multiplies its cost:
// the registry's fixed benchmark suite (15 texts of 5 to 27 tokens and one truncated at 256)
// took 5 to 6.5 s per run as one call of 16 × 256, and 0.6 to 0.9 s in calls of similar
// lengths (Chromium 156, WASM, one thread): the benchmark said 2 to 5 texts/s while real
// jobs of a few short texts ran at 15 to 85 on the same engine. The rows a model call returns do not depend on their neighbours beyond
// the registry's tolerance, so how texts are grouped is ours to choose.
//
// Pure: runs in the worker and under Node (tests/js/batching.test.mjs).

/** Padded tokens a call may spend per real token before the next, longer text goes to a
 * call of its own: 1.5 keeps runs of similar lengths together, and a batch of short texts
 * never pays for a long one. */
export const MAX_PADDING_RATIO = 1.5;

/** The engine's model calls for texts of these token lengths: lists of indices into
 * `lengths`, each call sorted by length, at most `maxBatch` texts, and closed before adding
 * the next (longer) text would pad it beyond `maxPaddingRatio` × its real tokens. */
export function batchPlan(lengths, { maxBatch = 32, maxPaddingRatio = MAX_PADDING_RATIO } = {}) {
  const limit = Math.max(1, Math.floor(maxBatch) || 1);
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[a] - lengths[b] || a - b);
  const calls = [];
  let call = [];
  let realTokens = 0;
  for (const i of order) {
    const length = Math.max(1, lengths[i]);
    // Sorted, so this text sets the call's width: every row would be padded to it.
    const padded = length * (call.length + 1);
    if (call.length && (call.length >= limit || padded > maxPaddingRatio * (realTokens + length))) {
      calls.push(call);
      call = [];
      realTokens = 0;
    }
    call.push(i);
    realTokens += length;
  }
  if (call.length) calls.push(call);
  return calls;
}

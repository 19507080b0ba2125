// contributor/static/js/jobs.js: the checks before computing (docs/protocol.md §4.4) and the
// signed result and benchmark answers, on the worked example's job.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { fixture, js, keyFromSeed, verify } from "./helpers.mjs";

const jobs = await import(js("jobs.js"));
const protocol = await import(js("protocol.js"));

const { contract, contract_hash: contractHash, inputs } = fixture.hashes;
const embedding = fixture.results.find((c) => c.task_type === "embedding");
const honest = {
  type: "job", assignment_id: embedding.fields.assignment_id, job_id: contract.job_id, role: "A",
  contract, contract_hash: contractHash, inputs, deadline: "2999-01-01T00:00:00+00:00",
};
const loaded = { modelChecksum: contract.model_checksum, tokenizerChecksum: contract.tokenizer_checksum };

async function refusal(message, engine = loaded) {
  try {
    await jobs.checkJob(message, engine);
  } catch (err) {
    assert.ok(err instanceof jobs.JobRefused, String(err));
    return err.reason;
  }
  return null;
}

describe("checkJob", () => {
  test("accepts the honest job and keeps what the answer needs", async () => {
    const job = await jobs.checkJob(honest, loaded);
    assert.deepEqual(
      { ...job, contract: undefined },
      { kind: "job", assignmentId: honest.assignment_id, jobId: contract.job_id, role: "A", contract: undefined,
        contractHash, taskType: "embedding", inputs, texts: inputs.texts, deadline: Date.parse(honest.deadline) },
    );
    // No deadline is no deadline, and a contract without task_type is an embedding one.
    const untyped = { ...contract };
    delete untyped.task_type;
    const untypedHash = await protocol.contractHash(untyped);
    const job2 = await jobs.checkJob({ ...honest, contract: untyped, contract_hash: untypedHash, deadline: null }, loaded);
    assert.equal(job2.deadline, null);
  });

  test("refuses, in the protocol's order, with the reason job_failed reports", async () => {
    const cases = [
      [{ contract: undefined }, "bad_message"],
      [{ contract_hash: 7 }, "bad_message"],
      [{ contract: { ...contract, task_type: "text" } }, "bad_message"],
      [{ inputs: { texts: [] } }, "bad_message"],
      [{ inputs: { texts: ["a", 2] } }, "bad_message"],
      [{ inputs: { texts: ["NaN has no hash"], n: NaN } }, "bad_message"],
      [{ inputs: { texts: ["tampered"] } }, "bad_input_hash"],
      [{ contract: { ...contract, tolerances: { cosine_min: 0.5, norm_tolerance: 0.001 } } }, "bad_contract_hash"],
      [{ job_id: "00000000-0000-4000-8000-000000000000" }, "bad_message"],
      [{ deadline: "yesterday" }, "bad_message"],
    ];
    for (const [change, reason] of cases) assert.equal(await refusal({ ...honest, ...change }), reason, JSON.stringify(change));
    assert.equal(await refusal(honest, { ...loaded, modelChecksum: "cd".repeat(32) }), "model_mismatch");
    assert.equal(await refusal(honest, { ...loaded, tokenizerChecksum: "cd".repeat(32) }), "model_mismatch");
    // An engine that does not know its tokenizer's checksum trusts the model checksum alone.
    assert.equal(await refusal(honest, { ...loaded, tokenizerChecksum: undefined }), null);
  });
});

describe("peer-to-peer jobs", () => {
  // The worked example's job as a peer-to-peer one: no inputs in the offer, the contract
  // names the transport and the input summary (docs/p2p.md §1).
  const p2pContract = { ...contract, transport: "p2p", input_summary: { items: 2 } };
  const p2pOffer = async (changes = {}) => {
    const c = { ...p2pContract, ...changes };
    for (const [name, value] of Object.entries(changes)) if (value === undefined) delete c[name];
    const offer = { ...honest, contract: c, contract_hash: await protocol.contractHash(c), transport: "p2p", ice_servers: [] };
    delete offer.inputs;
    return offer;
  };
  const refused = async (promise) => {
    try {
      await promise;
    } catch (err) {
      assert.ok(err instanceof jobs.JobRefused, String(err));
      return err.reason;
    }
    return null;
  };

  test("an offer is checked without inputs and waits for them", async () => {
    const offer = await p2pOffer();
    const job = await jobs.checkP2pOffer(offer, loaded);
    assert.equal(job.transport, "p2p");
    assert.equal(job.texts, null);
    assert.equal(job.items, 2);
    assert.equal(job.contractHash, offer.contract_hash);
    assert.equal(await refused(jobs.checkP2pOffer({ ...offer, contract_hash: contractHash }, loaded)), "bad_contract_hash");
    assert.equal(await refused(jobs.checkP2pOffer(await p2pOffer({ transport: undefined }), loaded)), "bad_message");
    assert.equal(await refused(jobs.checkP2pOffer(await p2pOffer({ input_summary: { items: 2, chars: 9 } }), loaded)), "bad_message");
    assert.equal(await refused(jobs.checkP2pOffer(offer, { ...loaded, modelChecksum: "cd".repeat(32) })), "model_mismatch");
  });

  test("the user's inputs must be the contract's: form, hash, summary, policy", async () => {
    const job = await jobs.checkP2pOffer(await p2pOffer(), loaded);
    const ready = await jobs.checkP2pInputs(job, inputs);
    assert.deepEqual(ready.texts, inputs.texts);
    assert.deepEqual(ready.inputs, inputs);
    const cases = [
      [null, "bad_input"],
      [["hello world"], "bad_input"],
      [{ texts: inputs.texts, extra: 1 }, "bad_input"],
      [{ texts: [] }, "bad_input"],
      [{ texts: ["a", 3] }, "bad_input"],
      [{ texts: ["   ", "x"] }, "bad_input"],
      [{ texts: ["a\u0000b"] }, "bad_input"],
      [{ texts: ["\uD800 a lone surrogate"] }, "bad_input"],
      [{ texts: ["hello world", "Grüße aus Köln!"] }, "bad_input_hash"],
    ];
    for (const [given, reason] of cases) assert.equal(await refused(jobs.checkP2pInputs(job, given)), reason, JSON.stringify(given));
    // More texts than the contract's limit, before any hashing.
    const limited = await jobs.checkP2pOffer(await p2pOffer({ limits: { ...contract.limits, max_items: 1 } }), loaded);
    assert.equal(await refused(jobs.checkP2pInputs(limited, inputs)), "bad_input");
    // A text longer than the contract's max_chars (code points, as the registry counts them).
    const short = await jobs.checkP2pOffer(await p2pOffer({ limits: { ...contract.limits, max_chars: 11 } }), loaded);
    assert.equal(await refused(jobs.checkP2pInputs(short, inputs)), "bad_input");
    const roomy = await jobs.checkP2pOffer(await p2pOffer({ limits: { ...contract.limits, max_chars: 15 } }), loaded);
    assert.notEqual(await refused(jobs.checkP2pInputs(roomy, inputs)), "bad_input");
    // A summary that does not count these inputs: the user's submit lied to the registry.
    const one = { texts: ["hello world"] };
    const miscounted = await jobs.checkP2pOffer(await p2pOffer({ input_hash: await protocol.inputHash(one) }), loaded);
    assert.equal(await refused(jobs.checkP2pInputs(miscounted, one)), "bad_input");
    // The contract's content policy, which only the nodes can check on a peer-to-peer input.
    const policy = { id: "p", version: 1, input: { blocked: [{ name: "no-koeln", patterns: ["köln"] }] } };
    const guarded = await jobs.checkP2pOffer(await p2pOffer({ policy }), loaded);
    assert.equal(await refused(jobs.checkP2pInputs(guarded, inputs)), "content_policy:no-koeln");
  });
});

describe("benchmarkTask", () => {
  test("takes 1 to 20 runs of a non-empty list of texts", () => {
    const message = { type: "benchmark", benchmark_id: "b1", inputs: { texts: ["a", "b"] }, runs: 3 };
    assert.deepEqual(
      jobs.benchmarkTask(message),
      { kind: "benchmark", benchmarkId: "b1", taskType: "embedding", inputs: message.inputs, texts: ["a", "b"], runs: 3 },
    );
    for (const change of [{ runs: 0 }, { runs: 21 }, { runs: 2.5 }, { inputs: { texts: [] } }, { inputs: {} }, { inputs: null }]) {
      assert.equal(jobs.benchmarkTask({ ...message, ...change }), null, JSON.stringify(change));
    }
  });
});

describe("signed answers", () => {
  const output = { data: Float32Array.from(embedding.result.data), rows: embedding.result.rows, dim: embedding.result.dim };

  test("a result is the worked example's, byte for byte, signed by the session key", async () => {
    const session = await keyFromSeed(fixture.keys.session_seed_hex);
    const job = await jobs.checkJob(honest, loaded);
    const result = await jobs.buildResult(job, output, session, 41.6);
    assert.deepEqual(result, {
      type: "result", assignment_id: honest.assignment_id, job_id: contract.job_id, input_hash: contract.input_hash,
      result_hash: embedding.fields.result_hash, shape: [2, 4], encoding: "f32le", data: embedding.data,
      elapsed_ms: 42, signature: embedding.signature,
    });
  });

  test("an engine output that does not answer the texts is not signed", async () => {
    const session = await keyFromSeed(fixture.keys.session_seed_hex);
    const job = await jobs.checkJob(honest, loaded);
    const oneRow = { data: output.data.subarray(0, 4), rows: 1, dim: 4 };
    await assert.rejects(jobs.buildResult(job, oneRow, session, 1), /compute returned 1x4 for 2 texts/);
    await assert.rejects(jobs.buildResult(job, { ...output, dim: 0 }, session, 1), /positive integers/);
  });

  test("a benchmark answer signs the last run's output and every run's time", async () => {
    const session = await keyFromSeed(fixture.keys.session_seed_hex);
    const b = fixture.benchmark;
    const task = { kind: "benchmark", benchmarkId: b.benchmark_id, texts: inputs.texts, runs: b.timings_ms.length };
    const answer = await jobs.buildBenchmarkResult(task, output, b.timings_ms, session);
    assert.deepEqual(answer, {
      type: "benchmark_result", benchmark_id: b.benchmark_id, timings_ms: b.timings_ms, shape: [2, 4], encoding: "f32le",
      data: embedding.data, result_hash: b.result_hash, signature: b.signature,
    });
    assert.ok(await verify(fixture.keys.session_public, answer.signature, protocol.benchmarkMessage(answer)));
  });
});

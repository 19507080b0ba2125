// A browser text node's side of a text job (contributor/static/js/jobs.js with ./text-jobs.js,
// ./session.js's partials): the checks before generating, in the Python node's order and with
// its reasons, and the signed result, byte for byte the one Python signs (fixture).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { fixture, js, keyFromSeed, verify } from "./helpers.mjs";

const jobs = await import(js("jobs.js"));
const protocol = await import(js("protocol.js"));
const textJobs = await import(js("text-jobs.js"));
const { partialSender, PARTIAL_INTERVAL_MS } = await import(js("session.js"));

const MODEL = "ab".repeat(32);
const loaded = { modelChecksum: MODEL, taskType: "text" };
const INPUTS = { prompt: "Say hi in German.", max_tokens: 6 };

async function textJob({ inputs = INPUTS, contractChanges = {} } = {}) {
  const contract = {
    job_id: "0c9d7e4a-3b21-4f8e-a6d5-1f2e3d4c5b01", task_type: "text", model_checksum: MODEL,
    input_hash: await protocol.inputHash(INPUTS), determinism: { seed: 0, temperature: 0, top_p: 1 },
    preprocessing: { max_new_tokens: 256, n_ctx: 2048 }, limits: { max_items: 1 }, ...contractChanges,
  };
  return {
    type: "job", assignment_id: "7e6d5c4b-3a29-4187-9f6e-5d4c3b2a1908", job_id: contract.job_id, role: "B",
    contract, contract_hash: await protocol.contractHash(contract), inputs, deadline: null,
  };
}

async function reason(promise) {
  try { await promise; } catch (err) { assert.ok(err instanceof jobs.JobRefused, String(err)); return err.reason; }
  return null;
}

describe("a text job", () => {
  test("is accepted with its inputs when everything holds", async () => {
    const job = await jobs.checkJob(await textJob(), loaded);
    assert.deepEqual([job.taskType, job.inputs, job.texts, job.role], ["text", INPUTS, null, "B"]);
    assert.equal(job.items, 1);
  });

  test("is refused, in the Python node's order, with the reasons job_failed reports", async () => {
    const cases = [
      [{ inputs: { ...INPUTS, stop: ["\n"] } }, "bad_message"],
      [{ inputs: { ...INPUTS, prompt: " \u3000\n" } }, "bad_message"],
      [{ inputs: { ...INPUTS, max_tokens: 0 } }, "bad_message"],
      [{ inputs: { ...INPUTS, max_tokens: 257 } }, "bad_message"],
      [{ inputs: { ...INPUTS, max_tokens: "6" } }, "bad_message"],
      [{ inputs: { ...INPUTS, max_tokens: true } }, "bad_message"],
      [{ inputs: { ...INPUTS, prompt: `a${String.fromCharCode(0)}b` } }, "bad_message"],
      [{ inputs: { ...INPUTS, prompt: "Say hi in French." } }, "bad_input_hash"],
      [{ contractChanges: { model_checksum: "cd".repeat(32) } }, "model_mismatch"],
      [{ contractChanges: { determinism: { seed: 0, temperature: 0.7, top_p: 1 } } }, "unsupported_contract"],
      [{ contractChanges: { task_type: "embedding" } }, "bad_message"],
    ];
    for (const [change, expected] of cases) {
      assert.equal(await reason(jobs.checkJob(await textJob(change), loaded)), expected, JSON.stringify(change));
    }
    // A subnet's lower ceiling: max_tokens above it is not this subnet's job.
    const lower = await textJob({ contractChanges: { preprocessing: { max_new_tokens: 4 } } });
    assert.equal(await reason(jobs.checkJob(lower, loaded)), "bad_message");
    // A text contract is not an embedding engine's job, and the other way round.
    assert.equal(await reason(jobs.checkJob(await textJob(), { modelChecksum: MODEL })), "bad_message");
    // Peer to peer too: the offer (no inputs) is checked as a relay job's contract is
    // (tests/js/peer-jobs.test.mjs runs one through).
    const p2p = await textJob({ contractChanges: { transport: "p2p", input_summary: { max_tokens: 6 } } });
    const offered = await jobs.checkP2pOffer({ ...p2p, inputs: undefined }, loaded);
    assert.deepEqual([offered.taskType, offered.transport, offered.inputs], ["text", "p2p", null]);
    const sampled = await textJob({ contractChanges: { transport: "p2p", input_summary: { max_tokens: 6 }, determinism: { seed: 0, temperature: 0.7, top_p: 1 } } });
    assert.equal(await reason(jobs.checkP2pOffer({ ...sampled, inputs: undefined }, loaded)), "unsupported_contract");
  });

  test("inputs are checked as the registry checks them (bytes of UTF-8, Python's whitespace)", () => {
    assert.equal(textJobs.textInputsViolation({ prompt: "\ufeff", max_tokens: 1 }), ""); // not whitespace to Python
    assert.match(textJobs.textInputsViolation({ prompt: "\x1c\x85", max_tokens: 1 }), /non-empty/); // whitespace to Python
    assert.equal(textJobs.textInputsViolation({ prompt: "é".repeat(5), max_tokens: 1 }, { maxChars: 10 }), "");
    assert.match(textJobs.textInputsViolation({ prompt: "é".repeat(6), max_tokens: 1 }, { maxChars: 10 }), /exceeds 10 bytes/);
    assert.match(textJobs.textInputsViolation(null), /not a JSON object/);
  });
});

describe("a text result", () => {
  const example = fixture.results.find((c) => c.task_type === "text");
  const job = {
    kind: "job", taskType: "text", assignmentId: example.fields.assignment_id, jobId: example.fields.job_id,
    contractHash: example.fields.contract_hash, contract: { input_hash: example.fields.input_hash }, inputs: INPUTS,
  };

  test("is signed byte for byte as the Python node signs it", async () => {
    const session = await keyFromSeed(fixture.keys.session_seed_hex);
    const { message, payload } = await jobs.signedResult(job, example.result, session, 12.4);
    assert.deepEqual(message, {
      type: "result", assignment_id: job.assignmentId, job_id: job.jobId, input_hash: example.fields.input_hash,
      result_hash: example.fields.result_hash, shape: [6], encoding: "json", data: example.data, elapsed_ms: 12,
      signature: example.signature,
    });
    assert.equal(Buffer.from(payload).toString("base64"), example.data);
    assert.ok(await verify(fixture.keys.session_public, message.signature, protocol.resultMessage({ ...example.fields })));
  });

  test("that the registry would refuse is not signed", async () => {
    const session = await keyFromSeed(fixture.keys.session_seed_hex);
    const tooMany = { ...example.result, tokens: [...example.result.tokens, 7] };
    await assert.rejects(jobs.signedResult(job, tooMany, session, 1), /7 tokens for max_tokens 6/);
    const shortLength = { ...example.result, finish: "length", tokens: [1, 2] };
    await assert.rejects(jobs.signedResult(job, shortLength, session, 1), /2 tokens for max_tokens 6 and finish length/);
    await assert.rejects(jobs.signedResult(job, { ...example.result, finish: "eos" }, session, 1), /finish one of/);
    await assert.rejects(jobs.signedResult(job, { ...example.result, tokens: [1, -2] }, session, 1), /token ids/);
  });

  test("a benchmark of a prompt is a text task; a malformed one is ignored", () => {
    const message = { type: "benchmark", benchmark_id: "b1", inputs: INPUTS, runs: 2 };
    assert.deepEqual(jobs.benchmarkTask(message, "text"), { kind: "benchmark", benchmarkId: "b1", taskType: "text", runs: 2, inputs: INPUTS, texts: null, items: 1 });
    assert.equal(jobs.benchmarkTask({ ...message, inputs: { texts: ["a"] } }, "text"), null);
    assert.equal(jobs.benchmarkTask({ ...message, inputs: { prompt: "", max_tokens: 6 } }, "text"), null);
    assert.equal(jobs.benchmarkTask(message, "embedding"), null);
  });
});

describe("partials", () => {
  test("carry the text so far at most every PARTIAL_INTERVAL_MS, capped at 64,000 characters", () => {
    const sent = [];
    let now = 0;
    const onToken = partialSender({ assignmentId: "a1", jobId: "j1" }, (m) => sent.push(m), () => now);
    onToken({ text: "He", count: 1 });
    now += PARTIAL_INTERVAL_MS - 1;
    onToken({ text: "Hell", count: 2 });
    now += 1;
    onToken({ text: "Hello", count: 3 });
    now += PARTIAL_INTERVAL_MS;
    onToken({ text: "x".repeat(63_999) + "🚀".repeat(10), count: 4 });
    assert.deepEqual(sent.slice(0, 2), [
      { type: "partial", assignment_id: "a1", job_id: "j1", text: "He", tokens: 1 },
      { type: "partial", assignment_id: "a1", job_id: "j1", text: "Hello", tokens: 3 },
    ]);
    assert.equal(sent.length, 3);
    assert.equal([...sent[2].text].length, 64_000);
    assert.ok(sent[2].text.endsWith("x🚀"));
  });
});

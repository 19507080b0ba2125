// contributor/static/js/jobs.js with an image subnet's engine (task-families.js's image
// family): the checks before computing, as the Python node's validate_inputs makes them, a
// peer-to-peer image job, the registry's image benchmark, and the signed result, byte for
// byte what bim_core signs (fixtures/images.json, make_image_fixtures.py).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { js, keyFromSeed, fixture as protocolFixture, verify } from "./helpers.mjs";

const jobs = await import(js("jobs.js"));
const protocol = await import(js("protocol.js"));
const { Session } = await import(js("session.js"));
const { job: image } = JSON.parse(readFileSync(new URL("fixtures/images.json", import.meta.url), "utf8"));

const { contract } = image;
const honest = {
  type: "job", assignment_id: image.fields.assignment_id, job_id: contract.job_id, role: "B",
  contract, contract_hash: image.contract_hash, inputs: image.inputs, deadline: null,
};
const loaded = { modelChecksum: contract.model_checksum, taskType: "image" };
const pixels = new Uint8Array(Buffer.from(image.result_pixels_hex, "hex"));
const output = { data: pixels, height: image.fields.shape[0], width: image.fields.shape[1] };

async function reason(promise) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof jobs.JobRefused, String(err));
    return err.reason;
  }
  return null;
}

/** The job with its contract changed (and hashed again), so only the change is wrong. */
async function withContract(changes) {
  const c = { ...contract, ...changes };
  return { ...honest, contract: c, contract_hash: await protocol.contractHash(c) };
}

/** An image job whose inputs are `inputs`, hashed into its contract: only their form is wrong. */
async function withInputs(inputs) {
  return { ...(await withContract({ input_hash: await protocol.inputHash(inputs) })), inputs };
}

describe("an image job", () => {
  test("is accepted with its inputs, one item", async () => {
    const job = await jobs.checkJob(honest, loaded);
    assert.equal(job.taskType, "image");
    assert.deepEqual(job.inputs, image.inputs);
    assert.equal(job.items, 1);
    assert.equal(job.texts, null);
  });

  test("is refused before any compute where the Python node refuses it", async () => {
    const cases = [
      [await withInputs({ ...image.inputs, scale: 4 }), "bad_message"],
      [await withInputs({ image: "" }), "bad_message"],
      [await withInputs({ image: "not base64!" }), "bad_message"],
      [await withInputs({ image: "iVBORw0KGgo=" }), "bad_message"], // a PNG signature, no header
      [await withInputs(image.rgba), "bad_message"],
      [await withInputs(image.too_big), "bad_message"], // 193 px: the subnet's max_side is 192
      [await withInputs(image.too_small), "bad_message"], // 3 px: IMAGE_MIN_SIDE is 4
      [{ ...honest, inputs: image.too_big }, "bad_message"],
      [{ ...honest, inputs: image.too_small }, "bad_message"],
      [{ ...honest, inputs: { image: image.too_big.image.slice(0, 64) + "AAAA" } }, "bad_message"],
      [{ ...honest, inputs: { image: image.inputs.image.replace(/.{4}$/, "AAA=") } }, "bad_input_hash"], // hostile: tampered bytes
      [await withContract({ limits: { ...contract.limits, max_chars: 100 } }), "bad_message"],
      [await withContract({ task_type: "embedding" }), "bad_message"],
      [{ ...honest, contract_hash: "00".repeat(32) }, "bad_contract_hash"],
    ];
    for (const [message, expected] of cases) assert.equal(await reason(jobs.checkJob(message, loaded)), expected, JSON.stringify(message.inputs).slice(0, 80));
    assert.equal(await reason(jobs.checkJob(honest, { ...loaded, modelChecksum: "cd".repeat(32) })), "model_mismatch");
    // An embedding engine refuses an image job, and the reverse.
    assert.equal(await reason(jobs.checkJob(honest, { modelChecksum: contract.model_checksum })), "bad_message");
  });

  test("the signed result is bim_core's bytes, hash and signature", async () => {
    const session = await keyFromSeed(protocolFixture.keys.session_seed_hex);
    const job = await jobs.checkJob(honest, loaded);
    const message = await jobs.buildResult(job, output, session, 1234.4);
    assert.deepEqual(message, {
      type: "result", assignment_id: honest.assignment_id, job_id: contract.job_id, input_hash: contract.input_hash,
      result_hash: image.fields.result_hash, shape: image.fields.shape, encoding: "rgb8", data: image.data,
      elapsed_ms: 1234, signature: image.signature,
    });
    assert.ok(await verify(protocolFixture.keys.session_public, message.signature, protocol.resultMessage(image.fields)));
  });

  test("an output that is not the input's 2x is not signed", async () => {
    const session = await keyFromSeed(protocolFixture.keys.session_seed_hex);
    const job = await jobs.checkJob(honest, loaded);
    const [h, w] = image.fields.shape;
    const cropped = { data: pixels.subarray(0, (h - 2) * w * 3), height: h - 2, width: w };
    await assert.rejects(jobs.buildResult(job, cropped, session, 1), /compute returned 10x18x3 for a 9x6 image/);
  });
});

describe("a peer-to-peer image job", () => {
  const offerOf = async (summary = image.summary) => {
    const c = { ...contract, transport: "p2p", input_summary: summary };
    const offer = { ...honest, contract: c, contract_hash: await protocol.contractHash(c), transport: "p2p" };
    delete offer.inputs;
    return offer;
  };

  test("is offered with the image's size and takes only that image", async () => {
    assert.deepEqual(image.summary, { height: 6, width: 9 });
    const job = await jobs.checkP2pOffer(await offerOf(), loaded);
    assert.equal(job.items, 1);
    assert.equal(job.inputs, null);
    const ready = await jobs.checkP2pInputs(job, image.inputs);
    assert.deepEqual(ready.inputs, image.inputs);
    assert.equal(await reason(jobs.checkP2pInputs(job, image.too_big)), "bad_input");
    assert.equal(await reason(jobs.checkP2pInputs(job, image.rgba)), "bad_input");
    assert.equal(await reason(jobs.checkP2pInputs(job, { image: image.inputs.image, extra: 1 })), "bad_input");
    assert.equal(await reason(jobs.checkP2pInputs(job, image.too_small)), "bad_input");
    // The contract's size, another image: the user's summary lied, or the image is not theirs.
    const lied = await jobs.checkP2pOffer(await offerOf({ height: 9, width: 6 }), loaded);
    assert.equal(await reason(jobs.checkP2pInputs(lied, image.inputs)), "bad_input");
  });

  test("the subnet's max_side decides, not a default: a 300 px image on a subnet of 512", async () => {
    const c = { ...contract, transport: "p2p", preprocessing: { ...contract.preprocessing, max_side: 512 },
      input_hash: await protocol.inputHash(image.wide), input_summary: { height: 4, width: 300 } };
    const offer = { ...honest, contract: c, contract_hash: await protocol.contractHash(c), transport: "p2p" };
    delete offer.inputs;
    const job = await jobs.checkP2pOffer(offer, loaded);
    assert.deepEqual((await jobs.checkP2pInputs(job, image.wide)).inputs, image.wide);
    // The same image on the fixture's subnet (max_side 192) is refused.
    assert.equal(await reason(jobs.checkJob(await withInputs(image.wide), loaded)), "bad_message");
  });

  test("an offer whose summary is not an image's is refused", async () => {
    assert.equal(await reason(jobs.checkP2pOffer(await offerOf({ items: 1 }), loaded)), "bad_message");
    assert.equal(await reason(jobs.checkP2pOffer(await offerOf({ height: 0, width: 9 }), loaded)), "bad_message");
    assert.equal(await reason(jobs.checkP2pOffer(await offerOf({ height: 6, width: 9, items: 1 }), loaded)), "bad_message");
  });
});

describe("an image benchmark", () => {
  test("is one image, run 1 to 20 times", () => {
    const task = jobs.benchmarkTask({ type: "benchmark", benchmark_id: "b", inputs: image.inputs, runs: 3 }, "image");
    assert.deepEqual(task, { kind: "benchmark", taskType: "image", benchmarkId: "b", texts: null, inputs: image.inputs, items: 1, runs: 3 });
    for (const inputs of [{}, { image: "" }, { texts: ["a"] }, null]) {
      assert.equal(jobs.benchmarkTask({ type: "benchmark", benchmark_id: "b", inputs, runs: 3 }, "image"), null);
    }
  });
});

describe("the work loop computes an image job with the engine's upscale", () => {
  test("upscale(image) is called, its pixels signed and sent; an unreadable image is refused as bad_message", async () => {
    const sent = [];
    const calls = [];
    const engine = {
      async upscale(b64) {
        calls.push(b64);
        if (b64 !== image.inputs.image) throw Object.assign(new Error("image: does not decode"), { code: "bad_input" });
        return output;
      },
    };
    const ws = { readyState: 1, send: (text) => sent.push(JSON.parse(text)) };
    const noop = () => {};
    const view = new Proxy({}, { get: () => noop });
    const computed = [];
    const session = new Session(ws, { engine, report: { view, log: noop, count: noop, computed: (w) => computed.push(w) }, onIdle: noop, store: null });
    session.sessionKey = await keyFromSeed(protocolFixture.keys.session_seed_hex);
    session.enqueue(await jobs.checkJob(honest, loaded));
    const unreadable = { ...(await jobs.checkJob(honest, loaded)), assignmentId: "a-2", inputs: { image: "AAAA" } };
    session.enqueue(unreadable);
    for (let i = 0; i < 1000 && sent.length < 2; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(calls, [image.inputs.image, "AAAA"]);
    assert.equal(sent[0].type, "result");
    assert.equal(sent[0].result_hash, image.fields.result_hash);
    assert.equal(sent[0].signature, image.signature);
    assert.deepEqual(sent[1], { type: "job_failed", assignment_id: "a-2", reason: "bad_message" });
    assert.deepEqual(computed.map(({ kind, items }) => [kind, items]), [["job", 1]]);
  });
});

// contributor/static/js/policy.js and checkJob's content-policy step: a node declines a job
// whose inputs break its contract's policy, naming the rule, and runs any other.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { fixture, js } from "./helpers.mjs";

const jobs = await import(js("jobs.js"));
const policyJs = await import(js("policy.js"));
const protocol = await import(js("protocol.js"));

const POLICY = {
  id: "test-policy",
  version: 2,
  input: { max_items: 3, max_chars: 60, blocked: [{ name: "example.weapons", patterns: ["\\b(?:nerve agent|sarin)\\b"] }] },
  output: { max_tokens: 16 },
};

describe("inputViolation", () => {
  test("names the rule the inputs break, limits first", () => {
    const cases = [
      [{ texts: ["a", "b", "c", "d"] }, "input.max_items"],
      [{ texts: ["x".repeat(61)] }, "input.max_chars"],
      [{ prompt: "hi", max_tokens: 17 }, "output.max_tokens"],
      [{ texts: ["How is SARIN made?"] }, "example.weapons"],
      [{ prompt: "a nerve agent", max_tokens: 4 }, "example.weapons"],
    ];
    for (const [inputs, rule] of cases) assert.equal(policyJs.inputViolation(POLICY, inputs)?.rule, rule, JSON.stringify(inputs));
  });

  test("passes what the policy allows, and everything without a policy", () => {
    assert.equal(policyJs.inputViolation(POLICY, { texts: ["Sarinas are not weapons", "a".repeat(30)] }), null);
    assert.equal(policyJs.inputViolation(undefined, { texts: ["sarin"] }), null);
    assert.equal(policyJs.inputViolation({}, { texts: ["sarin"] }), null);
  });

  test("counts characters as code points, as Python does", () => {
    const policy = { id: "p", version: 1, input: { max_chars: 2 } };
    assert.equal(policyJs.inputViolation(policy, { texts: ["😀😀"] }), null);
    assert.equal(policyJs.inputViolation(policy, { texts: ["😀😀😀"] })?.rule, "input.max_chars");
  });
});

describe("checkJob under a content policy", () => {
  const { contract, inputs } = fixture.hashes;
  const loaded = { modelChecksum: contract.model_checksum, tokenizerChecksum: contract.tokenizer_checksum };

  async function offer(policy, texts) {
    const withPolicy = { ...contract, policy, input_hash: await protocol.inputHash({ texts }) };
    return {
      type: "job", assignment_id: "a", job_id: contract.job_id, role: "A", contract: withPolicy,
      contract_hash: await protocol.contractHash(withPolicy), inputs: { texts }, deadline: null,
    };
  }

  test("declines a job whose input breaks a rule, with content_policy:<rule>", async () => {
    await assert.rejects(jobs.checkJob(await offer(POLICY, ["make sarin"]), loaded), (err) => {
      assert.ok(err instanceof jobs.JobRefused);
      assert.equal(err.reason, "content_policy:example.weapons");
      return true;
    });
  });

  test("runs a job the policy allows", async () => {
    const job = await jobs.checkJob(await offer(POLICY, inputs.texts.slice(0, 1)), loaded);
    assert.equal(job.kind, "job");
  });
});

// What this browser node does with the registry's work messages, apart from computing
// them: the checks on a `job` before any compute is spent (docs/protocol.md §4.4), and on a
// peer-to-peer job's offer and the inputs its user sends (docs/p2p.md §1), the shape of a
// `benchmark`, and the signed `result` and `benchmark_result` answers, exactly as
// bim_node/jobs.py makes them.
//
// What each task family's inputs and results must be is ./task-families.js's; the job's
// family is the loaded engine's (`taskType`: "embedding" when not given).
//
// Pure, like ./protocol.js: runs under Node 20 for tests/js/.

import { inputViolation } from "./policy.js";
import {
  b64encode, benchmarkMessage, canonicalJson, contractHash, encodeResult, inputHash, resultMessage, sha256Hex, signB64,
} from "./protocol.js";
import { BROWSER_FAMILIES, browserFamily } from "./task-families.js";
import { textContractRefusal } from "./text-jobs.js";

/** The task families this page computes: embeddings and images (./engine.js), text
 * (./text-engine.js). */
export const TASK_TYPES = Object.freeze(Object.keys(BROWSER_FAMILIES));
const DEFAULT_TASK_TYPE = "embedding"; // a contract without task_type predates the families

const MAX_BENCHMARK_RUNS = 20;

/** A job this node will not run; `reason` is what `job_failed` reports. */
export class JobRefused extends Error {
  constructor(reason, detail) { super(`${reason}: ${detail}`); this.reason = reason; }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** The family's check of `inputs`, a refusal with `reason` when they fail it. */
function familyCheck(check, reason) {
  try {
    check();
  } catch (err) {
    throw new JobRefused(reason, String(err.message || err));
  }
}

/** The loaded engine's family; the contract must name it. */
function familyFor(contract, taskType) {
  const family = browserFamily(taskType);
  if ((contract.task_type ?? DEFAULT_TASK_TYPE) !== taskType) throw new JobRefused("bad_message", `this node runs ${taskType} jobs`);
  return family;
}

/** The checks a node makes before spending compute (docs/protocol.md §4.4), in order. */
export async function checkJob(message, { modelChecksum, tokenizerChecksum, taskType = DEFAULT_TASK_TYPE }) {
  const { contract, contract_hash: cHash, inputs, job_id: jobId } = message;
  if (!isObject(contract) || typeof cHash !== "string" || typeof jobId !== "string" || !isObject(inputs)) {
    throw new JobRefused("bad_message", "job lacks contract, contract_hash, job_id or inputs");
  }
  const family = familyFor(contract, taskType);
  familyCheck(() => family.checkRelayInputs(inputs, contract), "bad_message");
  await checkInputHash(contract, inputs, "bad_message");
  await checkContract(contract, cHash, jobId);
  checkModel(contract, { modelChecksum, tokenizerChecksum, taskType });
  checkInputPolicy(contract, inputs);
  return { ...jobOf(message, family), ...withInputs(family, inputs) };
}

/** A peer-to-peer offer (docs/p2p.md): no inputs, which its user brings over a data channel
 * (checkP2pInputs, then); everything else is checked as for a relay job. */
export async function checkP2pOffer(message, { modelChecksum, tokenizerChecksum, taskType = DEFAULT_TASK_TYPE }) {
  const { contract, contract_hash: cHash, job_id: jobId } = message;
  if (!isObject(contract) || typeof cHash !== "string" || typeof jobId !== "string") {
    throw new JobRefused("bad_message", "job lacks contract, contract_hash or job_id");
  }
  const family = familyFor(contract, taskType);
  await checkContract(contract, cHash, jobId);
  const summary = contract.input_summary;
  const keys = isObject(summary) ? Object.keys(summary).sort().join() : null;
  if (contract.transport !== "p2p" || keys !== family.summaryKeys.join()) {
    throw new JobRefused("bad_message", `a peer-to-peer offer's contract has transport p2p and an input_summary {${family.summaryKeys.join(", ")}}`);
  }
  familyCheck(() => family.checkSummary(summary), "bad_message");
  checkModel(contract, { modelChecksum, tokenizerChecksum, taskType });
  return { ...jobOf(message, family), texts: null, inputs: null, items: family.items(summary), transport: "p2p" };
}

/** What a job's input summary is (bim_core/families.py, input_summary), for its family. */
export const inputSummary = (inputs, taskType = DEFAULT_TASK_TYPE) => browserFamily(taskType).summary(inputs);

/** The inputs a peer-to-peer job's user sent, checked before computing (docs/p2p.md §1):
 * the family's form within the contract's limits, the contract's input hash and summary,
 * its content policy. Returns the job with its inputs; refusals carry the reasons the
 * `input_refused` frame and `job_failed` report. */
export async function checkP2pInputs(job, inputs) {
  const family = browserFamily(job.taskType ?? DEFAULT_TASK_TYPE);
  familyCheck(() => family.checkInputs(inputs, job.contract), "bad_input");
  await checkInputHash(job.contract, inputs, "bad_input");
  if (canonicalJson(family.summary(inputs)) !== canonicalJson(job.contract.input_summary)) {
    throw new JobRefused("bad_input", "inputs do not match contract.input_summary");
  }
  checkInputPolicy(job.contract, inputs);
  return { ...job, ...withInputs(family, inputs) };
}

/** A job's inputs and what the page reads of them: their items, an embedding job's texts. */
const withInputs = (family, inputs) => ({ texts: Array.isArray(inputs.texts) ? inputs.texts : null, inputs, items: family.items(inputs) });

function jobOf(message, family) {
  const deadline = message.deadline == null ? null : Date.parse(message.deadline);
  if (deadline !== null && Number.isNaN(deadline)) throw new JobRefused("bad_message", "deadline is not ISO 8601");
  return {
    kind: "job", taskType: family.taskType, assignmentId: message.assignment_id, jobId: message.job_id, role: String(message.role || ""),
    contract: message.contract, contractHash: message.contract_hash, deadline,
  };
}

async function checkInputHash(contract, inputs, reason) {
  let actual;
  try {
    actual = await inputHash(inputs);
  } catch (err) { // NaN, infinity, a lone surrogate: no canonical JSON
    throw new JobRefused(reason, String(err.message || err));
  }
  if (actual !== contract.input_hash) throw new JobRefused("bad_input_hash", "inputs do not hash to contract.input_hash");
}

async function checkContract(contract, cHash, jobId) {
  let actual;
  try {
    actual = await contractHash(contract);
  } catch (err) {
    throw new JobRefused("bad_message", String(err.message || err));
  }
  if (actual !== cHash) throw new JobRefused("bad_contract_hash", "contract does not hash to contract_hash");
  if (contract.job_id !== jobId) throw new JobRefused("bad_message", "contract.job_id differs from job_id");
}

function checkModel(contract, { modelChecksum, tokenizerChecksum, taskType = DEFAULT_TASK_TYPE }) {
  if (contract.model_checksum !== modelChecksum) throw new JobRefused("model_mismatch", "contract names another model");
  if (contract.tokenizer_checksum && tokenizerChecksum && contract.tokenizer_checksum !== tokenizerChecksum) {
    throw new JobRefused("model_mismatch", "contract names another tokenizer");
  }
  // What the runner cannot run deterministically (text: sampled decoding), as the Python node.
  const refusal = taskType === "text" ? textContractRefusal(contract) : "";
  if (refusal) throw new JobRefused("unsupported_contract", refusal);
}

// The contract's content policy: a job that breaks it is declined, at no cost (§4.4). For a
// peer-to-peer input, which the registry never sees, the nodes' check is the only one.
function checkInputPolicy(contract, inputs) {
  const violation = inputViolation(contract.policy, inputs);
  if (violation) throw new JobRefused(`content_policy:${violation.rule}`, violation.detail);
}

/** A `benchmark` message as a task for the work queue, or null when it is malformed. */
export function benchmarkTask(message, taskType = DEFAULT_TASK_TYPE) {
  const family = browserFamily(taskType);
  const inputs = family.benchmarkInputs(message.inputs);
  const runs = message.runs;
  if (!inputs || !(Number.isInteger(runs) && runs >= 1 && runs <= MAX_BENCHMARK_RUNS)) return null;
  return { kind: "benchmark", taskType, benchmarkId: String(message.benchmark_id), ...withInputs(family, inputs), runs };
}

/** The engine's output for a task (job or benchmark), with its family's engine call;
 * `onToken` hears each token of a text generation (./session.js streams them). */
export const computeTask = (engine, task, onToken) =>
  browserFamily(task.taskType ?? DEFAULT_TASK_TYPE).compute(engine, task.inputs ?? { texts: task.texts }, onToken);

/** The engine's output as the family encodes it, checked the way the registry will check it
 * (one row per text, an image twice the input's size), so a broken engine fails here
 * instead of earning a refusal. */
function encodedFor(output, task) {
  const taskType = task.taskType ?? DEFAULT_TASK_TYPE;
  const encoded = encodeResult(taskType, output);
  browserFamily(taskType).checkOutput(output, encoded.shape, task.inputs ?? { texts: task.texts });
  return encoded;
}

/** The signed `result` for a checked job and the engine's output, with its payload bytes
 * (a peer-to-peer job sends those over its data channel). */
export async function signedResult(job, output, sessionPrivateKey, elapsedMs) {
  const { payload, shape, encoding } = encodedFor(output, job);
  const fields = {
    job_id: job.jobId, assignment_id: job.assignmentId, contract_hash: job.contractHash,
    input_hash: String(job.contract.input_hash), result_hash: await sha256Hex(payload), shape,
  };
  const message = {
    type: "result", assignment_id: job.assignmentId, job_id: job.jobId, input_hash: fields.input_hash,
    result_hash: fields.result_hash, shape, encoding, data: b64encode(payload),
    elapsed_ms: Math.round(elapsedMs), signature: await signB64(sessionPrivateKey, resultMessage(fields)),
  };
  return { message, payload };
}

/** The signed `result` for a checked job and the engine's output. */
export const buildResult = async (...args) => (await signedResult(...args)).message;

/** The signed `benchmark_result`: the last run's output and every run's time (roundMs). */
export async function buildBenchmarkResult(task, output, timings, sessionPrivateKey) {
  const { payload, shape, encoding } = encodedFor(output, task);
  const fields = { benchmark_id: task.benchmarkId, result_hash: await sha256Hex(payload), shape, timings_ms: timings };
  return {
    type: "benchmark_result", benchmark_id: task.benchmarkId, timings_ms: timings, shape,
    encoding, data: b64encode(payload), result_hash: fields.result_hash,
    signature: await signB64(sessionPrivateKey, benchmarkMessage(fields)),
  };
}

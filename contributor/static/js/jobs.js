// What this browser node does with the registry's work messages, apart from computing
// them: the checks on a `job` before any compute is spent (docs/protocol.md §4.4), and on a
// peer-to-peer job's offer and the inputs its user sends (docs/p2p.md §1), the shape of a
// `benchmark`, and the signed `result` and `benchmark_result` answers, exactly as
// bim_node/jobs.py makes them.
//
// Pure, like ./protocol.js: runs under Node 20 for tests/js/.

import { inputViolation } from "./policy.js";
import {
  b64encode, benchmarkMessage, canonicalJson, contractHash, encodeResult, inputHash, resultMessage, sha256Hex, shapeText, signB64,
} from "./protocol.js";
import { textContractRefusal, textInputsViolation, textLimits, textResultViolation } from "./text-jobs.js";

/** The task family a job is of when its contract predates families, and the one ./engine.js
 * computes; ./text-engine.js computes "text" (the engine's taskType says which). */
export const TASK_TYPE = "embedding";

const MAX_BENCHMARK_RUNS = 20;

/** A job this node will not run; `reason` is what `job_failed` reports. */
export class JobRefused extends Error {
  constructor(reason, detail) { super(`${reason}: ${detail}`); this.reason = reason; }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isTextList = (texts) => Array.isArray(texts) && texts.length > 0 && texts.every((t) => typeof t === "string");

/** Why `inputs` are not of the family's form ("" when they are): what the Python node's
 * _check_inputs refuses before anything else. */
function inputsViolation(taskType, contract, inputs) {
  if (taskType === "text") return textInputsViolation(inputs, textLimits(contract));
  return isTextList(inputs.texts) ? "" : "inputs.texts must be a non-empty list of strings";
}

/** The checks a node makes before spending compute (docs/protocol.md §4.4), in order.
 * `taskType` is the loaded engine's family. */
export async function checkJob(message, { modelChecksum, tokenizerChecksum, taskType = TASK_TYPE }) {
  const { contract, contract_hash: cHash, inputs, job_id: jobId } = message;
  if (!isObject(contract) || typeof cHash !== "string" || typeof jobId !== "string" || !isObject(inputs)) {
    throw new JobRefused("bad_message", "job lacks contract, contract_hash, job_id or inputs");
  }
  // A contract without task_type predates the families: embeddings, as for the Python node.
  if ((contract.task_type ?? TASK_TYPE) !== taskType) throw new JobRefused("bad_message", `this node runs ${taskType} jobs`);
  const violation = inputsViolation(taskType, contract, inputs);
  if (violation) throw new JobRefused("bad_message", violation);
  await checkInputHash(contract, inputs, "bad_message");
  await checkContract(contract, cHash, jobId);
  checkModel(contract, { modelChecksum, tokenizerChecksum, taskType });
  checkInputPolicy(contract, inputs);
  return { ...jobOf(message), taskType, inputs, texts: taskType === "text" ? null : inputs.texts };
}

/** A peer-to-peer offer (docs/p2p.md): no inputs, which its user brings over a data channel
 * (checkP2pInputs, then); everything else is checked as for a relay job. */
export async function checkP2pOffer(message, { modelChecksum, tokenizerChecksum, taskType = TASK_TYPE }) {
  const { contract, contract_hash: cHash, job_id: jobId } = message;
  if (!isObject(contract) || typeof cHash !== "string" || typeof jobId !== "string") {
    throw new JobRefused("bad_message", "job lacks contract, contract_hash or job_id");
  }
  // Peer to peer, this page takes embedding jobs only: a text job's tokens would stream to
  // its user over the data channel, which ./peer-jobs.js does not do yet.
  if (taskType !== TASK_TYPE) throw new JobRefused("unsupported_contract", `this browser takes ${taskType} jobs through the registry only`);
  if ((contract.task_type ?? TASK_TYPE) !== TASK_TYPE) throw new JobRefused("bad_message", `this node runs ${TASK_TYPE} jobs`);
  await checkContract(contract, cHash, jobId);
  const summary = contract.input_summary;
  if (contract.transport !== "p2p" || !isObject(summary) || Object.keys(summary).join() !== "items" || !Number.isInteger(summary.items)) {
    throw new JobRefused("bad_message", "a peer-to-peer offer's contract has transport p2p and an input_summary {items}");
  }
  checkModel(contract, { modelChecksum, tokenizerChecksum });
  return { ...jobOf(message), texts: null, items: summary.items, transport: "p2p" };
}

/** What an embedding job's input summary is (bim_core/families.py, input_summary). */
export const inputSummary = (inputs) => ({ items: inputs.texts.length });

// A NUL cannot be stored (PostgreSQL refuses it), so the registry refuses it in every input:
// bim_core.families.storable_text. A lone surrogate has no UTF-8: canonicalJson throws.
const NUL = String.fromCharCode(0);

/** The inputs a peer-to-peer job's user sent, checked before computing (docs/p2p.md §1):
 * the family's form within the contract's limits, the contract's input hash and summary,
 * its content policy. Returns the job with its texts; refusals carry the reasons the
 * `input_refused` frame and `job_failed` report. */
export async function checkP2pInputs(job, inputs) {
  if (!isObject(inputs)) throw new JobRefused("bad_input", "inputs are not a JSON object");
  const unknown = Object.keys(inputs).filter((k) => k !== "texts");
  if (unknown.length) throw new JobRefused("bad_input", `an embedding job takes only texts, not ${unknown.join(", ")}`);
  const { texts } = inputs;
  if (!isTextList(texts)) throw new JobRefused("bad_input", "texts must be a non-empty list of strings");
  const maxItems = job.contract.limits?.max_items;
  if (Number.isInteger(maxItems) && texts.length > maxItems) throw new JobRefused("bad_input", `at most ${maxItems} texts per job`);
  const bad = texts.findIndex((t) => !t.trim() || t.includes(NUL));
  if (bad >= 0) throw new JobRefused("bad_input", `texts[${bad}] must be a non-empty string without NUL characters`);
  // The subnet's per-text limit, in code points as the registry counts them (never seen by it here).
  const maxChars = job.contract.limits?.max_chars;
  const long = Number.isInteger(maxChars) ? texts.findIndex((t) => [...t].length > maxChars) : -1;
  if (long >= 0) throw new JobRefused("bad_input", `texts[${long}] exceeds ${maxChars} characters`);
  await checkInputHash(job.contract, inputs, "bad_input");
  if (canonicalJson(inputSummary(inputs)) !== canonicalJson(job.contract.input_summary)) {
    throw new JobRefused("bad_input", "inputs do not match contract.input_summary");
  }
  checkInputPolicy(job.contract, inputs);
  return { ...job, texts, inputs };
}

function jobOf(message) {
  const deadline = message.deadline == null ? null : Date.parse(message.deadline);
  if (deadline !== null && Number.isNaN(deadline)) throw new JobRefused("bad_message", "deadline is not ISO 8601");
  return {
    kind: "job", assignmentId: message.assignment_id, jobId: message.job_id, role: String(message.role || ""),
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

function checkModel(contract, { modelChecksum, tokenizerChecksum, taskType = TASK_TYPE }) {
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

/** A `benchmark` message as a task for the work queue of an engine of `taskType`, or null
 * when it is malformed. */
export function benchmarkTask(message, taskType = TASK_TYPE) {
  const inputs = message.inputs;
  const runs = message.runs;
  if (!(Number.isInteger(runs) && runs >= 1 && runs <= MAX_BENCHMARK_RUNS)) return null;
  const task = { kind: "benchmark", benchmarkId: String(message.benchmark_id), taskType, runs };
  if (taskType === "text") return isObject(inputs) && !textInputsViolation(inputs) ? { ...task, inputs, texts: null } : null;
  return isTextList(inputs?.texts) ? { ...task, inputs, texts: inputs.texts } : null;
}

/** How many items a task holds: texts to embed, or one prompt. */
export const taskItems = (task) => (task.taskType === "text" ? 1 : task.texts.length);

/** The engine's output as the family encodes it, checked the way the registry will check it
 * (one row per text; a text result within max_tokens), so a broken engine fails here
 * instead of earning a refusal. */
function encodedFor(output, task) {
  const taskType = task.taskType ?? TASK_TYPE;
  const encoded = encodeResult(taskType, output);
  if (taskType === "text") {
    const violation = textResultViolation(output, task.inputs);
    if (violation) throw new Error(`compute returned a result the registry would refuse: ${violation}`);
    return encoded;
  }
  if (encoded.shape[0] !== task.texts.length) throw new Error(`compute returned ${shapeText(encoded.shape)} for ${task.texts.length} texts`);
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

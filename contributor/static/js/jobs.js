// What this browser node does with the registry's work messages, apart from computing
// them: the checks on a `job` before any compute is spent (docs/protocol.md §4.4), the
// shape of a `benchmark`, and the signed `result` and `benchmark_result` answers, exactly as
// bim_node/client.py makes them.
//
// Pure, like ./protocol.js: runs under Node 20 for tests/js/.

import { inputViolation } from "./policy.js";
import {
  b64encode, benchmarkMessage, contractHash, encodeResult, inputHash, resultMessage, sha256Hex, shapeText, signB64,
} from "./protocol.js";

/** The one task family this page's engine computes (./engine.js embeds texts). */
export const TASK_TYPE = "embedding";

const MAX_BENCHMARK_RUNS = 20;

/** A job this node will not run; `reason` is what `job_failed` reports. */
export class JobRefused extends Error {
  constructor(reason, detail) { super(`${reason}: ${detail}`); this.reason = reason; }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isTextList = (texts) => Array.isArray(texts) && texts.length > 0 && texts.every((t) => typeof t === "string");

/** The checks a node makes before spending compute (docs/protocol.md §4.4), in order. */
export async function checkJob(message, { modelChecksum, tokenizerChecksum }) {
  const { contract, contract_hash: cHash, inputs, job_id: jobId } = message;
  if (!isObject(contract) || typeof cHash !== "string" || typeof jobId !== "string" || !isObject(inputs)) {
    throw new JobRefused("bad_message", "job lacks contract, contract_hash, job_id or inputs");
  }
  // A contract without task_type predates the families: embeddings, as for the Python node.
  if ((contract.task_type ?? TASK_TYPE) !== TASK_TYPE) throw new JobRefused("bad_message", `this node runs ${TASK_TYPE} jobs`);
  if (!isTextList(inputs.texts)) throw new JobRefused("bad_message", "inputs.texts must be a non-empty list of strings");
  let actualInputHash, actualContractHash;
  try {
    actualInputHash = await inputHash(inputs);
    actualContractHash = await contractHash(contract);
  } catch (err) {
    throw new JobRefused("bad_message", String(err.message || err));
  }
  if (actualInputHash !== contract.input_hash) throw new JobRefused("bad_input_hash", "inputs do not hash to contract.input_hash");
  if (actualContractHash !== cHash) throw new JobRefused("bad_contract_hash", "contract does not hash to contract_hash");
  if (contract.job_id !== jobId) throw new JobRefused("bad_message", "contract.job_id differs from job_id");
  if (contract.model_checksum !== modelChecksum) throw new JobRefused("model_mismatch", "contract names another model");
  if (contract.tokenizer_checksum && tokenizerChecksum && contract.tokenizer_checksum !== tokenizerChecksum) {
    throw new JobRefused("model_mismatch", "contract names another tokenizer");
  }
  // The contract's content policy: a job that breaks it is declined, at no cost (§4.4).
  const violation = inputViolation(contract.policy, inputs);
  if (violation) throw new JobRefused(`content_policy:${violation.rule}`, violation.detail);
  const deadline = message.deadline == null ? null : Date.parse(message.deadline);
  if (deadline !== null && Number.isNaN(deadline)) throw new JobRefused("bad_message", "deadline is not ISO 8601");
  return {
    kind: "job", assignmentId: message.assignment_id, jobId, role: String(message.role || ""),
    contract, contractHash: cHash, texts: inputs.texts, deadline,
  };
}

/** A `benchmark` message as a task for the work queue, or null when it is malformed. */
export function benchmarkTask(message) {
  const texts = message.inputs?.texts;
  const runs = message.runs;
  if (!isTextList(texts) || !(Number.isInteger(runs) && runs >= 1 && runs <= MAX_BENCHMARK_RUNS)) return null;
  return { kind: "benchmark", benchmarkId: String(message.benchmark_id), texts, runs };
}

/** The engine's output as the family encodes it, checked the way the registry will check it
 * (one row per text), so a broken engine fails here instead of earning a refusal. */
function encodedFor(output, texts) {
  const encoded = encodeResult(TASK_TYPE, output);
  if (encoded.shape[0] !== texts.length) throw new Error(`compute returned ${shapeText(encoded.shape)} for ${texts.length} texts`);
  return encoded;
}

/** The signed `result` for a checked job and the engine's output. */
export async function buildResult(job, output, sessionPrivateKey, elapsedMs) {
  const { payload, shape, encoding } = encodedFor(output, job.texts);
  const fields = {
    job_id: job.jobId, assignment_id: job.assignmentId, contract_hash: job.contractHash,
    input_hash: String(job.contract.input_hash), result_hash: await sha256Hex(payload), shape,
  };
  return {
    type: "result", assignment_id: job.assignmentId, job_id: job.jobId, input_hash: fields.input_hash,
    result_hash: fields.result_hash, shape, encoding, data: b64encode(payload),
    elapsed_ms: Math.round(elapsedMs), signature: await signB64(sessionPrivateKey, resultMessage(fields)),
  };
}

/** The signed `benchmark_result`: the last run's output and every run's time (roundMs). */
export async function buildBenchmarkResult(task, output, timings, sessionPrivateKey) {
  const { payload, shape, encoding } = encodedFor(output, task.texts);
  const fields = { benchmark_id: task.benchmarkId, result_hash: await sha256Hex(payload), shape, timings_ms: timings };
  return {
    type: "benchmark_result", benchmark_id: task.benchmarkId, timings_ms: timings, shape,
    encoding, data: b64encode(payload), result_hash: fields.result_hash,
    signature: await signB64(sessionPrivateKey, benchmarkMessage(fields)),
  };
}

// The task families this browser computes, as bim_core/families.py defines them, from the
// page's side: what a job's inputs must be before compute is spent on them (the Python
// node's `validate_inputs` of ServedModel._check_inputs), their `input_summary` (a peer-to-
// peer offer carries only that), how many items they hold (the speed figures and the
// jobs table), which engine call computes them, and the result shape the registry will
// accept for them (so a broken engine fails here instead of earning a refusal).
//
// Every check throws a plain Error whose message is the refusal's detail; ./jobs.js turns it
// into the `job_failed` reason of where it was found (`bad_message` on a relay job's offer,
// `bad_input` on a peer-to-peer input).
//
// Pure, like ./protocol.js: runs under Node 20 for tests/js/.

import { pngSize } from "./png.js";
import { b64decode, shapeText } from "./protocol.js";
import { textInputsViolation, textLimits, textResultViolation } from "./text-jobs.js";

export const IMAGE_MIN_SIDE = 4; // families.IMAGE_MIN_SIDE
const DEFAULT_MAX_SIDE = 256; // families.ImageFamily: the subnet's max_side, or this

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isTextList = (texts) => Array.isArray(texts) && texts.length > 0 && texts.every((t) => typeof t === "string");
// A NUL cannot be stored (PostgreSQL refuses it), so the registry refuses it in every input:
// bim_core.job_inputs.storable_text. A lone surrogate has no UTF-8: canonicalJson throws.
const NUL = String.fromCharCode(0);
const isCount = (n) => Number.isInteger(n) && n >= 1;

function onlyKeys(inputs, allowed, what) {
  if (!isObject(inputs)) throw new Error("inputs are not a JSON object");
  const unknown = Object.keys(inputs).filter((k) => !allowed.includes(k));
  if (unknown.length) throw new Error(`${what} takes only ${allowed.join(", ")}, not ${unknown.join(", ")}`);
}

const embedding = {
  taskType: "embedding",
  unit: "texts",
  summaryKeys: ["items"],
  /** A relay job's texts: the registry validated them against the subnet's limits. */
  checkRelayInputs(inputs) {
    if (!isTextList(inputs?.texts)) throw new Error("inputs.texts must be a non-empty list of strings");
  },
  /** A peer-to-peer job's texts, which the registry never saw: the subnet's limits too. */
  checkInputs(inputs, contract) {
    onlyKeys(inputs, ["texts"], "an embedding job");
    const { texts } = inputs;
    if (!isTextList(texts)) throw new Error("texts must be a non-empty list of strings");
    const maxItems = contract.limits?.max_items;
    if (Number.isInteger(maxItems) && texts.length > maxItems) throw new Error(`at most ${maxItems} texts per job`);
    const bad = texts.findIndex((t) => !t.trim() || t.includes(NUL));
    if (bad >= 0) throw new Error(`texts[${bad}] must be a non-empty string without NUL characters`);
    // The subnet's per-text limit, in code points as the registry counts them.
    const maxChars = contract.limits?.max_chars;
    const long = Number.isInteger(maxChars) ? texts.findIndex((t) => [...t].length > maxChars) : -1;
    if (long >= 0) throw new Error(`texts[${long}] exceeds ${maxChars} characters`);
  },
  summary: (inputs) => ({ items: inputs.texts.length }),
  checkSummary(summary) {
    if (!isCount(summary.items)) throw new Error("input_summary.items must be a positive integer");
  },
  items: (inputsOrSummary) => (Array.isArray(inputsOrSummary.texts) ? inputsOrSummary.texts.length : inputsOrSummary.items),
  /** The benchmark's inputs, or null when they are not this family's. */
  benchmarkInputs: (inputs) => (isTextList(inputs?.texts) ? { texts: inputs.texts } : null),
  compute: (engine, inputs) => engine.embed(inputs.texts),
  checkOutput(_output, shape, inputs) {
    if (shape[0] !== inputs.texts.length) throw new Error(`compute returned ${shapeText(shape)} for ${inputs.texts.length} texts`);
  },
};

/** {height, width} from an image job's PNG header: strict base64, an 8-bit RGB PNG. */
function imageDims(inputs) {
  const text = inputs.image;
  if (typeof text !== "string" || !text) throw new Error("image must be a base64 string of a PNG file");
  let png;
  try {
    png = b64decode(text);
  } catch {
    throw new Error("image is not standard base64 (RFC 4648, with padding)");
  }
  return pngSize(png);
}

/** ImageFamily.validate_inputs up to decoding (which the engine's worker does before
 * computing): only `image`, within the contract's max_chars and the subnet's sides. */
function checkImageInputs(inputs, contract) {
  onlyKeys(inputs, ["image"], "an image job");
  const maxChars = contract.limits?.max_chars;
  if (typeof inputs.image === "string" && Number.isInteger(maxChars) && inputs.image.length > maxChars) {
    throw new Error(`image exceeds ${maxChars} characters of base64`);
  }
  const { height, width } = imageDims(inputs);
  const maxSide = Number(contract.preprocessing?.max_side ?? DEFAULT_MAX_SIDE);
  if (!(IMAGE_MIN_SIDE <= Math.min(height, width)) || Math.max(height, width) > maxSide) {
    throw new Error(`image is ${width}x${height}; each side must be ${IMAGE_MIN_SIDE} to ${maxSide} px`);
  }
}

const image = {
  taskType: "image",
  unit: "images",
  summaryKeys: ["height", "width"],
  // The registry validated a relay job's image too; the node checks it all the same, as the
  // Python node does: decoding costs more than these checks.
  checkRelayInputs: checkImageInputs,
  checkInputs: checkImageInputs,
  summary: (inputs) => {
    const { height, width } = imageDims(inputs);
    return { height, width };
  },
  checkSummary(summary) {
    if (!isCount(summary.height) || !isCount(summary.width)) throw new Error("input_summary.height and width must be positive integers");
  },
  items: () => 1,
  benchmarkInputs: (inputs) => (isObject(inputs) && typeof inputs.image === "string" && inputs.image ? { image: inputs.image } : null),
  compute: (engine, inputs) => engine.upscale(inputs.image),
  checkOutput(_output, shape, inputs) {
    const { height, width } = imageDims(inputs);
    if (shapeText(shape) !== shapeText([2 * height, 2 * width, 3])) {
      throw new Error(`compute returned ${shapeText(shape)} for a ${width}x${height} image`);
    }
  },
};

/** Why a text job's inputs are refused, as an Error (./text-jobs.js says why, or ""). */
function checkTextInputs(inputs, contract) {
  const violation = textInputsViolation(inputs, textLimits(contract));
  if (violation) throw new Error(violation);
}

const text = {
  taskType: "text",
  unit: "prompts",
  summaryKeys: ["max_tokens"],
  checkRelayInputs: checkTextInputs,
  checkInputs: checkTextInputs,
  summary: (inputs) => ({ max_tokens: inputs.max_tokens }),
  checkSummary(summary) {
    if (!isCount(summary.max_tokens)) throw new Error("input_summary.max_tokens must be a positive integer");
  },
  items: () => 1,
  benchmarkInputs: (inputs) => (isObject(inputs) && !textInputsViolation(inputs) ? inputs : null),
  // Greedy generation on ./text-engine.js; `onToken` hears the text so far (streamed as
  // `partial` messages by ./session.js).
  compute: (engine, inputs, onToken) => engine.generate(inputs, onToken),
  checkOutput(output, _shape, inputs) {
    const violation = textResultViolation(output, inputs);
    if (violation) throw new Error(`compute returned a result the registry would refuse: ${violation}`);
  },
};

/** The families this page computes, by task type: embeddings and images on ./engine.js,
 * text on ./text-engine.js. */
export const BROWSER_FAMILIES = { embedding, image, text };

/** What a family's speed counts ("texts", "images"); embeddings' for an engine that does
 * not say (one older than the families). */
export const unitOf = (taskType) => (Object.hasOwn(BROWSER_FAMILIES, taskType ?? "") ? BROWSER_FAMILIES[taskType].unit : embedding.unit);

/** The family of a task type this browser computes; throws for any other. */
export function browserFamily(taskType) {
  const family = Object.hasOwn(BROWSER_FAMILIES, taskType) ? BROWSER_FAMILIES[taskType] : null;
  if (!family) throw new Error(`this browser does not compute ${taskType} jobs`);
  return family;
}

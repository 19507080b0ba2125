// The text family's rules for a browser node (bim_core/families.py TextFamily), apart from
// generating: which job inputs it takes, which contracts it can honour, and which results
// the registry would accept, so that a job it cannot answer is declined before compute is
// spent and a broken engine fails here instead of earning a refusal. Pure, like ./jobs.js.

import { determinismRefusal } from "./text-generation.js";

export const TEXT_FINISHES = ["stop", "length"];
const NUL = String.fromCharCode(0);
const utf8 = new TextEncoder();
// Python's str.isspace, which the registry's "non-empty" means (prompt.strip()): not
// JavaScript's trim, which also strips U+FEFF and keeps U+001C-U+001F and U+0085.
const PY_SPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680,
  0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a,
  0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);
const blank = (text) => [...text].every((c) => PY_SPACE.has(c.codePointAt(0)));

/** Why `inputs` are not a text job's ({prompt, max_tokens} within the contract's limits),
 * or "" when they are. `maxChars` bounds the prompt's UTF-8 bytes, `maxNewTokens` max_tokens
 * (the contract's preprocessing.max_new_tokens, 256 when it names none). */
export function textInputsViolation(inputs, { maxChars = Infinity, maxNewTokens = 256 } = {}) {
  if (inputs === null || typeof inputs !== "object" || Array.isArray(inputs)) return "inputs are not a JSON object";
  const unknown = Object.keys(inputs).filter((k) => k !== "prompt" && k !== "max_tokens");
  if (unknown.length) return `a text job takes only prompt and max_tokens, not ${unknown.sort().join(", ")}`;
  const { prompt, max_tokens: maxTokens } = inputs;
  if (typeof prompt !== "string" || blank(prompt)) return "prompt must be a non-empty string";
  if (prompt.includes(NUL)) return "prompt must be valid Unicode text without NUL characters";
  if (utf8.encode(prompt).length > maxChars) return `prompt exceeds ${maxChars} bytes of UTF-8`;
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > maxNewTokens) {
    return `max_tokens must be an integer from 1 to ${maxNewTokens}`;
  }
  return "";
}

/** The limits a contract sets on a text job's inputs. */
export function textLimits(contract) {
  const limits = contract?.limits ?? {};
  const ceiling = Number(contract?.preprocessing?.max_new_tokens ?? 256);
  return {
    maxChars: Number.isInteger(limits.max_chars) ? limits.max_chars : Infinity,
    maxNewTokens: Number.isInteger(ceiling) && ceiling > 0 ? ceiling : 256,
  };
}

/** Why this node cannot run a text contract ("" when it can): greedy decoding only. */
export const textContractRefusal = (contract) => determinismRefusal(contract?.determinism);

/** Why the registry would refuse `result` as the answer to `inputs` (families.py
 * decode_result), or "" when it would not. */
export function textResultViolation(result, inputs) {
  const { finish, text, tokens } = result ?? {};
  if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && t >= 0)) return "tokens must be a list of token ids";
  if (typeof text !== "string" || !TEXT_FINISHES.includes(finish)) return `text must be a string and finish one of ${TEXT_FINISHES.join(", ")}`;
  const maxTokens = inputs.max_tokens;
  if (tokens.length > maxTokens || (finish === "length" && tokens.length !== maxTokens)) {
    return `${tokens.length} tokens for max_tokens ${maxTokens} and finish ${finish}`;
  }
  return "";
}

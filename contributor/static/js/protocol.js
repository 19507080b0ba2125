// The bytes of protocol bim/1 (docs/protocol.md §1), as bim_core/protocol.py and
// bim_core/families.py build them: canonical JSON and the hashes over it, standard base64,
// result payloads of every task family with their shape, and the signed byte strings.
//
// Pure: no DOM, no storage, no network. It runs unchanged under Node 20 (globalThis.crypto),
// where tests/js/protocol.test.mjs checks every function against bytes Python produced
// (tests/js/fixtures/protocol.json, written by tests/js/make_fixtures.py).

export const PROTOCOL = "bim/1";
// The `job_failed` reason for work `welcome` lists that this page no longer holds.
export const LOST_ON_RECONNECT = "lost_on_reconnect";
// The job_failed reason for an offer of a subnet the registry said is paused (subnet_state).
export const SUBNET_PAUSED = "subnet_paused";

const utf8 = new TextEncoder();

// A lone surrogate is what is left after removing the well-formed pairs.
const SURROGATE_PAIR = /[\uD800-\uDBFF][\uDC00-\uDFFF]/g;
const SURROGATE = /[\uD800-\uDFFF]/;

/** UTF-8 JSON with sorted keys, no whitespace, non-ASCII as itself: what hashes cover. */
export function canonicalJson(value) {
  if (Array.isArray(value)) return "[" + value.map(canonicalJson).join(",") + "]";
  if (value !== null && typeof value === "object") {
    return "{" + Object.keys(value).sort()
      .map((k) => canonicalJson(k) + ":" + canonicalJson(value[k])).join(",") + "}";
  }
  if (typeof value === "number" && !Number.isFinite(value)) throw new Error("NaN or infinity has no canonical JSON");
  if (typeof value === "string" && SURROGATE.test(value.replace(SURROGATE_PAIR, ""))) {
    throw new Error("a lone surrogate has no UTF-8 encoding");
  }
  if (value === undefined || typeof value === "function" || typeof value === "bigint" || typeof value === "symbol") {
    throw new Error(`${typeof value} has no canonical JSON`);
  }
  return JSON.stringify(value);
}

/** The UTF-8 bytes of canonicalJson(value), which is what gets hashed or sent. */
export const canonicalBytes = (value) => utf8.encode(canonicalJson(value));

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Standard alphabet with padding (RFC 4648 §4), never base64url. */
export function b64encode(bytes) {
  let s = "";
  // In slices: spreading a whole 500 KiB image result into one call overflows the stack.
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict standard base64 (protocol.b64decode: the alphabet, with padding, nothing else);
 * throws on anything else. */
export function b64decode(text) {
  if (typeof text !== "string" || !BASE64.test(text)) throw new Error("invalid base64");
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export const inputHash = (inputs) => sha256Hex(canonicalBytes(inputs));
export const contractHash = (contract) => sha256Hex(canonicalBytes(contract));

/** A shape as signed: 1 to 4 positive integers (what the registry's parse_shape accepts)
 * joined by "x": "7x384" for seven embeddings, "512x512x3" for an image, "12" for a text. */
export function shapeText(shape) {
  if (!Array.isArray(shape) || shape.length < 1 || shape.length > 4 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new Error(`a shape is 1 to 4 positive integers, not ${JSON.stringify(shape)}`);
  }
  return shape.join("x");
}

const elementCount = (shape) => shape.reduce((n, d) => n * d, 1);

/** float32 of any rank, row-major, 4 bytes little-endian each whatever the CPU (DataView
 * fixes the order), no header: protocol.encode_vectors. */
export function encodeF32le(values, shape) {
  shapeText(shape);
  if (values.length !== elementCount(shape)) throw new Error(`${values.length} values do not make ${shapeText(shape)}`);
  const view = new DataView(new ArrayBuffer(values.length * 4));
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw new Error("NaN or infinity in the vectors");
    view.setFloat32(i * 4, values[i], true);
  }
  return new Uint8Array(view.buffer);
}

/** The task families of bim_core/families.py: how a result becomes the payload a node signs,
 * with its shape and the `encoding` the result message names. */
export const FAMILIES = {
  // {data: rows*dim floats, rows, dim}, as the engine returns it: shape [rows, dim].
  embedding: {
    encoding: "f32le",
    encode({ data, rows, dim }) {
      const shape = [rows, dim];
      return { payload: encodeF32le(data, shape), shape };
    },
  },
  // {finish, text, tokens}: the canonical JSON of exactly those fields, shape [len(tokens)].
  text: {
    encoding: "json",
    encode({ finish, text, tokens }) {
      if (!tokens.every(Number.isInteger)) throw new Error("token ids are integers");
      return { payload: canonicalBytes({ finish, text, tokens: [...tokens] }), shape: [tokens.length] };
    },
  },
  // {data: height*width*3 RGB samples, row-major, height, width}: raw uint8, shape [h, w, 3].
  image: {
    encoding: "rgb8",
    encode({ data, height, width }) {
      const shape = [height, width, 3];
      if (data.length !== elementCount(shape)) throw new Error(`${data.length} samples do not make ${shapeText(shape)}`);
      if (!Array.from(data).every((v) => Number.isInteger(v) && v >= 0 && v <= 255)) {
        throw new Error("an image result holds uint8 samples");
      }
      return { payload: Uint8Array.from(data), shape };
    },
  },
};

/** A result as its family encodes it: {payload, shape, encoding}. */
export function encodeResult(taskType, result) {
  const family = FAMILIES[taskType];
  if (!family) throw new Error(`no task family ${JSON.stringify(taskType)}`);
  return { ...family.encode(result), encoding: family.encoding };
}

// Signed byte strings (§1.3): one field per line, each line ending in "\n".
const signedLines = (...lines) => utf8.encode(lines.map((line) => `${line}\n`).join(""));

/** Signed by the long-term key: proves the key and certifies the session key. */
export const helloMessage = (nodeId, nonce, sessionKeyPub) =>
  signedLines(`${PROTOCOL}/hello`, nodeId, nonce, sessionKeyPub);

/** Signed by the session key for every result. */
export const resultMessage = (m) => signedLines(
  `${PROTOCOL}/result`, m.job_id, m.assignment_id, m.contract_hash, m.input_hash, m.result_hash, shapeText(m.shape));

/** Timings as sent in `timings_ms`, each printed with three decimals (Python's f"{t:.3f}"). */
export const benchmarkMessage = (m) => signedLines(
  `${PROTOCOL}/benchmark`, m.benchmark_id, m.result_hash, shapeText(m.shape), m.timings_ms.map((t) => t.toFixed(3)).join(","));

/** A run time in ms with three decimals, at least 0.001 (the registry refuses zero). The
 * number travels as JSON and the registry re-prints it with three decimals, so rounding
 * here makes both sides sign the same string. */
export const roundMs = (ms) => Math.max(0.001, Math.round(ms * 1000) / 1000);

/** An Ed25519 signature as the protocol carries it: base64 of the raw 64 bytes. */
export async function signB64(privateKey, bytes) {
  return b64encode(new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, privateKey, bytes)));
}

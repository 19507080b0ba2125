// The metadata of a GGUF file (llama.cpp's model format), read from its verified bytes: what
// the text engine needs that its runtime does not tell, namely which tokens are *control*
// tokens. The Python node renders a token's text as llama.cpp's llama_token_to_piece with
// special=false, which gives control tokens ("<|im_start|>", ...) no text; wllama's pieces
// render them. The result's `text` is signed, so the browser must drop the same tokens.
//
// Pure: a bounds-checked little-endian reader over an ArrayBuffer (a hostile file throws,
// never reads past its end). Runs under Node for tests/js/gguf.test.mjs.
//
// Layout (GGUF v2/v3): "GGUF", u32 version, u64 tensor count, u64 key-value count, then each
// key (u64 length + UTF-8) with a u32 value type and its value; an array is a u32 element
// type, a u64 count and the elements.

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
// llama.cpp's llama_token_type: tokenizer.ggml.token_type holds one per vocabulary entry.
export const TOKEN_TYPE = { UNDEFINED: 0, NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 };

const T = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 };
const SIZES = { [T.U8]: 1, [T.I8]: 1, [T.U16]: 2, [T.I16]: 2, [T.U32]: 4, [T.I32]: 4, [T.F32]: 4, [T.BOOL]: 1, [T.U64]: 8, [T.I64]: 8, [T.F64]: 8 };
const MAX_KEYS = 1 << 16;

export class GgufError extends Error {
  constructor(message) {
    super(message);
    this.name = "GgufError";
  }
}

class Reader {
  constructor(buffer) {
    this.view = new DataView(buffer instanceof ArrayBuffer ? buffer : buffer.buffer, buffer.byteOffset ?? 0, buffer.byteLength);
    this.at = 0;
  }

  need(n) {
    if (!(n >= 0) || this.at + n > this.view.byteLength) throw new GgufError(`truncated GGUF: ${n} bytes needed at offset ${this.at}`);
  }

  u32() { this.need(4); const v = this.view.getUint32(this.at, true); this.at += 4; return v; }

  u64() {
    this.need(8);
    const v = this.view.getBigUint64(this.at, true);
    this.at += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new GgufError(`a count of ${v} in a GGUF header`);
    return Number(v);
  }

  string() {
    const length = this.u64();
    this.need(length);
    const bytes = new Uint8Array(this.view.buffer, this.view.byteOffset + this.at, length);
    this.at += length;
    return new TextDecoder().decode(bytes);
  }

  scalar(type) {
    const size = SIZES[type];
    if (size === undefined) throw new GgufError(`unknown GGUF value type ${type}`);
    this.need(size);
    const v = this.view;
    const at = this.at;
    this.at += size;
    switch (type) {
      case T.U8: return v.getUint8(at);
      case T.I8: return v.getInt8(at);
      case T.U16: return v.getUint16(at, true);
      case T.I16: return v.getInt16(at, true);
      case T.U32: return v.getUint32(at, true);
      case T.I32: return v.getInt32(at, true);
      case T.F32: return v.getFloat32(at, true);
      case T.BOOL: return v.getUint8(at) !== 0;
      case T.U64: return v.getBigUint64(at, true);
      case T.I64: return v.getBigInt64(at, true);
      default: return v.getFloat64(at, true);
    }
  }

  /** A value of `type`; arrays of numbers come back as plain arrays, only when `keep`
   * (the others are skipped over, which for strings means reading their lengths). */
  value(type, keep) {
    if (type === T.STRING) return this.string();
    if (type !== T.ARRAY) return this.scalar(type);
    const elementType = this.u32();
    const count = this.u64();
    if (elementType === T.ARRAY) throw new GgufError("nested GGUF arrays are not supported");
    if (elementType === T.STRING) {
      const out = keep ? [] : null;
      for (let i = 0; i < count; i++) {
        if (keep) out.push(this.string());
        else this.skipString();
      }
      return out;
    }
    const size = SIZES[elementType];
    if (size === undefined) throw new GgufError(`unknown GGUF array element type ${elementType}`);
    this.need(size * count);
    if (!keep) { this.at += size * count; return null; }
    const out = new Array(count);
    for (let i = 0; i < count; i++) out[i] = this.scalar(elementType);
    return out;
  }

  skipString() {
    const length = this.u64();
    this.need(length);
    this.at += length;
  }
}

/** The key-value metadata of a GGUF file: a Map of key -> value. Arrays are read only for
 * the keys in `arrays` (a vocabulary holds tens of thousands of entries); other arrays map
 * to null. Throws GgufError on anything that is not a well-formed GGUF v2/v3 header. */
export function ggufMetadata(buffer, { arrays = [] } = {}) {
  const reader = new Reader(buffer);
  if (reader.u32() !== GGUF_MAGIC) throw new GgufError("not a GGUF file");
  const version = reader.u32();
  if (version !== 2 && version !== 3) throw new GgufError(`GGUF version ${version} is not supported`);
  reader.u64(); // tensor count
  const count = reader.u64();
  if (count > MAX_KEYS) throw new GgufError(`${count} metadata keys`);
  const wanted = new Set(arrays);
  const metadata = new Map();
  for (let i = 0; i < count; i++) {
    const key = reader.string();
    const type = reader.u32();
    metadata.set(key, reader.value(type, wanted.has(key)));
  }
  return metadata;
}

/** The ids of the vocabulary's control tokens (tokenizer.ggml.token_type CONTROL), which
 * llama.cpp renders as no text unless asked for special tokens. */
export function controlTokens(buffer) {
  const key = "tokenizer.ggml.token_type";
  const types = ggufMetadata(buffer, { arrays: [key] }).get(key);
  if (!Array.isArray(types)) throw new GgufError(`the GGUF has no ${key} array`);
  const out = new Set();
  types.forEach((type, id) => { if (type === TOKEN_TYPE.CONTROL) out.add(id); });
  return out;
}

// contributor/static/js/gguf.js: a GGUF header built here byte by byte (the layout of
// llama.cpp's gguf.cpp), read back; hostile files throw GgufError instead of reading past
// their end. The real SmolLM2 file's 17 control tokens are checked in the browser tests.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { js } from "./helpers.mjs";

const { GgufError, TOKEN_TYPE, controlTokens, ggufMetadata } = await import(js("gguf.js"));

const utf8 = new TextEncoder();
const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
const i32 = (v) => { const b = Buffer.alloc(4); b.writeInt32LE(v); return b; };
const str = (s) => Buffer.concat([u64(utf8.encode(s).length), Buffer.from(utf8.encode(s))]);
const kv = (key, type, value) => Buffer.concat([str(key), u32(type), value]);

function gguf(kvs, { magic = "GGUF", version = 3, count = kvs.length } = {}) {
  const bytes = Buffer.concat([Buffer.from(magic), u32(version), u64(0), u64(count), ...kvs]);
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

const TYPES = [TOKEN_TYPE.CONTROL, TOKEN_TYPE.CONTROL, TOKEN_TYPE.NORMAL, TOKEN_TYPE.USER_DEFINED, TOKEN_TYPE.BYTE, TOKEN_TYPE.CONTROL];
const VOCAB = ["<|endoftext|>", "<|im_start|>", "hello", "<tool>", "<0x0A>", "<|im_end|>"];
const model = () => gguf([
  kv("general.architecture", 8, str("llama")),
  kv("llama.block_count", 4, u32(30)),
  kv("llama.rope.freq_base", 6, (() => { const b = Buffer.alloc(4); b.writeFloatLE(100000); return b; })()),
  kv("tokenizer.ggml.add_bos_token", 7, Buffer.from([0])),
  kv("tokenizer.ggml.tokens", 9, Buffer.concat([u32(8), u64(VOCAB.length), ...VOCAB.map(str)])),
  kv("tokenizer.ggml.token_type", 9, Buffer.concat([u32(5), u64(TYPES.length), ...TYPES.map(i32)])),
  kv("tokenizer.ggml.bos_token_id", 4, u32(1)),
]);

describe("ggufMetadata", () => {
  test("reads scalars and, when asked, arrays; skips the others", () => {
    const meta = ggufMetadata(model(), { arrays: ["tokenizer.ggml.tokens"] });
    assert.equal(meta.get("general.architecture"), "llama");
    assert.equal(meta.get("llama.block_count"), 30);
    assert.equal(meta.get("llama.rope.freq_base"), 100000);
    assert.equal(meta.get("tokenizer.ggml.add_bos_token"), false);
    assert.deepEqual(meta.get("tokenizer.ggml.tokens"), VOCAB);
    assert.equal(meta.get("tokenizer.ggml.token_type"), null);
    assert.equal(meta.get("tokenizer.ggml.bos_token_id"), 1);
  });

  test("controlTokens are the ids typed CONTROL, not user-defined or byte tokens", () => {
    assert.deepEqual([...controlTokens(model())], [0, 1, 5]);
  });

  test("refuses what is not a well-formed GGUF, never reading past the end", () => {
    const whole = model();
    for (const cut of [3, 8, 23, 30, whole.byteLength - 1]) {
      assert.throws(() => ggufMetadata(whole.slice(0, cut)), GgufError, `cut at ${cut}`);
    }
    assert.throws(() => ggufMetadata(gguf([], { magic: "GGML" })), /not a GGUF file/);
    assert.throws(() => ggufMetadata(gguf([], { version: 1 })), /version 1/);
    assert.throws(() => ggufMetadata(gguf([], { count: 1 << 20 })), /metadata keys/);
    assert.throws(() => ggufMetadata(gguf([kv("x", 13, u32(0))])), /unknown GGUF value type 13/);
    assert.throws(() => ggufMetadata(gguf([kv("x", 9, Buffer.concat([u32(5), u64(2n ** 40n)]))])), GgufError);
    assert.throws(() => ggufMetadata(gguf([kv("x", 9, Buffer.concat([u32(9), u64(1)]))])), /nested/);
    // A string claiming more bytes than the file has.
    assert.throws(() => ggufMetadata(gguf([Buffer.concat([u64(1000), Buffer.from("key")])])), /truncated/);
    assert.throws(() => controlTokens(gguf([kv("general.architecture", 8, str("llama"))])), /no tokenizer.ggml.token_type/);
  });
});

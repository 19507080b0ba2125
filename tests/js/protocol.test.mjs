// contributor/static/js/protocol.js against the bytes bim_core produced
// (fixtures/protocol.json, from make_fixtures.py) and against docs/protocol.md's worked example.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { bytes, fixture, hex, js, keyFromSeed, ROOT } from "./helpers.mjs";

const protocol = await import(js("protocol.js"));

describe("canonical JSON and the hashes over it", () => {
  for (const [i, c] of fixture.canonical_json.entries()) {
    test(`case ${i}: ${c.canonical.slice(0, 40)}`, async () => {
      assert.equal(protocol.canonicalJson(c.value), c.canonical);
      assert.equal(await protocol.sha256Hex(protocol.canonicalBytes(c.value)), c.sha256);
    });
  }

  test("input and contract hashes", async () => {
    const h = fixture.hashes;
    assert.equal(await protocol.inputHash(h.inputs), h.input_hash);
    assert.equal(await protocol.contractHash(h.contract), h.contract_hash);
    // A hash covers the values, not the order keys were written in.
    const reversed = Object.fromEntries(Object.entries(h.contract).reverse());
    assert.equal(await protocol.contractHash(reversed), h.contract_hash);
  });

  test("refuses what has no canonical JSON, as Python's json.dumps(allow_nan=False) + UTF-8 does", () => {
    for (const bad of [NaN, Infinity, -Infinity, { a: [1, NaN] }, "lone \uD800 surrogate", "\uDC00", { "\uD83D": 1 },
      undefined, { a: undefined }, () => 1, 10n]) {
      assert.throws(() => protocol.canonicalJson(bad), Error, String(bad));
    }
    // A well-formed surrogate pair is one character, and fine.
    assert.equal(protocol.canonicalJson("\uD83D\uDE80"), "\"🚀\"");
  });
});

describe("base64", () => {
  test("standard alphabet with padding, every padding length and byte value", () => {
    for (const c of fixture.base64.cases) assert.equal(protocol.b64encode(Buffer.from(c.hex, "hex")), c.b64, c.hex);
  });

  test("a payload longer than one 0x8000-byte slice", async () => {
    const { repeat_hex: pattern, times, b64_sha256: expected } = fixture.base64.long;
    const data = Buffer.from(pattern.repeat(times), "hex");
    assert.ok(data.length > 2 * 0x8000);
    assert.equal(await protocol.sha256Hex(bytes(protocol.b64encode(data))), expected);
  });
});

describe("float32 payloads of any rank", () => {
  for (const c of fixture.f32le) {
    test(`rank ${c.shape.length}: ${c.shape.join("x")}`, async () => {
      const payload = protocol.encodeF32le(c.values, c.shape);
      assert.equal(payload.length, c.values.length * 4);
      assert.equal(hex(payload.subarray(0, 16)), c.head_hex);
      assert.equal(await protocol.sha256Hex(payload), c.sha256);
    });
  }

  test("refuses values that do not fill the shape, and non-finite values", () => {
    assert.throws(() => protocol.encodeF32le([1, 2, 3], [2, 2]), /3 values do not make 2x2/);
    assert.throws(() => protocol.encodeF32le([1, NaN], [2]), /NaN or infinity/);
    assert.throws(() => protocol.encodeF32le([1, Infinity], [1, 2]), /NaN or infinity/);
  });
});

describe("shapes", () => {
  test("1 to 4 positive integers joined by x", () => {
    assert.equal(protocol.shapeText([12]), "12");
    assert.equal(protocol.shapeText([7, 384]), "7x384");
    assert.equal(protocol.shapeText([512, 512, 3]), "512x512x3");
    assert.equal(protocol.shapeText([1, 2, 3, 4]), "1x2x3x4");
  });

  test("refuses what the registry's parse_shape refuses", () => {
    for (const bad of [[], [0], [2, -1], [1, 2, 3, 4, 5], [1.5], ["2"], [true], "2x3", null]) {
      assert.throws(() => protocol.shapeText(bad), /a shape is 1 to 4 positive integers/, JSON.stringify(bad));
    }
  });
});

describe("results of every task family (rank 1, 2 and 3)", () => {
  for (const c of fixture.results) {
    test(`${c.task_type}: ${c.fields.shape.join("x")} ${c.encoding}`, async () => {
      const encoded = protocol.encodeResult(c.task_type, c.result);
      assert.equal(encoded.encoding, c.encoding);
      assert.deepEqual(encoded.shape, c.fields.shape);
      assert.equal(protocol.b64encode(encoded.payload), c.data);
      assert.equal(await protocol.sha256Hex(encoded.payload), c.fields.result_hash);
      const message = protocol.resultMessage(c.fields);
      assert.equal(new TextDecoder().decode(message), c.message);
      const session = await keyFromSeed(fixture.keys.session_seed_hex);
      assert.equal(await protocol.signB64(session, message), c.signature);
    });
  }

  test("refuses results their family cannot encode", () => {
    assert.throws(() => protocol.encodeResult("audio", {}), /no task family "audio"/);
    assert.throws(() => protocol.encodeResult("embedding", { data: [1, 2, 3], rows: 2, dim: 2 }), /do not make 2x2/);
    assert.throws(() => protocol.encodeResult("embedding", { data: [], rows: 0, dim: 4 }), /positive integers/);
    assert.throws(() => protocol.encodeResult("text", { finish: "stop", text: "a", tokens: [1.5] }), /token ids are integers/);
    assert.throws(() => protocol.encodeResult("text", { text: "a", tokens: [1] }), /undefined has no canonical JSON/);
    assert.throws(() => protocol.encodeResult("image", { data: [1, 2, 3], height: 1, width: 2 }), /3 samples do not make 1x2x3/);
    assert.throws(() => protocol.encodeResult("image", { data: [0, 1, 256], height: 1, width: 1 }), /uint8 samples/);
  });
});

describe("hello and benchmark messages", () => {
  test("the hello string and its long-term signature", async () => {
    const h = fixture.hello;
    const message = protocol.helloMessage(h.node_id, h.nonce, h.session_key_pub);
    assert.equal(new TextDecoder().decode(message), h.message);
    assert.equal(await protocol.signB64(await keyFromSeed(fixture.keys.long_term_seed_hex), message), h.signature);
  });

  test("the benchmark string prints timings with three decimals, as Python's {t:.3f}", async () => {
    const b = fixture.benchmark;
    const message = protocol.benchmarkMessage(b);
    assert.equal(new TextDecoder().decode(message), b.message);
    assert.equal(await protocol.signB64(await keyFromSeed(fixture.keys.session_seed_hex), message), b.signature);
  });

  test("run times are rounded to three decimals, never to zero", () => {
    assert.equal(protocol.roundMs(12.34549), 12.345);
    assert.equal(protocol.roundMs(12.3456), 12.346);
    assert.equal(protocol.roundMs(0), 0.001);
    assert.equal(protocol.roundMs(0.0004), 0.001);
  });
});

test("docs/protocol.md's worked example holds the values this module computes", async () => {
  const doc = readFileSync(new URL("docs/protocol.md", ROOT), "utf8");
  const embedding = fixture.results.find((c) => c.task_type === "embedding");
  const encoded = protocol.encodeResult("embedding", embedding.result);
  const computed = [
    protocol.canonicalJson(fixture.hashes.inputs),
    await protocol.inputHash(fixture.hashes.inputs),
    protocol.canonicalJson(fixture.hashes.contract),
    await protocol.contractHash(fixture.hashes.contract),
    protocol.b64encode(encoded.payload),
    await protocol.sha256Hex(encoded.payload),
    new TextDecoder().decode(protocol.resultMessage(embedding.fields)).replaceAll("\n", "\\n"),
    await protocol.signB64(await keyFromSeed(fixture.keys.session_seed_hex), protocol.resultMessage(embedding.fields)),
    await protocol.signB64(await keyFromSeed(fixture.keys.long_term_seed_hex),
      protocol.helloMessage(fixture.hello.node_id, fixture.hello.nonce, fixture.hello.session_key_pub)),
  ];
  for (const value of computed) assert.ok(doc.includes(value), `docs/protocol.md lacks ${value}`);
});

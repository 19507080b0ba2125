// contributor/static/js/upscale.js against bim_core/runtimes/upscaler.py
// (fixtures/images.json): the same spans, the same windows in the same order, and the same
// bytes out of a stand-in model computed alike on both sides (make_image_fixtures.py's
// stand_in_model, twinned below), so padding, tiling, seams and quantization are exact.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { js } from "./helpers.mjs";

const upscale = await import(js("upscale.js"));
const fixture = JSON.parse(readFileSync(new URL("fixtures/images.json", import.meta.url), "utf8"));
const f = Math.fround;

/** make_image_fixtures.stand_in_model, in float32 step by step as numpy computes it. */
function standInModel(data, dims, pad) {
  const [, , h, w] = dims;
  const innerH = h - 2 * pad;
  const innerW = w - 2 * pad;
  const at = (c, y, x) => data[c * h * w + y * w + x];
  const outH = 2 * innerH;
  const outW = 2 * innerW;
  const out = new Float32Array(3 * outH * outW);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < innerH; y++) {
      for (let x = 0; x < innerW; x++) {
        const centre = at(c, pad + y, pad + x);
        const far = at(c, 2 * pad + y, 2 * pad + x);
        const other = at((c + 1) % 3, pad + y, pad + x);
        const mixed = f(f(f(centre * 1.25) - f(far * 0.375)) + f(other * 0.125));
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) {
            let v = mixed;
            if (dy === 1) v = f(v + 0.0625);
            if (dx === 1) v = f(v - 0.03125);
            out[c * outH * outW + (2 * y + dy) * outW + 2 * x + dx] = v;
          }
        }
      }
    }
  }
  return { data: out, dims: [1, 3, outH, outW] };
}

describe("tiling as upscaler.py tiles", () => {
  test("spans", () => {
    for (const c of fixture.spans) assert.deepEqual(upscale.spans(c.length, c.tile), c.spans, `${c.length} / ${c.tile}`);
  });

  for (const c of fixture.tiling) {
    test(`${c.width}x${c.height}, ${JSON.stringify(c.settings)}: the same windows and bytes`, async () => {
      const settings = upscale.upscaleSettings(c.settings);
      const windows = [];
      const image = { data: new Uint8Array(Buffer.from(c.pixels_hex, "hex")), height: c.height, width: c.width };
      const out = await upscale.upscalePixels(image, async (data, dims) => {
        windows.push(dims);
        return standInModel(data, dims, settings.pad);
      }, settings);
      assert.deepEqual(windows, c.windows);
      assert.equal(out.height, 2 * c.height);
      assert.equal(out.width, 2 * c.width);
      assert.equal(Buffer.from(out.data.subarray(0, 48)).toString("hex"), c.out_head_hex);
      assert.equal(createHash("sha256").update(out.data).digest("hex"), c.out_sha256);
    });
  }

  test("a model answer smaller than the window's 2x is refused, not written", async () => {
    const settings = upscale.upscaleSettings({ pad: 1, tile: 0 });
    const image = { data: new Uint8Array(4 * 4 * 3), height: 4, width: 4 };
    await assert.rejects(
      upscale.upscalePixels(image, async () => ({ data: new Float32Array(3 * 7 * 8), dims: [1, 3, 7, 8] }), settings),
      /the model returned 1x3x7x8 for a window of 1x3x6x6/,
    );
    await assert.rejects(upscale.upscalePixels({ ...image, height: 5 }, async () => null, settings), /expected an RGB uint8/);
  });
});

describe("quantize as np.rint(np.clip(x, 0, 1) * 255)", () => {
  test("every fixture value, halfway cases rounded to even", () => {
    const { values, uint8 } = fixture.quantize;
    const planes = new Float32Array(values.length * 3);
    planes.set(values, 0);
    planes.set(values, values.length);
    planes.set(values, 2 * values.length);
    const out = upscale.quantize(planes, 1, values.length);
    assert.deepEqual(Array.from(out.filter((_, i) => i % 3 === 0)), uint8);
    assert.deepEqual(Array.from(out.filter((_, i) => i % 3 === 2)), uint8);
  });

  test("NaN is an engine fault, not a pixel", () => {
    assert.throws(() => upscale.quantize(Float32Array.of(0, NaN, 0), 1, 1), /NaN/);
  });

  test("roundHalfEven", () => {
    assert.deepEqual([0.5, 1.5, 2.5, 2.4999, 2.5001, 254.5, 255].map(upscale.roundHalfEven), [0, 2, 2, 2, 3, 254, 255]);
  });
});

describe("upscaleSettings: Upscaler.from_preprocessing's defaults and refusals", () => {
  test("defaults: upconv7, its pad, tile 128, max_side 256", () => {
    assert.deepEqual(upscale.upscaleSettings({}), { variant: "upconv7", pad: 7, tile: 128, multiple: 1, maxSide: 256 });
    assert.deepEqual(upscale.upscaleSettings({ variant: "cunet", max_side: 192 }), { variant: "cunet", pad: 18, tile: 128, multiple: 2, maxSide: 192 });
  });

  test("refuses what the Python node refuses", () => {
    assert.throws(() => upscale.upscaleSettings({ variant: "bicubic" }), /unknown waifu2x variant/);
    assert.throws(() => upscale.upscaleSettings({ variant: "toString" }), /unknown waifu2x variant/);
    assert.throws(() => upscale.upscaleSettings({ pad: -1 }), /pad and tile must be >= 0/);
    assert.throws(() => upscale.upscaleSettings({ variant: "cunet", tile: 127 }), /multiple of 2/);
    assert.throws(() => upscale.upscaleSettings({ tile: 1.5 }), /preprocessing.tile must be an integer/);
    assert.throws(() => upscale.upscaleSettings({ pad: null }), /preprocessing.pad must be an integer/);
  });
});

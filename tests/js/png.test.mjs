// contributor/static/js/png.js against Pillow (fixtures/images.json, from
// make_image_fixtures.py): the same pixels from every filter type, Adam7 interlacing, split
// image data and ancillary chunks, and a refusal wherever Pillow refuses.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { js } from "./helpers.mjs";

const png = await import(js("png.js"));
const fixture = JSON.parse(readFileSync(new URL("fixtures/images.json", import.meta.url), "utf8"));
const fromB64 = (text) => new Uint8Array(Buffer.from(text, "base64"));

describe("pngDecode", () => {
  for (const c of fixture.png.decoded) {
    test(`${c.name}: Pillow's pixels`, async () => {
      const image = await png.pngDecode(fromB64(c.png));
      assert.equal(image.height, c.height);
      assert.equal(image.width, c.width);
      assert.equal(Buffer.from(image.data).toString("hex"), c.pixels_hex);
    });
  }

  for (const c of fixture.png.refused) {
    test(`${c.name}: refused, as Pillow refuses it`, async () => {
      await assert.rejects(png.pngDecode(fromB64(c.png)), png.PngError);
    });
  }

  test("an image larger than maxSide is refused before it is inflated", async () => {
    const c = fixture.png.decoded.find((d) => d.width === 64);
    await assert.rejects(png.pngDecode(fromB64(c.png), { maxSide: 63 }), /each side must be at most 63 px/);
    assert.equal((await png.pngDecode(fromB64(c.png), { maxSide: 64 })).width, 64);
  });

  test("pngSize reads the header alone, with families.png_size's refusals", () => {
    const c = fixture.png.decoded[0];
    assert.deepEqual(png.pngSize(fromB64(c.png)), { width: c.width, height: c.height });
    assert.throws(() => png.pngSize(fromB64(c.png).subarray(0, 32)), /must be a PNG file/);
    const rgba = fromB64(fixture.png.refused.find((r) => r.name === "RGBA").png);
    assert.throws(() => png.pngSize(rgba), /8-bit RGB PNG/);
  });

  test("Adam7 passes of a 13x11 image, the empty ones left out", () => {
    assert.deepEqual(png.passesOf(13, 11, 1).map((p) => [p.width, p.height]), [[2, 2], [2, 2], [4, 1], [3, 3], [7, 3], [6, 6], [13, 5]]);
    assert.deepEqual(png.passesOf(1, 1, 1).map((p) => [p.width, p.height]), [[1, 1]]);
    assert.deepEqual(png.passesOf(5, 4, 0).map((p) => [p.width, p.height]), [[5, 4]]);
  });
});

// 2x super-resolution around a waifu2x model call, exactly as bim_core/runtimes/upscaler.py
// does it, because both nodes of a job must compute the same pixels for their result
// hashes to name the same bytes (and their SSIM to reach the subnet's tau):
//
// - input: RGB uint8 (H, W, 3) to float32 as x / 255 (one float32 division: a double
//   quotient rounded to float32 is the correctly rounded float32 quotient, as numpy's);
// - zeros around the image, `pad` pixels a side; windows of `tile` x `tile` input pixels
//   with `pad` pixels of real neighbours around each; a last window that would be short is
//   shifted back to full size, and windows are written in the same order (rows of columns),
//   so where two overlap the later one wins on both sides;
// - CUNet takes only even sizes: a window is extended with zeros and its output cropped;
// - output: clipped to 0..1, times 255 in float32, rounded half to even (np.rint), uint8.
//
// The model call is a parameter (`runWindow`), so this runs under Node with a stand-in
// model (tests/js/upscale.test.mjs, against Python's tiling of the same stand-in) and in
// the engine's worker with onnxruntime-web (./image-runner.js).

/** The model files the subnet may name (upscaler.py's VARIANTS): the context the model
 * needs around a window, and the multiple its input sides must be. */
export const VARIANTS = {
  upconv7: { pad: 7, multiple: 1 },
  cunet: { pad: 18, multiple: 2 },
};
export const DEFAULT_TILE = 128;
export const DEFAULT_MAX_SIDE = 256; // families.ImageFamily's default

const integer = (value, what) => {
  const n = value === null ? NaN : Number(value);
  if (!Number.isInteger(n)) throw new Error(`preprocessing.${what} must be an integer, not ${JSON.stringify(value)}`);
  return n;
};

/** {variant, pad, tile, multiple, maxSide} from a manifest's `preprocessing`, with
 * Upscaler.from_preprocessing's defaults and refusals. */
export function upscaleSettings(preprocessing = {}) {
  const variant = String(preprocessing.variant ?? "upconv7");
  if (!Object.hasOwn(VARIANTS, variant)) {
    throw new Error(`unknown waifu2x variant ${JSON.stringify(variant)} (known: ${Object.keys(VARIANTS).join(", ")})`);
  }
  const { multiple } = VARIANTS[variant];
  const pad = "pad" in preprocessing ? integer(preprocessing.pad, "pad") : VARIANTS[variant].pad;
  const tile = integer(preprocessing.tile ?? DEFAULT_TILE, "tile");
  const maxSide = integer(preprocessing.max_side ?? DEFAULT_MAX_SIDE, "max_side");
  if (pad < 0 || tile < 0) throw new Error("pad and tile must be >= 0");
  if (tile % multiple) throw new Error(`${variant} needs a tile size that is a multiple of ${multiple}`);
  return { variant, pad, tile, multiple, maxSide };
}

/** upscaler._spans: [start, end) windows of `tile` along a side of `length`. */
export function spans(length, tile) {
  if (tile <= 0 || length <= tile) return [[0, length]];
  const out = [];
  for (let start = 0; start < length; start += tile) out.push([Math.min(start, length - tile), Math.min(start + tile, length)]);
  return out;
}

const positiveMod = (a, m) => ((a % m) + m) % m;

/** numpy.rint of a non-negative number: to the nearest integer, ties to the even one. */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The float output (3, H, W) as uint8 (H, W, 3): clip, times 255 in float32, rint. */
export function quantize(planes, height, width) {
  const out = new Uint8Array(height * width * 3);
  const plane = height * width;
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) {
      const v = planes[c * plane + i];
      if (Number.isNaN(v)) throw new Error("the model returned NaN");
      out[i * 3 + c] = roundHalfEven(Math.fround(Math.min(Math.max(v, 0), 1) * 255));
    }
  }
  return out;
}

/** The image as float32 planes (3, H + 2 pad, W + 2 pad), zeros around it. */
export function paddedPlanes({ data, height, width }, pad) {
  const rows = height + 2 * pad;
  const cols = width + 2 * pad;
  const planes = new Float32Array(3 * rows * cols);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const from = (y * width + x) * 3;
      const to = (y + pad) * cols + x + pad;
      for (let c = 0; c < 3; c++) planes[c * rows * cols + to] = data[from + c] / 255;
    }
  }
  return { planes, rows, cols };
}

/** One model input: rows [top, top + h) and columns [left, left + w) of the padded planes,
 * extended with zeros to (h + extraH, w + extraW). */
function windowOf({ planes, rows, cols }, top, left, h, w, extraH, extraW) {
  const height = h + extraH;
  const width = w + extraW;
  const data = new Float32Array(3 * height * width);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < h; y++) {
      const from = c * rows * cols + (top + y) * cols + left;
      data.set(planes.subarray(from, from + w), c * height * width + y * width);
    }
  }
  return { data, dims: [1, 3, height, width] };
}

/** Upscales an RGB uint8 image {data (H, W, 3), height, width} by 2 with `runWindow(data,
 * dims) -> {data, dims}` (an NCHW float32 model call), under `settings` (upscaleSettings).
 * Returns {data: Uint8Array (2H, 2W, 3), height: 2H, width: 2W}. */
export async function upscalePixels(image, runWindow, settings) {
  const { height, width } = image;
  if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0) || image.data.length !== height * width * 3) {
    throw new Error(`expected an RGB uint8 (H, W, 3) image, got ${image.data.length} samples for ${width}x${height}`);
  }
  const { pad, tile, multiple } = settings;
  const padded = paddedPlanes(image, pad);
  const outH = 2 * height;
  const outW = 2 * width;
  const out = new Float32Array(3 * outH * outW);
  for (const [top, bottom] of spans(height, tile)) {
    for (const [left, right] of spans(width, tile)) {
      const h = bottom - top;
      const w = right - left;
      const input = windowOf(padded, top, left, h + 2 * pad, w + 2 * pad, positiveMod(-h, multiple), positiveMod(-w, multiple));
      const result = await runWindow(input.data, input.dims);
      const [, channels, resultH, resultW] = result.dims;
      if (channels !== 3 || resultH < 2 * h || resultW < 2 * w) {
        throw new Error(`the model returned ${result.dims.join("x")} for a window of ${input.dims.join("x")}`);
      }
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < 2 * h; y++) {
          const from = c * resultH * resultW + y * resultW;
          out.set(result.data.subarray(from, from + 2 * w), c * outH * outW + (2 * top + y) * outW + 2 * left);
        }
      }
    }
  }
  return { data: quantize(out, outH, outW), height: outH, width: outW };
}

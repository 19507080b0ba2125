// The image family in the engine's worker: a waifu2x ONNX model (the subnet's verified
// file) under onnxruntime-web, called window by window by ./upscale.js with the contract's
// padding and tiling, on the pixels ./png.js decodes from the job's base64 PNG. What a job
// gets back is the uint8 (2H, 2W, 3) samples the family signs (protocol.js FAMILIES.image).

import { ortSession, tensorData } from "./ort-session.js";
import { pngDecode } from "./png.js";
import { b64decode } from "./protocol.js";
import { upscalePixels, upscaleSettings } from "./upscale.js";

/** An input this node refuses to compute (not a fault of the engine): the job is given
 * back with `bad_message` (docs/protocol.md §4.4), as the Python node refuses it. */
export class InputRefused extends Error {
  constructor(message) {
    super(message);
    this.name = "InputRefused";
    this.code = "bad_input";
  }
}

/** Loads the model and warms it up at a full tile. Returns the runner: {info, upscale(imageB64)}. */
export async function imageRunnerCreate(files, manifest, { backend, threads }) {
  const settings = upscaleSettings(manifest.preprocessing || {});
  // The waifu2x files declare their output as [batch, 3, height, width], the input's own
  // symbolic sizes, though it is twice the window less the context. onnxruntime's CPU
  // backends never rely on that; its WebGPU backend wraps convolutions in NHWC transposes and
  // then plans to reuse the transposed input's buffer for the output ("Shape mismatch
  // attempting to re-use buffer. {1,142,142,3} != {1,256,256,3}"). In NCHW there is no such
  // transpose, and the model file (whose checksum the contract pins) stays as it is.
  const loaded = await ortSession(files.model, { backend, threads, webgpuLayout: "NCHW" });
  const { ort, session } = loaded;
  const inputName = session.inputNames[0];
  const outputName = session.outputNames[0];

  async function runWindow(data, dims) {
    const results = await session.run({ [inputName]: new ort.Tensor("float32", data, dims) }, [outputName]);
    const output = results[outputName];
    return { data: await tensorData(output), dims: [...output.dims] };
  }

  /** The result's pixels, and `timings` (ms) for measurements: decoding the PNG, the model
   * calls, and the rest (padding, windows, assembly, quantization). */
  async function upscale(imageB64) {
    const started = performance.now();
    let image;
    try {
      image = await pngDecode(b64decode(imageB64), { maxSide: settings.maxSide });
    } catch (err) {
      throw new InputRefused(`image: ${err.message}`);
    }
    const decoded = performance.now();
    let modelMs = 0;
    const timedWindow = async (data, dims) => {
      const t0 = performance.now();
      const result = await runWindow(data, dims);
      modelMs += performance.now() - t0;
      return result;
    };
    const out = await upscalePixels(image, timedWindow, settings);
    const tilingMs = performance.now() - decoded - modelMs;
    return { ...out, timings: { decodeMs: decoded - started, modelMs, tilingMs } };
  }

  // Warm-up before the page says `ready`: onnxruntime's arena grows to a full window, so
  // the registry's benchmark (timed on its clock from the moment it is issued) measures
  // steady state, not first-run costs.
  const side = Math.min(settings.tile || 64, settings.maxSide);
  await upscalePixels({ data: new Uint8Array(side * side * 3), height: side, width: side }, runWindow, settings);
  return {
    info: { runtime: loaded.runtime, backend: loaded.backend, threads: loaded.threads },
    upscale,
    close: () => session.release(),
  };
}

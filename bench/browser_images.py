"""The images part of bench/browser_agreement.py: the waifu2x subnet's ONNX file upscaling
the same photo crops in the browser engine (onnxruntime-web WASM in headless Chromium, 1
and 2 threads, js/upscale.js's tiling) and in the Python node's runner (onnxruntime, 1
thread, bim_core/runtimes/upscaler.py), each from the job's base64 PNG to the result's
pixels. Per image: the registry's own verdict on the pair (bim_core.verification,
perceptual hash then SSIM against the subnet's tau), the SSIM, whether the pixels are
bitwise identical; and the speed of each side over the same images in the same run."""

from __future__ import annotations

import base64
import random
import time
from typing import Any

import numpy as np

# scikit-image's bundled RGB photos (nothing downloaded).
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "cat", "colorwheel"]
# Input sizes within the subnet's max_side (192): one tile, a tile with a short edge, and
# images of 2 x 2 tiles (tile 128) whose last windows are shifted back.
SIZES = [(48, 64), (64, 64), (96, 128), (128, 128), (144, 192), (192, 160), (192, 192)]
QUICK_SIZES = [(32, 32), (40, 56)]

UPSCALE_JS = """async ({url, pngs, backend, threads}) => {
  const engine = await bim.createEngine({manifestUrl: url, backend, threads});
  const { encodeResult } = await import("/static/js/protocol.js");
  const b64 = (bytes) => {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };
  try {
    // Warm-up, as the native side's: the first image, untimed (JIT tiers, allocations).
    encodeResult("image", await engine.upscale(pngs[0]));
    const out = [];
    const phases = {decodeMs: 0, modelMs: 0, tilingMs: 0, transferMs: 0, encodeMs: 0};
    let seconds = 0;
    for (const png of pngs) {
      const t0 = performance.now();
      const result = await engine.upscale(png);
      const t1 = performance.now();
      encodeResult("image", result);  // what the page does with it before signing
      const t2 = performance.now();
      seconds += (t2 - t0) / 1000;
      const {decodeMs, modelMs, tilingMs} = result.timings;
      Object.assign(phases, {decodeMs: phases.decodeMs + decodeMs, modelMs: phases.modelMs + modelMs, tilingMs: phases.tilingMs + tilingMs,
        transferMs: phases.transferMs + (t1 - t0) - (decodeMs + modelMs + tilingMs), encodeMs: phases.encodeMs + (t2 - t1)});
      out.push({height: result.height, width: result.width, pixels: b64(result.data)});
    }
    return {seconds, phases, out, taskType: engine.taskType, backend: engine.backend, threads: engine.threads,
            runtime: engine.runtime, env: bim.environment()};
  } finally {
    await engine.close();
  }
}"""


class TimedSession:
    """An onnxruntime session whose `run` calls are timed (the native side's model phase)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.seconds = 0.0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def photo_crops(count: int, *, quick: bool, seed: int = 17) -> list[np.ndarray]:
    from skimage import data

    rng = random.Random(seed)
    sizes = QUICK_SIZES if quick else SIZES
    crops = []
    for k in range(count):
        photo = getattr(data, PHOTOS[k % len(PHOTOS)])()[:, :, :3]
        height, width = sizes[k % len(sizes)]
        top, left = rng.randrange(photo.shape[0] - height + 1), rng.randrange(photo.shape[1] - width + 1)
        crops.append(np.ascontiguousarray(photo[top : top + height, left : left + width]))
    return crops


def job_inputs(images: list[np.ndarray]) -> list[dict[str, str]]:
    """Each image as an image job's inputs: base64 of a PNG (Pillow's encoder)."""
    from bim_core import protocol
    from bim_core.png import png_encode

    return [{"image": protocol.b64encode(png_encode(image))} for image in images]


def native_run(inputs: list[dict[str, str]]) -> tuple[list[np.ndarray], float, dict[str, float]]:
    """The Python node's image runner (runners._image_runner: PNG decoding, then the
    upscaler), 1 thread, after a warm-up on the first image; the results, the seconds and
    the phases' milliseconds (decoding, model calls, the rest)."""
    from bim_core import protocol
    from bim_core.families import png_decode
    from bim_core.runtimes.upscaler import Upscaler
    from subnets import defaults
    from tests.images import waifu2x_model

    upscaler = Upscaler.from_preprocessing(waifu2x_model(), defaults.image_subnet_settings()["preprocessing"], threads=1)
    timed = TimedSession(upscaler.session)
    upscaler.session = timed
    upscaler(png_decode(protocol.b64decode(inputs[0]["image"])))
    timed.seconds = 0.0
    decode_s = 0.0
    results = []
    started = time.perf_counter()
    for job in inputs:
        t0 = time.perf_counter()
        image = png_decode(protocol.b64decode(job["image"]))
        decode_s += time.perf_counter() - t0
        results.append(upscaler(image))
    seconds = time.perf_counter() - started
    phases = {"decodeMs": decode_s * 1000, "modelMs": timed.seconds * 1000, "tilingMs": (seconds - decode_s - timed.seconds) * 1000}
    return results, seconds, phases


def browser_run(page: Any, manifest_path: str, inputs: list[dict[str, str]], threads: int) -> dict[str, Any]:
    """The engine harness page's engine on every image: its pixels and total seconds."""
    run = dict(page.evaluate(UPSCALE_JS, {"url": manifest_path, "pngs": [job["image"] for job in inputs], "backend": "wasm", "threads": threads}))
    run["images"] = [
        np.frombuffer(base64.b64decode(item["pixels"]), dtype=np.uint8).reshape(item["height"], item["width"], 3)
        for item in run.pop("out")
    ]
    return run


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The SSIM bim_core.verification.verify_image_pair computes (its window rule)."""
    from skimage.metrics import structural_similarity

    side = min(a.shape[:2])
    return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=min(7, side if side % 2 else side - 1)))


def agreement(browser: list[np.ndarray], native: list[np.ndarray], tolerances: dict[str, Any]) -> dict[str, Any]:
    from bim_core.verification import verify_image_pair

    similarities = [ssim(b, n) for b, n in zip(browser, native, strict=True)]
    verdicts = [verify_image_pair(b, n, ssim_min=float(tolerances["ssim_min"]), phash_max=int(tolerances["phash_max"])) for b, n in zip(browser, native, strict=True)]
    differing = sum(int((b != n).sum()) for b, n in zip(browser, native, strict=True))
    samples = sum(n.size for n in native)
    return {
        "ssim_min": min(similarities),
        "ssim_median": float(np.median(similarities)),
        "bitwise_identical_share": float(np.mean([np.array_equal(b, n) for b, n in zip(browser, native, strict=True)])),
        "differing_samples_share": differing / samples,
        "max_abs_diff": int(max(int(np.abs(b.astype(np.int16) - n).max()) for b, n in zip(browser, native, strict=True))),
        "false_rejects": sum(not v.passed for v in verdicts),
        "false_reject_rate": float(np.mean([not v.passed for v in verdicts])),
    }


def images_part(page_for: Any, manifest_path: str, count: int, *, quick: bool, log: Any) -> dict[str, Any]:
    """The images' figures. `page_for(threads)` opens the harness page for one browser run
    (a fresh context each) and returns (page, close)."""
    from subnets import defaults

    settings = defaults.image_subnet_settings()
    images = photo_crops(count, quick=quick)
    inputs = job_inputs(images)
    log(f"images: native onnxruntime, 1 thread, {len(images)} images")
    native, native_s, native_phases = native_run(inputs)
    runs: dict[int, dict[str, Any]] = {}
    for threads in (1, 2):
        page, close = page_for(threads)
        try:
            log(f"images: browser WASM, {threads} thread(s)")
            runs[threads] = browser_run(page, manifest_path, inputs, threads)
        finally:
            close()
    output_pixels = sum(4 * image.shape[0] * image.shape[1] for image in images)
    out: dict[str, Any] = {
        "images": len(images),
        "input_sizes": [list(image.shape[:2]) for image in images],
        "output_megapixels": round(output_pixels / 1e6, 4),
        "tau_ssim": settings["tolerances"]["ssim_min"],
        "phash_max": settings["tolerances"]["phash_max"],
        "preprocessing": settings["preprocessing"],
        "runtime": runs[1]["runtime"],
        "native_images_per_s_1_thread": round(len(images) / native_s, 3),
    }
    for threads, run in runs.items():
        assert run["taskType"] == "image" and run["threads"] == threads, (run["taskType"], run["threads"])
        suffix = f"{threads}_thread{'s' if threads > 1 else ''}"
        out[f"browser_images_per_s_{suffix}"] = round(len(images) / run["seconds"], 3)
        out[f"wasm_{threads}t_vs_native"] = agreement(run["images"], native, settings["tolerances"])
    # The yardstick: browser WASM on one thread against native on one thread.
    out["browser_1t_speed_over_native_1t"] = round(native_s / runs[1]["seconds"], 3)
    out["wasm_1t_equals_2t_bitwise"] = all(np.array_equal(a, b) for a, b in zip(runs[1]["images"], runs[2]["images"], strict=True))
    out["seconds"] = {"native_1t": round(native_s, 3), "browser_1t": round(runs[1]["seconds"], 3), "browser_2t": round(runs[2]["seconds"], 3)}
    # Where the time goes, per image (ms): PNG decoding, the model calls, the rest of the
    # upscale (padding, windows, assembly, quantization); the browser also pays the worker's
    # message (transfer) and the page's result encoding (encodeResult, before signing).
    def per_image(phases: dict[str, float]) -> dict[str, float]:
        return {k: round(v / len(images), 1) for k, v in phases.items()}

    out["phases_ms_per_image"] = {"native_1t": per_image(native_phases), **{f"browser_{t}t": per_image(r["phases"]) for t, r in runs.items()}}
    out["model_only_browser_1t_speed_over_native_1t"] = round(native_phases["modelMs"] / runs[1]["phases"]["modelMs"], 3)
    return out

"""The browser engine on the image subnet (waifu2x UpConv7 2x, onnxruntime-web in a Web
Worker, real Chromium) against the Python node's upscaler on the same ONNX file: the pixels
the registry would compare, an image that cannot be the contract's refused before any
compute, and the WebGPU path on SwiftShader's software adapter."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from bim_core import protocol
from bim_core.png import png_encode
from bim_core.runtimes.upscaler import Upscaler
from bim_core.verification import verify_image_pair
from subnets import defaults
from tests.browser.conftest import open_harness
from tests.images import sample_image, waifu2x_model

pytestmark = pytest.mark.timeout(420)

MANIFEST = f"/subnets/{defaults.IMAGE_SLUG}/manifest.json"
TOLERANCES = defaults.image_subnet_settings()["tolerances"]

UPSCALE_JS = """async ({url, pngs, backend, threads}) => {
  const phases = [];
  const engine = await bim.createEngine({manifestUrl: url, backend, threads, onProgress: (p) => phases.push(p.phase)});
  const b64 = (bytes) => {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };
  try {
    const out = [];
    for (const png of pngs) {
      try {
        const r = await engine.upscale(png);
        out.push({height: r.height, width: r.width, pixels: b64(r.data)});
      } catch (err) {
        out.push({refused: err.message, code: err.code || null});
      }
    }
    return {out, taskType: engine.taskType, backend: engine.backend, threads: engine.threads, runtime: engine.runtime,
            phases: [...new Set(phases)]};
  } finally {
    await engine.close();
  }
}"""


def browser_upscale(page, pngs: list[str], *, backend: str = "wasm", threads: int = 1) -> dict:
    result = dict(page.evaluate(UPSCALE_JS, {"url": MANIFEST, "pngs": pngs, "backend": backend, "threads": threads}))
    for item in result["out"]:
        if "pixels" in item:
            item["image"] = np.frombuffer(base64.b64decode(item.pop("pixels")), dtype=np.uint8).reshape(item["height"], item["width"], 3)
    return result


@pytest.fixture(scope="module")
def native_upscaler() -> Upscaler:
    return Upscaler.from_preprocessing(waifu2x_model(), defaults.image_subnet_settings()["preprocessing"])


def test_browser_wasm_upscales_like_native_onnxruntime_and_refuses_what_is_not_an_rgb_png(page, live_registry, native_upscaler):
    # One small tile, and one 20 x 136 strip: two windows across, the second shifted back
    # (tile 128), so the seam is written as the native upscaler writes it.
    images = [sample_image("chelsea", height=24, width=24), sample_image("coffee", height=20, width=136, top=150, left=200)]
    rgba = png_encode(images[0])
    rgba = rgba[:25] + b"\x06" + rgba[26:]  # colour type 6 in the header: not 8-bit RGB
    too_big = png_encode(np.zeros((4, 193, 3), dtype=np.uint8))  # the subnet's max_side is 192
    pngs = [protocol.b64encode(png_encode(image)) for image in images]
    open_harness(page, live_registry.url)

    result = browser_upscale(page, [*pngs, protocol.b64encode(rgba), protocol.b64encode(too_big), "not base64!"], threads=2)

    assert (result["taskType"], result["backend"], result["threads"]) == ("image", "wasm", 2)
    assert result["runtime"] == "onnxruntime-web-1.30.0"
    assert result["phases"] == ["manifest", "chunks", "load", "ready"]
    for image, item in zip(images, result["out"][:2], strict=True):
        native = native_upscaler(image)
        assert item["image"].shape == native.shape == (2 * image.shape[0], 2 * image.shape[1], 3)
        verdict = verify_image_pair(item["image"], native, **TOLERANCES)
        assert verdict.passed, verdict.reason
    refusals = result["out"][2:]
    assert [r.get("code") for r in refusals] == ["bad_input"] * 3, refusals
    assert "8-bit RGB" in refusals[0]["refused"]
    assert "at most 192 px" in refusals[1]["refused"]
    assert "base64" in refusals[2]["refused"]


def test_auto_picks_webgpu_on_an_adapter_and_upscales_within_tau(webgpu_browser, live_registry, native_upscaler):
    """SwiftShader is slow: one 16 x 16 image (the engine warms up at a full tile first)."""
    image = sample_image("astronaut", height=16, width=16, top=100, left=200)
    context = webgpu_browser.new_context()
    context.set_default_timeout(360_000)
    try:
        page = open_harness(context.new_page(), live_registry.url)
        assert page.evaluate("async () => Boolean(navigator.gpu && await navigator.gpu.requestAdapter())"), "no WebGPU adapter"
        result = browser_upscale(page, [protocol.b64encode(png_encode(image))], backend="auto")
    finally:
        context.close()
    assert result["backend"] == "webgpu"
    (item,) = result["out"]
    assert "image" in item, item
    verdict = verify_image_pair(item["image"], native_upscaler(image), **TOLERANCES)
    assert verdict.passed, verdict.reason

"""The WebGPU path: Chromium with SwiftShader's software adapter (no GPU here; real speed needs
one). The engine picks WebGPU by itself when navigator.gpu gives an adapter, and its vectors
agree with native onnxruntime within tau. Kept to a few short texts: SwiftShader runs about one
sentence a second."""

from __future__ import annotations

import pytest

from tests.browser.conftest import browser_embed, open_harness, row_cosines

pytestmark = pytest.mark.timeout(420)

TEXTS = ["WebGPU in a browser tab.", "Le registre vérifie chaque résultat.", "東京は日本の首都です。"]


def test_auto_picks_webgpu_on_an_adapter_and_agrees_with_native(webgpu_browser, live_registry, native_embedder, tau):
    context = webgpu_browser.new_context()
    context.set_default_timeout(300_000)
    try:
        page = open_harness(context.new_page(), live_registry.url)
        adapter = page.evaluate("async () => Boolean(navigator.gpu && await navigator.gpu.requestAdapter())")
        assert adapter is True, "SwiftShader gave no WebGPU adapter"

        result = browser_embed(page, TEXTS, backend="auto")
    finally:
        context.close()
    assert result["backend"] == "webgpu"
    assert result["runtime"] == "onnxruntime-web-1.30.0"
    cosines = row_cosines(result["matrix"], native_embedder(TEXTS))
    assert cosines.min() >= tau, cosines


def test_auto_falls_back_to_wasm_without_an_adapter(page, live_registry):
    """--disable-gpu: no adapter, so "auto" runs WASM."""
    open_harness(page, live_registry.url)
    result = browser_embed(page, ["No GPU here."], backend="auto")
    assert result["backend"] == "wasm"

"""The browser engine (onnxruntime-web WASM in a Web Worker, real Chromium) against the Python
node's embedder on the same model and tokenizer files: the cosines the registry would compare."""

from __future__ import annotations

import numpy as np
import pytest

from tests.browser.conftest import browser_embed, open_harness, row_cosines
from tests.browser.corpus import corpus

pytestmark = pytest.mark.timeout(300)


def test_browser_wasm_embeddings_agree_with_native_onnxruntime_within_tau(page, live_registry, native_embedder, tau):
    texts = corpus(300)[::6]  # 50 texts: accents, emoji, CJK, RTL, code, truncated long inputs
    open_harness(page, live_registry.url)

    result = browser_embed(page, texts, backend="wasm", threads=2)

    assert result["env"]["crossOriginIsolated"] is True, page.bim_console
    assert (result["backend"], result["threads"]) == ("wasm", 2)
    assert result["runtime"] == "onnxruntime-web-1.30.0"
    assert result["modelChecksum"] == live_registry.manifest()["model_checksum"]
    assert result["phases"] == ["manifest", "chunks", "load", "ready"]
    native = native_embedder(texts)
    assert result["matrix"].shape == native.shape == (50, 384)
    cosines = row_cosines(result["matrix"], native)
    assert cosines.min() >= tau, sorted(zip(cosines, texts))[:3]
    # Unit vectors, like the node's (the registry checks norms too).
    norms = (result["matrix"].astype("float64") ** 2).sum(axis=1) ** 0.5
    assert abs(norms - 1).max() < 1e-5


def test_a_page_that_is_not_isolated_computes_on_one_thread(browser, live_registry, native_embedder, tau):
    """Served without COOP/COEP (a proxy or host that drops them), the page has no
    SharedArrayBuffer: the engine still computes, on one WASM thread, whatever was asked."""
    context = browser.new_context()
    context.set_default_timeout(120_000)

    def strip_isolation(route):
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if not k.lower().startswith("cross-origin-")}
        route.fulfill(response=response, headers=headers)

    context.route("**/static/engine-test.html", strip_isolation)
    try:
        page = open_harness(context.new_page(), live_registry.url)
        result = page.evaluate(
            """async (url) => {
              const engine = await bim.createEngine({manifestUrl: url, backend: "wasm", threads: 2});
              const empty = await engine.embed([]);
              const one = await engine.embed(["Short text."]);
              await engine.close();
              let refused = "";
              try { await engine.embed(["after close"]); } catch (err) { refused = err.message; }
              return {isolated: bim.environment().crossOriginIsolated, threads: engine.threads,
                      empty: [empty.rows, empty.dim, empty.data.length], one: Array.from(one.data), refused};
            }""",
            "/subnets/minilm-embed/manifest.json",
        )
    finally:
        context.close()
    assert (result["isolated"], result["threads"]) == (False, 1)
    assert result["empty"] == [0, 384, 0]
    assert result["refused"] == "engine closed"
    cosine = row_cosines(np.asarray([result["one"]], dtype=np.float32), native_embedder(["Short text."]))[0]
    assert cosine >= tau

"""Cross-origin isolation as daphne serves the real app: pages, static files (served by
bim_site.asgi's static handler, which runs before any middleware), manifests and chunks."""

from __future__ import annotations

import pytest
import requests

from tests.browser.conftest import MANIFEST_PATH

pytestmark = pytest.mark.timeout(120)

ISOLATED = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def get(live_registry, path: str) -> requests.Response:
    response = requests.get(live_registry.url + path, timeout=30)
    assert response.status_code == 200, (path, response.status_code)
    return response


@pytest.mark.parametrize(
    "path",
    [
        "/static/engine-test.html",
        "/static/js/engine.js",
        "/static/js/engine-worker.js",
        "/static/vendor/ort/ort-wasm-simd-threaded.wasm",
        "/static/vendor/ort/ort.wasm.min.mjs",
        MANIFEST_PATH,
    ],
)
def test_resources_the_engine_loads_are_isolated_and_same_origin_only(live_registry, path):
    headers = get(live_registry, path).headers
    assert {k: headers.get(k) for k in ISOLATED} == ISOLATED
    assert headers["Cross-Origin-Resource-Policy"] == "same-origin"


def test_chunks_pages_and_the_service_worker(live_registry):
    chunk = live_registry.manifest()["artifacts"][0]["chunks"][0]["url"]
    assert get(live_registry, chunk).headers["Cross-Origin-Resource-Policy"] == "same-origin"
    page = get(live_registry, "/login/").headers
    assert {k: page.get(k) for k in ISOLATED} == ISOLATED
    sw = get(live_registry, "/static/sw.js").headers
    assert sw["Service-Worker-Allowed"] == "/"
    assert sw["Content-Type"].startswith("text/javascript")
    assert get(live_registry, "/static/vendor/ort/ort-wasm-simd-threaded.wasm").headers["Content-Type"] == "application/wasm"
    # The Swagger UI loads its scripts from elsewhere: not isolated.
    docs = requests.get(live_registry.url + "/api/docs/", timeout=30).headers
    assert "Cross-Origin-Embedder-Policy" not in docs

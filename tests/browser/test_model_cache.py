"""Model delivery in the browser: chunks verified before IndexedDB stores them, a second visit
that puts no chunk request on the network, corrupted chunks refused, LRU eviction under a
byte budget. Chunk requests are counted by the proxy in front of the registry (server side),
so neither the page, its worker nor the Service Worker can hide one."""

from __future__ import annotations

import json

import pytest

from tests.browser.conftest import (
    MANIFEST_PATH,
    _manage,
    browser_embed,
    open_harness,
    row_cosines,
)

pytestmark = pytest.mark.timeout(300)

TEXTS = ["Café crème et croissant.", "東京は日本の首都です。"]


def chunk_paths(manifest: dict) -> list[str]:
    return list(dict.fromkeys(c["url"] for a in manifest["artifacts"] for c in a["chunks"]))


def store_status(page) -> dict:
    return page.evaluate("() => bim.store.cacheStatus()")


def test_first_visit_verifies_every_chunk_and_a_second_visit_requests_none(
    persistent_context, live_registry, tmp_path, native_embedder, tau
):
    manifest = live_registry.manifest()
    chunks = chunk_paths(manifest)
    profile = tmp_path / "profile"

    first = open_harness(persistent_context(profile).new_page(), live_registry.proxy_url)
    result = browser_embed(first, TEXTS)
    assert result["cache"] == {"fromCache": False, "chunkRequests": len(chunks), "bytes": sum(a["size"] for a in manifest["artifacts"])}
    assert live_registry.proxy.chunk_requests() == len(chunks)
    assert all(live_registry.requests[path] == 1 for path in chunks)
    status = store_status(first)
    assert [(m["key"], m["complete"]) for m in status["models"]] == [(manifest["model_checksum"], True)]
    assert status["chunks"] == len(chunks)
    first.context.close()

    live_registry.proxy.reset()
    second = open_harness(persistent_context(profile).new_page(), live_registry.proxy_url)
    again = browser_embed(second, TEXTS)
    assert again["cache"]["fromCache"] is True and again["cache"]["chunkRequests"] == 0
    assert live_registry.proxy.chunk_requests() == 0, live_registry.requests
    assert row_cosines(again["matrix"], native_embedder(TEXTS)).min() >= tau
    # The Service Worker answers chunk URLs from IndexedDB too: still nothing on the network.
    answered = second.evaluate(
        """async (url) => {
          const response = await fetch(url);
          return {controlled: Boolean(navigator.serviceWorker.controller), status: response.status,
                  source: response.headers.get("X-BIM-Chunk-Source"), size: (await response.arrayBuffer()).byteLength};
        }""",
        chunks[0],
    )
    assert answered == {"controlled": True, "status": 200, "source": "indexeddb", "size": manifest["artifacts"][0]["chunks"][0]["size"]}
    assert live_registry.proxy.chunk_requests() == 0


def test_a_corrupted_chunk_is_refused_and_fetched_again(page, live_registry, native_embedder, tau):
    manifest = live_registry.manifest()
    model = next(a for a in manifest["artifacts"] if a["role"] == "model")
    bad = model["chunks"][3]
    live_registry.corrupt[bad["url"]] = 1  # the next answer for this chunk has one byte flipped

    open_harness(page, live_registry.proxy_url)
    result = browser_embed(page, TEXTS)

    assert live_registry.proxy.served_corrupt[bad["url"]] == 1
    assert live_registry.requests[bad["url"]] == 2  # refused once, fetched again
    # Refused by the Service Worker (which then hands the engine good bytes) or, where the
    # engine's worker is not controlled, by the engine itself (one more request it counts).
    assert result["cache"]["chunkRequests"] in (len(chunk_paths(manifest)), len(chunk_paths(manifest)) + 1)
    assert row_cosines(result["matrix"], native_embedder(TEXTS)).min() >= tau
    stored = page.evaluate("async (sha) => { const b = await bim.store.chunkGetVerified(sha); return b && b.byteLength; }", bad["sha256"])
    assert stored == bad["size"]


def test_a_chunk_that_never_verifies_is_never_stored_and_the_model_never_runs(page, live_registry):
    manifest = live_registry.manifest()
    model = next(a for a in manifest["artifacts"] if a["role"] == "model")
    bad = model["chunks"][0]
    live_registry.corrupt[bad["url"]] = -1  # always wrong

    open_harness(page, live_registry.proxy_url)
    outcome = page.evaluate(
        """async (url) => {
          try { await bim.createEngine({manifestUrl: url, backend: "wasm", threads: 1}); return {created: true}; }
          catch (err) { return {created: false, message: err.message}; }
        }""",
        MANIFEST_PATH,
    )
    assert outcome["created"] is False
    assert bad["sha256"] in outcome["message"] and "did not match its sha256" in outcome["message"]
    # Bounded: 3 downloads by the engine, each one retried at most 3 times by the Service Worker.
    assert 3 <= live_registry.requests[bad["url"]] <= 9
    assert page.evaluate("(sha) => bim.store.chunkGetVerified(sha)", bad["sha256"]) is None
    models = store_status(page)["models"]
    assert all(not m["complete"] for m in models if m["key"] == manifest["model_checksum"])


BLOB_SUBNET_CODE = """
import json, os, sys
from pathlib import Path
from subnets import services
from subnets.models import Subnet
base = Subnet.objects.get(slug="minilm-embed")
for slug, size, seed in json.loads(os.environ["BIM_BLOBS"]):
    path = Path(os.environ["BIM_BLOB_DIR"]) / f"{slug}.onnx"
    path.write_bytes(__import__("random").Random(seed).randbytes(size))
    subnet = Subnet.objects.filter(slug=slug).first() or Subnet.objects.get(pk=base.pk)
    subnet.pk = subnet.pk if subnet.slug == slug else None
    subnet.slug = slug
    subnet.model_checksum = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    subnet.tokenizer_checksum = ""
    subnet.save()
    subnet.artifacts.all().delete()
    services.artifact_package(subnet=subnet, role="model", source=path, source_label="test:blob")
"""


def add_blob_subnets(live_registry, tmp_path, blobs: list[tuple[str, int, int]]) -> None:
    """Subnets whose 'model' is random bytes: enough for delivery and eviction tests."""
    env = {**live_registry.group.env, "BIM_BLOBS": json.dumps(blobs), "BIM_BLOB_DIR": str(tmp_path)}
    _manage(env, "shell", "-c", BLOB_SUBNET_CODE)


LOAD_JS = """async ({url, budget}) => {
  const loaded = await bim.store.modelLoad(url, {budgetBytes: budget});
  return {key: loaded.manifest.model_checksum, cache: loaded.cache};
}"""


def test_eviction_keeps_the_store_under_budget_dropping_the_least_recently_used_model(page, live_registry, tmp_path):
    mib = 1024 * 1024
    add_blob_subnets(live_registry, tmp_path, [("blob-b", 2 * mib + 5, 1), ("blob-c", 2 * mib + 7, 2), ("blob-huge", 40 * mib, 3)])
    minilm = live_registry.manifest()
    a_bytes = sum(a["size"] for a in minilm["artifacts"])
    budget = a_bytes + 3 * mib  # room for the MiniLM model and one 2 MiB blob, not two
    open_harness(page, live_registry.proxy_url)

    def load(slug: str) -> dict:
        return page.evaluate(LOAD_JS, {"url": f"/subnets/{slug}/manifest.json", "budget": budget})

    a = load("minilm-embed")
    b = load("blob-b")
    assert a["cache"]["evicted"] == [] and b["cache"]["evicted"] == []
    page.wait_for_timeout(5)
    a_again = load("minilm-embed")  # A is now the most recently used
    assert a_again["cache"]["chunkRequests"] == 0
    c = load("blob-c")
    assert c["cache"]["evicted"] == [b["key"]]  # B, the least recently used, not A

    status = store_status(page)
    assert [m["key"] for m in status["models"]] == [c["key"], a["key"]]
    assert status["bytes"] <= budget
    live_registry.proxy.reset()
    assert load("minilm-embed")["cache"]["chunkRequests"] == 0
    assert load("blob-b")["cache"]["chunkRequests"] == 3  # evicted: fetched again (and C goes)

    # A model larger than the whole budget is verified and handed over but not cached, and
    # evicts nothing.
    before = store_status(page)
    huge = load("blob-huge")
    assert huge["cache"]["persisted"] is False and huge["cache"]["evicted"] == []
    after = store_status(page)
    assert [m["key"] for m in after["models"]] == [m["key"] for m in before["models"]]
    assert after["bytes"] == before["bytes"] <= budget


def test_the_store_refuses_a_manifest_that_names_a_different_model(page, live_registry):
    open_harness(page, live_registry.proxy_url)
    message = page.evaluate(
        """async (url) => {
          try { await bim.store.modelLoad(url, {expectedChecksum: "00".repeat(32)}); return ""; }
          catch (err) { return err.message; }
        }""",
        MANIFEST_PATH,
    )
    assert "differs from the subnet's" in message
    assert live_registry.proxy.chunk_requests() == 0



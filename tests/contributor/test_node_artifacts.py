"""Model delivery against a real HTTP server serving a manifest and chunks of the real model."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from bim_core.runtimes.embedder import Embedder
from bim_node.artifacts import (
    ArtifactError,
    ChunkStore,
    ModelBundle,
    fetch_model,
    sri_for,
)
from bim_node.registry_api import RegistryApi

if TYPE_CHECKING:
    from tests.contributor.conftest import HttpRegistry


def _fetch(registry: HttpRegistry, cache: Path, *, checksum: str | None = None) -> ModelBundle:
    api = RegistryApi(registry.base_url, "tok", retries=1, backoff_s=0.01)
    expected = checksum or registry.manifest()["model_checksum"]
    return fetch_model(api, registry.manifest_url, cache, expected_checksum=expected)


def _cache_is_sound(cache: Path) -> bool:
    """Every cached file is named by the hash of its bytes (nothing wrong was ever kept)."""
    files = [p for p in (cache / "chunks").rglob("*") if p.is_file()]
    return bool(files) and all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in files)


def test_it_downloads_verifies_and_loads_the_model(
    http_registry: HttpRegistry, tmp_path: Path, model_path: Path, tokenizer_bytes: bytes
) -> None:
    bundle = _fetch(http_registry, tmp_path)

    assert bundle.files["model"] == model_path.read_bytes()
    assert bundle.files["tokenizer"] == tokenizer_bytes
    assert bundle.preprocessing["max_tokens"] == 256
    chunk_count = sum(len(a["chunks"]) for a in http_registry.manifest()["artifacts"])
    assert chunk_count == 23  # 22 for the 22.9 MB model, 1 for the tokenizer
    assert http_registry.chunk_requests() == chunk_count  # each chunk once
    assert set(http_registry.auth_headers) == {"Token tok"}
    assert _cache_is_sound(tmp_path)

    embedder = Embedder.from_preprocessing(
        bundle.files["model"], bundle.files["tokenizer"], bundle.preprocessing
    )
    np.testing.assert_allclose(np.linalg.norm(embedder(["a sentence"])), 1.0, atol=1e-6)


def test_a_second_run_with_the_same_cache_makes_no_chunk_requests(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    first = _fetch(http_registry, tmp_path)
    http_registry.requests.clear()

    second = _fetch(http_registry, tmp_path)

    assert http_registry.chunk_requests() == 0
    assert http_registry.requests[http_registry.manifest_url] == 1
    assert second.files == first.files


def test_it_refuses_a_chunk_with_wrong_bytes_and_fetches_it_again(
    http_registry: HttpRegistry, tmp_path: Path, model_path: Path
) -> None:
    bad = http_registry.model_chunk_urls()[3]
    http_registry.corrupt[bad] = 1

    bundle = _fetch(http_registry, tmp_path)

    assert http_registry.requests[bad] == 2
    assert bundle.files["model"] == model_path.read_bytes()
    assert _cache_is_sound(tmp_path)


def test_a_chunk_that_stays_wrong_raises_and_is_never_cached(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    bad = http_registry.model_chunk_urls()[5]
    http_registry.corrupt[bad] = -1

    with pytest.raises(ArtifactError, match="did not match its sha256 in 3 downloads"):
        _fetch(http_registry, tmp_path)

    assert http_registry.requests[bad] == 3
    assert not ChunkStore(tmp_path).path(bad.rsplit("/", 1)[1]).exists()
    assert _cache_is_sound(tmp_path)


def test_a_corrupted_cached_chunk_is_detected_and_fetched_again(
    http_registry: HttpRegistry, tmp_path: Path, model_path: Path
) -> None:
    _fetch(http_registry, tmp_path)
    victim = http_registry.model_chunk_urls()[2]
    cached = ChunkStore(tmp_path).path(victim.rsplit("/", 1)[1])
    data = bytearray(cached.read_bytes())
    data[100] ^= 0x01
    cached.write_bytes(bytes(data))
    http_registry.requests.clear()

    bundle = _fetch(http_registry, tmp_path)

    assert http_registry.chunk_requests() == 1
    assert http_registry.requests[victim] == 1
    assert bundle.files["model"] == model_path.read_bytes()
    assert _cache_is_sound(tmp_path)


def test_it_refuses_a_manifest_for_another_model_than_the_subnets(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match="differs from the subnet"):
        _fetch(http_registry, tmp_path, checksum="0" * 64)
    assert http_registry.chunk_requests() == 0


def test_it_refuses_a_model_artifact_that_is_not_the_model_checksum(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    # Consistent chunks and file hashes, but a manifest that claims another model.
    manifest = http_registry.manifest()
    manifest["model_checksum"] = manifest["artifacts"][1]["sha256"]
    http_registry.set_manifest(manifest)

    with pytest.raises(ArtifactError, match="model_checksum"):
        _fetch(http_registry, tmp_path)


def test_it_refuses_a_tokenizer_that_is_not_the_tokenizer_checksum(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    manifest = http_registry.manifest()
    manifest["tokenizer_checksum"] = "e" * 64
    http_registry.set_manifest(manifest)

    with pytest.raises(ArtifactError, match="tokenizer_checksum"):
        _fetch(http_registry, tmp_path)


def test_it_refuses_an_artifact_whose_whole_file_hash_differs(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    manifest = http_registry.manifest()
    manifest["artifacts"][1]["sha256"] = "f" * 64
    http_registry.set_manifest(manifest)

    with pytest.raises(ArtifactError, match=r"tokenizer\.json: reassembled file"):
        _fetch(http_registry, tmp_path)


def test_it_refuses_chunk_hashes_that_are_not_hex(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    # A chunk hash becomes a file name: a path in its place must never reach the disk.
    manifest = http_registry.manifest()
    manifest["artifacts"][0]["chunks"][0]["sha256"] = "../../../escape"
    http_registry.set_manifest(manifest)

    with pytest.raises(ArtifactError, match="not a lowercase hex SHA-256"):
        _fetch(http_registry, tmp_path / "cache")
    assert list(tmp_path.rglob("*escape*")) == []


def test_it_refuses_an_sri_that_names_other_bytes(
    http_registry: HttpRegistry, tmp_path: Path
) -> None:
    manifest = http_registry.manifest()
    manifest["artifacts"][1]["chunks"][0]["sri"] = sri_for("0" * 64)
    http_registry.set_manifest(manifest)

    with pytest.raises(ArtifactError, match="sri"):
        _fetch(http_registry, tmp_path)


def test_the_chunk_store_refuses_bytes_under_another_hash(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    with pytest.raises(ArtifactError):
        store.put("0" * 64, b"not those bytes")
    assert store.get("0" * 64) is None

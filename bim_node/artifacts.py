"""Model delivery: content-addressed chunks, verified before they are cached or used.

Nothing from the network is trusted: every chunk is checked against the SHA-256
the manifest names before it reaches the cache, again when it is read back
from the cache, and every reassembled artifact against its whole-file hash and
size. The model file must also hash to the subnet's `model_checksum`, which is
what job contracts pin, so a node can only ever run the model its jobs name.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bim_core import protocol

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(Exception):
    """The manifest or the bytes the registry served cannot be trusted."""


class Fetcher(Protocol):
    """What model delivery needs from the registry's HTTP API (see registry_api.RegistryApi)."""

    def get_json(self, url: str) -> Any: ...

    def get_bytes(self, url: str) -> bytes: ...


@dataclass(frozen=True)
class ModelBundle:
    """Verified artifacts of one subnet, ready to load."""

    subnet: str
    model_id: str
    model_checksum: str
    runtime_id: str
    files: dict[str, bytes]  # role -> verified bytes ("model", "tokenizer", ...)
    checksums: dict[str, str]  # role -> sha256 hex of those bytes
    preprocessing: dict[str, Any] = field(default_factory=dict)


class ChunkStore:
    """Chunks on disk under `root/chunks/<aa>/<sha256>`, named by the hash of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        _require_hex(sha256)
        return self.root / "chunks" / sha256[:2] / sha256

    def get(self, sha256: str) -> bytes | None:
        """The cached chunk, or None when absent or when its bytes no longer match."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if protocol.sha256_hex(data) != sha256:
            # Disk corruption or tampering: drop it so the caller fetches it again.
            log.warning("cached chunk %s is corrupt; removing it", sha256)
            path.unlink(missing_ok=True)
            return None
        return data

    def put(self, sha256: str, data: bytes) -> None:
        if protocol.sha256_hex(data) != sha256:
            raise ArtifactError(f"refusing to cache chunk {sha256}: its bytes hash differently")
        path = self.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same directory + rename: readers never see half a chunk.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def fetch_model(
    fetcher: Fetcher,
    manifest_url: str,
    cache_dir: Path,
    *,
    expected_checksum: str,
    max_attempts: int = 3,
) -> ModelBundle:
    """Download (or read from cache) and verify every artifact the manifest lists."""
    manifest = fetcher.get_json(manifest_url)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise ArtifactError(f"{manifest_url} is not a manifest")
    checksum = manifest.get("model_checksum")
    if checksum != expected_checksum:
        raise ArtifactError(
            f"manifest model_checksum {checksum!r} differs from the subnet's {expected_checksum!r}"
        )

    store = ChunkStore(cache_dir)
    files: dict[str, bytes] = {}
    for artifact in manifest["artifacts"]:
        role, data = _fetch_artifact(fetcher, store, artifact, max_attempts=max_attempts)
        files[role] = data
    if "model" not in files:
        raise ArtifactError("the manifest lists no artifact with role 'model'")
    checksums = {role: protocol.sha256_hex(data) for role, data in files.items()}
    if checksums["model"] != checksum:
        raise ArtifactError("the model artifact does not hash to the manifest's model_checksum")
    tokenizer_checksum = manifest.get("tokenizer_checksum")
    if tokenizer_checksum and checksums.get("tokenizer") != tokenizer_checksum:
        raise ArtifactError(
            "the tokenizer artifact does not hash to the manifest's tokenizer_checksum"
        )
    return ModelBundle(
        subnet=str(manifest.get("subnet", "")),
        model_id=str(manifest.get("model_id", "")),
        model_checksum=checksum,
        runtime_id=str(manifest.get("runtime_id", "")),
        files=files,
        checksums=checksums,
        preprocessing=dict(manifest.get("preprocessing") or {}),
    )


def _fetch_artifact(
    fetcher: Fetcher, store: ChunkStore, artifact: dict[str, Any], *, max_attempts: int
) -> tuple[str, bytes]:
    try:
        role, name = str(artifact["role"]), str(artifact["name"])
        size, sha256, chunks = int(artifact["size"]), str(artifact["sha256"]), artifact["chunks"]
        chunks_size = sum(int(chunk["size"]) for chunk in chunks)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"malformed artifact entry: {artifact!r:.200}") from exc
    _require_hex(sha256)
    if chunks_size != size:
        raise ArtifactError(f"{name}: chunk sizes add up to {chunks_size}, not {size}")

    parts = [
        _fetch_chunk(fetcher, store, chunk, name=name, max_attempts=max_attempts)
        for chunk in chunks
    ]
    data = b"".join(parts)
    if len(data) != size or protocol.sha256_hex(data) != sha256:
        raise ArtifactError(f"{name}: reassembled file does not match its size and sha256")
    log.info("verified %s (%s, %d bytes, %d chunks)", name, role, size, len(chunks))
    return role, data


def _fetch_chunk(
    fetcher: Fetcher, store: ChunkStore, chunk: dict[str, Any], *, name: str, max_attempts: int
) -> bytes:
    try:
        sha256, size, url = str(chunk["sha256"]), int(chunk["size"]), str(chunk["url"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{name}: malformed chunk entry: {chunk!r:.200}") from exc
    _require_hex(sha256)
    sri = chunk.get("sri")
    if sri is not None and sri != sri_for(sha256):
        # Browsers check the SRI string, this node the hex: both must name the same bytes.
        raise ArtifactError(f"{name}: chunk {sha256} has an sri that names other bytes")

    cached = store.get(sha256)
    if cached is not None and len(cached) == size:
        return cached
    for attempt in range(1, max_attempts + 1):
        data = fetcher.get_bytes(url)
        if len(data) == size and protocol.sha256_hex(data) == sha256:
            store.put(sha256, data)
            return data
        log.warning(
            "%s: chunk %s served wrong bytes (attempt %d of %d); refused",
            name,
            sha256,
            attempt,
            max_attempts,
        )
    raise ArtifactError(
        f"{name}: chunk {sha256} from {url} did not match its sha256 in {max_attempts} downloads"
    )


def sri_for(sha256: str) -> str:
    """The Subresource Integrity string (`sha256-<base64>`) for a hex SHA-256."""
    return "sha256-" + base64.b64encode(bytes.fromhex(sha256)).decode("ascii")


def _require_hex(sha256: str) -> None:
    # Hashes become file names, so anything but 64 lowercase hex digits is refused.
    if not _HEX64.fullmatch(sha256):
        raise ArtifactError(f"{sha256!r} is not a lowercase hex SHA-256")

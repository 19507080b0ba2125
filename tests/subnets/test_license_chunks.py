"""Chunks of a model whose license forbids redistribution (subnets.licensing): served only
to a user who accepted that subnet's license at its current version (a node's token, a
contributor's session), privately; a freely redistributable model's chunks stay public and
immutable for any cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from subnets.models import Artifact, EulaAcceptance, License, Subnet
from subnets.services import artifact_package, eula_accept, eula_withdraw
from tests.factories import LicenseFactory, SubnetFactory, UserFactory

pytestmark = pytest.mark.django_db

PUBLIC = "public, max-age=31536000, immutable"
PRIVATE = "private, max-age=31536000, immutable"


@pytest.fixture(autouse=True)
def artifact_root(settings, tmp_path) -> Path:
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    return settings.ARTIFACT_ROOT


@pytest.fixture
def closed() -> License:
    return LicenseFactory(slug="weights-eula", version="3", name="Weights EULA", allows_redistribution=False)


def with_model(subnet: Subnet, data: bytes, tmp_path: Path) -> str:
    """Package `data` as the subnet's model, in one chunk; returns the chunk's address."""
    source = tmp_path / f"{subnet.slug}.onnx"
    source.write_bytes(data)
    artifact_package(subnet=subnet, role=Artifact.Role.MODEL, source=source, source_label="test:model", chunk_size=1 << 20)
    return hashlib.sha256(data).hexdigest()


def url(digest: str) -> str:
    return f"/artifacts/chunks/{digest}"


def token_client(user) -> Client:
    token, _ = Token.objects.get_or_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


@pytest.fixture
def restricted(closed, tmp_path) -> tuple[Subnet, str]:
    subnet = SubnetFactory(slug="closed-model", license=closed, price_per_call_micro=0, price_per_item_micro=0)
    return subnet, with_model(subnet, b"closed weights" * 100, tmp_path)


def test_a_redistributable_models_chunk_is_public_and_immutable(tmp_path):
    subnet = SubnetFactory()
    digest = with_model(subnet, b"open weights" * 100, tmp_path)

    response = Client().get(url(digest))

    assert response.status_code == 200 and response.content == b"open weights" * 100
    assert response["Cache-Control"] == PUBLIC


def test_an_unauthenticated_fetch_of_a_restricted_chunk_is_401(restricted):
    _, digest = restricted

    response = Client().get(url(digest))

    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "authentication_required" and "forbids redistribution" in body["detail"]
    assert response["Cache-Control"] == "no-store"
    assert b"closed weights" not in response.content
    # A conditional request learns nothing more.
    assert Client().get(url(digest), HTTP_IF_NONE_MATCH=f'"{digest}"').status_code == 401


def test_a_bad_token_is_no_user(restricted):
    _, digest = restricted
    response = Client(HTTP_AUTHORIZATION="Token not-a-token").get(url(digest))
    assert response.status_code == 401 and response.json()["code"] == "authentication_required"


def test_a_node_owner_without_an_acceptance_is_refused_403(restricted):
    _, digest = restricted

    response = token_client(UserFactory()).get(url(digest))

    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "license_not_accepted"
    assert "closed-model" in body["detail"] and "weights-eula 3" in body["detail"]


def test_a_node_owner_who_accepted_gets_it_privately_with_its_token(restricted):
    subnet, digest = restricted
    owner = UserFactory()
    eula_accept(user=owner, subnet=subnet, license_version="3", ip=None)

    response = token_client(owner).get(url(digest))

    assert response.status_code == 200 and response.content == b"closed weights" * 100
    assert response["Cache-Control"] == PRIVATE
    assert "Authorization" in response["Vary"] and "Cookie" in response["Vary"]
    assert response["ETag"] == f'"{digest}"'
    revalidated = token_client(owner).get(url(digest), HTTP_IF_NONE_MATCH=f'"{digest}"')
    assert revalidated.status_code == 304 and revalidated["Cache-Control"] == PRIVATE


def test_a_contributor_who_accepted_gets_it_with_the_session(restricted):
    # What the browser's Service Worker sends: a same-origin fetch with the session cookie.
    subnet, digest = restricted
    contributor = UserFactory()
    eula_accept(user=contributor, subnet=subnet, license_version="3", ip=None)
    browser = Client()
    browser.force_login(contributor)

    response = browser.get(url(digest))

    assert response.status_code == 200 and response["Cache-Control"] == PRIVATE


def test_an_acceptance_of_another_subnet_under_the_same_license_does_not_count(restricted, closed, tmp_path):
    _, digest = restricted
    other = SubnetFactory(license=closed, price_per_call_micro=0, price_per_item_micro=0)
    user = UserFactory()
    eula_accept(user=user, subnet=other, license_version="3", ip=None)
    assert token_client(user).get(url(digest)).status_code == 403


def test_a_withdrawn_acceptance_or_one_of_an_older_version_does_not_count(restricted):
    subnet, digest = restricted
    user = UserFactory()
    eula_accept(user=user, subnet=subnet, license_version="3", ip=None)
    eula_withdraw(user=user, subnet=subnet)
    assert token_client(user).get(url(digest)).status_code == 403

    older = LicenseFactory(slug="weights-eula", version="2", allows_redistribution=False)
    EulaAcceptance.objects.create(user=user, subnet=subnet, license=older, license_version="2")
    assert token_client(user).get(url(digest)).status_code == 403


def test_a_new_license_version_needs_a_new_acceptance(restricted):
    subnet, digest = restricted
    user = UserFactory()
    eula_accept(user=user, subnet=subnet, license_version="3", ip=None)
    assert token_client(user).get(url(digest)).status_code == 200

    newer = LicenseFactory(slug="weights-eula", version="4", allows_redistribution=False)
    Subnet.objects.filter(pk=subnet.pk).update(license=newer)
    assert token_client(user).get(url(digest)).status_code == 403

    subnet.refresh_from_db()
    eula_accept(user=user, subnet=subnet, license_version="4", ip=None)
    assert token_client(user).get(url(digest)).status_code == 200


def test_a_chunk_a_redistributable_model_shares_stays_public(restricted, tmp_path):
    # The bytes are redistributable through the open model: hiding them gains nothing.
    _, digest = restricted
    shared = SubnetFactory(slug="open-model")
    assert with_model(shared, b"closed weights" * 100, tmp_path) == digest

    response = Client().get(url(digest))

    assert response.status_code == 200 and response["Cache-Control"] == PUBLIC


def test_a_chunk_no_artifact_names_is_not_served(tmp_path):
    subnet = SubnetFactory()
    digest = with_model(subnet, b"an old build" * 100, tmp_path)
    Artifact.objects.filter(subnet=subnet).delete()  # re-packaged: the chunk stays on disk

    response = Client().get(url(digest))

    assert response.status_code == 404 and response.json()["code"] == "chunk_unknown"


def test_the_manifest_says_whether_the_model_may_be_redistributed(restricted):
    subnet, _ = restricted
    manifest = Client().get(f"/subnets/{subnet.slug}/manifest.json").json()
    assert manifest["license"] == {"slug": "weights-eula", "version": "3", "allows_redistribution": False}


def test_the_subnet_list_says_what_the_license_allows(restricted):
    listed = token_client(UserFactory()).get("/api/v1/subnets/").json()
    row = next(s for s in listed if s["slug"] == "closed-model")
    assert row["license"]["allows_redistribution"] is False and row["license"]["allows_paid_hosting"] is True

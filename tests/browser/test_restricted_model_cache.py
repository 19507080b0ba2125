"""A model whose license forbids redistribution, in the browser: its chunks reach only a
signed-in contributor who accepted the subnet's license (the page's worker and the Service
Worker fetch same-origin with the session cookie), are verified and kept in the IndexedDB
store like any chunk, and a second visit requests none. A visitor without a session gets
no model. (subnets.licensing; the server-side refusals are tested in tests/subnets.)"""

from __future__ import annotations

import uuid

import pytest

from tests.browser.conftest import _manage, browser_embed, open_harness

pytestmark = pytest.mark.timeout(300)

TEXTS = ["Café crème et croissant.", "東京は日本の首都です。"]
PASSWORD = "a long test password 7"

RESTRICT = """
from django.contrib.auth import get_user_model
from subnets.models import License, Subnet
from subnets.services import eula_accept
print(Subnet.objects.get(slug="minilm-embed").license_id)
closed, _ = License.objects.get_or_create(slug="minilm-closed", version="1", defaults=dict(
    name="MiniLM, no redistribution", allows_redistribution=False))
Subnet.objects.filter(slug="minilm-embed").update(license=closed)
user = get_user_model().objects.create_user(username="{username}", password="{password}")
eula_accept(user=user, subnet=Subnet.objects.get(slug="minilm-embed"), license_version="1", ip=None)
"""
RESTORE = """
from subnets.models import License, Subnet
Subnet.objects.filter(slug="minilm-embed").update(license=License.objects.get(pk={license_id}))
"""


def chunk_paths(manifest: dict) -> list[str]:
    return list(dict.fromkeys(c["url"] for a in manifest["artifacts"] for c in a["chunks"]))


def log_in(page, url: str, username: str) -> None:
    page.goto(f"{url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/contribute/")


def test_only_a_contributor_who_accepted_gets_the_chunks_and_keeps_them_verified(
    persistent_context, browser, live_registry, tmp_path
):
    env = live_registry.group.env
    username = f"reader-{uuid.uuid4().hex[:8]}"
    # The shell may print its automatic imports first: the open license's id is the last line.
    printed = _manage(env, "shell", "-c", RESTRICT.format(username=username, password=PASSWORD))
    open_license = int(printed.strip().splitlines()[-1])
    try:
        manifest = live_registry.manifest()
        assert manifest["license"]["allows_redistribution"] is False
        chunks = chunk_paths(manifest)

        # No session: every chunk download is refused, so no model loads.
        stranger = open_harness(browser.new_context().new_page(), live_registry.proxy_url)
        with pytest.raises(Exception, match="did not match its sha256|HTTP"):
            browser_embed(stranger, TEXTS)
        stranger.context.close()

        live_registry.proxy.reset()
        profile = tmp_path / "profile"
        first = persistent_context(profile).new_page()
        log_in(first, live_registry.proxy_url, username)
        open_harness(first, live_registry.proxy_url)
        result = browser_embed(first, TEXTS)
        assert result["cache"]["fromCache"] is False and result["cache"]["chunkRequests"] == len(chunks)
        assert live_registry.proxy.chunk_requests() == len(chunks)
        assert result["matrix"].shape == (len(TEXTS), result["dim"])
        first.context.close()

        live_registry.proxy.reset()
        second = open_harness(persistent_context(profile).new_page(), live_registry.proxy_url)
        again = browser_embed(second, TEXTS)
        assert again["cache"]["fromCache"] is True and again["cache"]["chunkRequests"] == 0
        assert live_registry.proxy.chunk_requests() == 0, live_registry.requests
    finally:
        _manage(env, "shell", "-c", RESTORE.format(license_id=open_license))

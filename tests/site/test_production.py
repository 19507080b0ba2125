"""Production mode (BIM_PRODUCTION=1): the settings refuse to start without a secret key and
allowed hosts, `manage.py check --deploy` is clean, /metrics is not public, pages carry a
Content-Security-Policy and the API docs load their assets from the registry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.contrib.staticfiles import finders
from rest_framework.test import APIClient

from bim_site.processes import ROOT
from tests.factories import UserFactory

PRODUCTION_ENV = {
    "BIM_PRODUCTION": "1",
    "SECRET_KEY": "x7" * 20 + "production-only-secret-key-of-enough-entropy",
    "ALLOWED_HOSTS": "registry.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://registry.example.org",
    "BIM_TRUSTED_PROXIES": "127.0.0.1",
}


def run_django(code_or_args: list[str], env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS", "DEBUG", "BIM_PRODUCTION"}}
    base.update({"BIM_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "bim_site.settings", **env})
    return subprocess.run(
        [sys.executable, *code_or_args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


SETUP = ["-c", "import django; django.setup(); print('started')"]


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without_its_settings(tmp_path, missing):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
    result = run_django(SETUP, env, tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and missing in result.stderr


def test_production_refuses_debug_and_the_development_key(tmp_path):
    debug = run_django(SETUP, {**PRODUCTION_ENV, "DEBUG": "1"}, tmp_path)
    assert debug.returncode != 0 and "DEBUG" in debug.stderr
    weak = run_django(SETUP, {**PRODUCTION_ENV, "SECRET_KEY": "short"}, tmp_path)
    assert weak.returncode != 0 and "SECRET_KEY" in weak.stderr


def test_the_embedded_default_still_starts_without_them(tmp_path):
    result = run_django(SETUP, {"DATABASE_URL": "", "REDIS_URL": ""}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


def test_check_deploy_is_clean_in_production(tmp_path):
    result = run_django(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], PRODUCTION_ENV, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


# ------------------------------------------------------------------ /metrics


@pytest.fixture
def private_metrics(settings):
    settings.BIM_METRICS_PUBLIC = False
    settings.BIM_METRICS_TOKEN = "scrape-token-1234567890"


@pytest.mark.django_db
def test_metrics_are_not_public_in_production(client, private_metrics):
    anonymous = client.get("/metrics")
    assert anonymous.status_code in (401, 403)
    assert b"django_http_requests" not in anonymous.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code in (401, 403)
    client.force_login(UserFactory())
    assert client.get("/metrics").status_code == 403


@pytest.mark.django_db
def test_metrics_answer_a_bearer_token_or_a_staff_session(client, private_metrics):
    scraped = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-1234567890")
    assert scraped.status_code == 200
    assert b"django_http_requests" in scraped.content
    client.force_login(UserFactory(is_staff=True))
    assert client.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_without_a_token_only_staff_read_metrics(client, settings):
    settings.BIM_METRICS_PUBLIC = False
    settings.BIM_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code in (401, 403)


# ------------------------------------------------------------------ CSP and API docs


@pytest.mark.django_db
def test_pages_send_a_content_security_policy_fit_for_the_contributor(client, settings):
    settings.CSP_REPORT_ONLY = False  # production's default
    page = client.get("/login/")
    assert "Content-Security-Policy-Report-Only" not in page
    policy = page["Content-Security-Policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives["default-src"] == ["'self'"]
    assert "'wasm-unsafe-eval'" in directives["script-src"] and "'self'" in directives["script-src"]
    assert "'unsafe-inline'" not in directives["script-src"]
    assert {"'self'", "blob:"} <= set(directives["worker-src"])
    assert directives["object-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]


@pytest.mark.django_db
def test_the_policy_can_be_tried_out_report_only(client, settings):
    settings.CSP_REPORT_ONLY = True
    page = client.get("/login/")
    assert "Content-Security-Policy" not in page
    assert page["Content-Security-Policy-Report-Only"] == settings.CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("production", [True, False])
def test_the_policy_is_enforced_and_metrics_closed_by_default(tmp_path, production):
    code = (
        "import django; django.setup(); from django.conf import settings;"
        " print(settings.CSP_REPORT_ONLY, settings.BIM_METRICS_PUBLIC)"
    )
    env = PRODUCTION_ENV if production else {}
    result = run_django(["-c", code], env, tmp_path)
    assert result.stdout.strip() == "False False", result.stderr


@pytest.mark.django_db
def test_the_api_docs_load_their_assets_from_the_registry(client):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "<script>" not in html.replace(" ", "")  # no inline script: the CSP allows none
    assert "Content-Security-Policy" in page or "Content-Security-Policy-Report-Only" in page
    script = APIClient().get("/api/docs/", {"script": ""})
    assert script.status_code == 200
    # bim_site.asgi's static handler serves what the finders find (the test client skips it).
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")

"""deploy/nginx.conf: it agrees with the code (the websocket paths, the body limit, the
headers the registry reads, timeouts), `nginx -t` accepts it with a throwaway certificate,
and, run for real in front of the Procfile's daphne in production mode with
deploy/env.example's settings (BIM_TRUSTED_PROXIES naming nginx): HTTP is redirected, HTTPS
through nginx is HTTPS to Django, a node that connects over wss:// through it is recorded
with its own address while one that reaches daphne directly cannot forge one with
X-Forwarded-For, and static files carry the types and headers daphne would send.

nginx is Debian's (`scripts/test.sh` installs it as it installs PostgreSQL and Redis): a
missing nginx fails these tests rather than skipping them."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from rest_framework.authtoken.models import Token
from websockets.asyncio.client import connect

from bim_core import protocol
from bim_site.middleware import isolation_headers
from bim_site.processes import ROOT, ProcessGroup, child_env, free_port
from registry.models import Node
from registry.routing import websocket_urlpatterns
from tests.factories import NodeKeys, SubnetFactory, online_node
from tests.site.test_procfile import argv_here, example_env, processes

SAMPLE = ROOT / "deploy" / "nginx.conf"
pytestmark = pytest.mark.timeout(120)


def nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail("nginx is missing: scripts/test.sh installs Debian's nginx (as root with apt-get)")
    return found


def directives(name: str, text: str | None = None) -> list[str]:
    text = SAMPLE.read_text() if text is None else text
    return [m.strip() for m in re.findall(rf"^\s*{name}\s+([^;]*);", text, flags=re.M)]


def location_block(prefix: str) -> str:
    text = SAMPLE.read_text()
    start = text.index(f"location {prefix} {{")
    return text[start : text.index("}", start)]


# ------------------------------------------------------------------ what the code expects


def test_every_websocket_path_is_upgraded_with_long_timeouts():
    block = location_block("/ws/")
    for pattern in websocket_urlpatterns:
        assert f"/{pattern.pattern}".startswith("/ws/"), pattern.pattern
    seconds = {"s": 1, "m": 60, "h": 3600}
    timeout = directives("proxy_read_timeout", block)[0]
    assert int(timeout[:-1]) * seconds[timeout[-1]] > 10 * settings.NODE_STALE_S
    # Set once at server level, so every location (the websocket's too) inherits them.
    assert directives("proxy_set_header") == [
        "Host $host",
        "X-Forwarded-For $proxy_add_x_forwarded_for",
        "X-Forwarded-Proto $scheme",
        "Upgrade $http_upgrade",
        "Connection $connection_upgrade",
        'X-Real-IP ""',
        'X-Forwarded-Host ""',
        'Forwarded ""',
    ]
    assert "proxy_set_header" not in block and "proxy_set_header" not in location_block("/artifacts/chunks/")


def test_the_body_limit_lets_djangos_own_refusal_answer():
    (limit,) = directives("client_max_body_size")
    assert limit.endswith("m")
    assert int(limit[:-1]) * 1024 * 1024 > settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def test_plain_http_is_redirected_and_tls_terminated():
    assert "301 https://$host$request_uri" in directives("return")
    assert "443 ssl http2" in directives("listen")
    assert directives("ssl_protocols") == ["TLSv1.2 TLSv1.3"]
    (timeout,) = [t for t in directives("proxy_read_timeout") if t.endswith("s") and int(t[:-1]) < 3600]
    assert int(timeout[:-1]) > settings.BIM_OPENAI_WAIT_S


def test_static_files_carry_the_isolation_headers():
    for block in (location_block("/static/"), location_block("= /static/sw.js")):
        for header in ("Cross-Origin-Opener-Policy", "Cross-Origin-Embedder-Policy", "Cross-Origin-Resource-Policy"):
            assert f"add_header {header} " in block
    assert "add_header Service-Worker-Allowed / always" in location_block("= /static/sw.js")


# ------------------------------------------------------------------ nginx itself


def throwaway_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry.example.org")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def local_config(folder: Path, *, http_port: int = 80, https_port: int = 443, upstream: int = 8000) -> Path:
    """The sample with this test's certificate, folders and ports; its directives otherwise as they are."""
    cert, key = throwaway_certificate(folder)
    text = SAMPLE.read_text()
    replacements = {
        "/etc/ssl/bim/fullchain.pem": str(cert),
        "/etc/ssl/bim/privkey.pem": str(key),
        "/var/cache/nginx/bim-chunks": str(folder / "cache"),
        "/var/log/nginx/": f"{folder}/",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream};",
        "/srv/bim/var/staticfiles/": f"{folder}/static/",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    text = re.sub(r"^\s*listen \[::\]:\d+.*$", "", text, flags=re.M)  # loopback IPv4 only here
    # Temporary files in the test's folder, not Debian's /var/lib/nginx (root's).
    temp = "".join(
        f"    {kind}_temp_path {folder}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


def nginx_argv(config: Path, folder: Path, *extra: str, directives: str = "") -> list[str]:
    """nginx on the test's config and folder (-g takes one string: every extra directive in it);
    as root, its workers run as root too, since the test's folders are private to root."""
    globals_ = f"pid {folder}/nginx.pid; {directives}" + (" user root;" if os.geteuid() == 0 else "")
    return [nginx(), "-c", str(config), "-p", str(folder), "-e", "stderr", "-g", globals_, *extra]


def test_nginx_accepts_the_sample(tmp_path):
    result = subprocess.run(
        nginx_argv(local_config(tmp_path), tmp_path, "-t"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# ------------------------------------------------------------------ for real, in front of daphne


async def hello(url: str, keys: NodeKeys, token: str, *, source: str, headers: dict[str, str] | None = None) -> str:
    """A node's handshake from the loopback address `source`; returns the welcome's type."""
    tls = None
    if url.startswith("wss:"):
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # the throwaway certificate
    async with connect(
        f"{url}/ws/node/?token={token}", ssl=tls, local_addr=(source, 0), additional_headers=headers, open_timeout=20
    ) as ws:
        challenge = json.loads(await asyncio.wait_for(ws.recv(), 10))
        session_pub = protocol.public_key_b64(keys.session)
        signed = protocol.hello_message(
            node_id=str(keys.node.pk), nonce=challenge["nonce"], session_key_pub=session_pub
        )
        message = {"type": "hello", "node_id": str(keys.node.pk), "session_key_pub": session_pub}
        await ws.send(json.dumps({**message, "signature": protocol.sign(keys.long_term, signed)}))
        return json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]


# Collected static files by the type the contributor's page needs them served with.
STATIC = {
    "/static/js/engine.mjs": "text/javascript",
    "/static/sw.js": "application/javascript",
    "/static/ort.wasm": "application/wasm",
}


def wait_answering(url: str, group: ProcessGroup, timeout: float = 60) -> None:
    """Until daphne answers at all (in production mode, plain HTTP answers 301)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, allow_redirects=False, timeout=2)
            return
        except requests.RequestException:
            group.check_alive()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def token(keys: NodeKeys) -> str:
    return Token.objects.get_or_create(user=keys.node.owner)[0].key


@pytest.mark.django_db(transaction=True)
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_node_through_nginx_keeps_its_address_and_a_direct_one_cannot_forge_one(tmp_path):
    subnet = SubnetFactory()
    through_proxy, direct = online_node(subnet, ready=False), online_node(subnet, ready=False)
    daphne_port, http_port, https_port = free_port(), free_port(), free_port()
    db = connection.settings_dict
    # deploy/env.example as it is (production mode, BIM_TRUSTED_PROXIES=127.0.0.1, nginx serving
    # /static/), but for this test's secrets, host, database, Redis and folders.
    env = child_env(
        **{
            **example_env(),
            "PORT": str(daphne_port),
            "SECRET_KEY": "x7" * 20 + "production-only-secret-key-of-enough-entropy",
            "ALLOWED_HOSTS": "127.0.0.1",
            "BIM_VAR_DIR": str(tmp_path / "var"),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
            "REDIS_URL": settings.REDIS_URL,
            "BIM_CHANNEL_PREFIX": f"nginx{daphne_port}",
            "BIM_INDEX_KEY_PREFIX": f"nginx{daphne_port}:index",
            "BIM_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
            "BIM_REGISTRY_KEY_PATH": str(settings.REGISTRY_KEY_PATH),
        }
    )
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    config = local_config(tmp_path, http_port=http_port, https_port=https_port, upstream=daphne_port)
    for path in STATIC:  # what `manage.py collectstatic` would have put there
        collected = tmp_path / "static" / path.removeprefix("/static/")
        collected.parent.mkdir(parents=True, exist_ok=True)
        collected.write_bytes(b"collected")
    try:
        group.start("web", argv_here(processes({"PORT": str(daphne_port)})["web"]))
        group.start("nginx", nginx_argv(config, tmp_path, directives="daemon off;"))
        wait_answering(f"http://127.0.0.1:{daphne_port}/api/v1/registry/", group)
        redirect = requests.get(f"http://127.0.0.1:{http_port}/api/v1/registry/", allow_redirects=False, timeout=10)
        assert redirect.status_code == 301 and redirect.headers["Location"].startswith("https://")
        # Production redirects plain HTTP: through nginx the request is HTTPS (its
        # X-Forwarded-Proto, believed from a trusted proxy), so it is answered, with HSTS.
        info = requests.get(f"https://127.0.0.1:{https_port}/api/v1/registry/", verify=False, timeout=10)
        assert info.status_code == 200 and "receipt_key" in info.json()
        assert "max-age=" in info.headers["Strict-Transport-Security"]
        # The same claims made straight to daphne, from an address that is not the proxy's, are
        # not believed: plain HTTP, redirected.
        direct_http = http.client.HTTPConnection("127.0.0.1", daphne_port, timeout=10, source_address=("127.4.0.1", 0))
        direct_http.request("GET", "/api/v1/registry/", headers={"X-Forwarded-Proto": "https", "Host": "127.0.0.1"})
        assert direct_http.getresponse().status == 301
        direct_http.close()

        proxied = hello(f"wss://127.0.0.1:{https_port}", through_proxy, token(through_proxy), source="127.3.0.1")
        assert asyncio.run(proxied) == "welcome"
        forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        straight = hello(f"ws://127.0.0.1:{daphne_port}", direct, token(direct), source="127.4.0.1", headers=forged)
        assert asyncio.run(straight) == "welcome"
        static = {
            path: requests.get(f"https://127.0.0.1:{https_port}{path}", verify=False, timeout=10) for path in STATIC
        }
    finally:
        group.stop()
    # nginx serves collected static files as daphne's handler would (bim_site/middleware.py).
    for path, content_type in STATIC.items():
        assert static[path].status_code == 200 and static[path].headers["Content-Type"].startswith(content_type)
        expected = isolation_headers(path, HttpResponse())
        assert {k: static[path].headers.get(k) for k in expected.headers if k != "Content-Type"} == {
            k: v for k, v in expected.headers.items() if k != "Content-Type"
        }
    nodes = {node.pk: (node.ip, node.ip_block) for node in Node.objects.all()}
    assert nodes[through_proxy.node.pk] == ("127.3.0.1", "127.3.0.0/24")
    assert nodes[direct.node.pk] == ("127.4.0.1", "127.4.0.0/24")

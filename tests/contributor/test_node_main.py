"""The command line's preparation: key, license, registration, verified model."""

from __future__ import annotations

import json
import logging
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from bim_core import protocol
from bim_core.runtimes.embedder import Embedder
from bim_node.__main__ import main, parse_args, prepare_node
from bim_node.keys import load_or_create_key

if TYPE_CHECKING:
    from tests.contributor.conftest import HttpRegistry

NODE_ID = str(uuid.UUID(int=42))
ACCEPT_URL = "/api/v1/subnets/minilm-embed/accept-license/"


def _argv(registry: HttpRegistry, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--registry",
        registry.base_url,
        "--token",
        "tok",
        "--subnet",
        "minilm-embed",
        "--name",
        "alice-1",
        "--key-file",
        str(tmp_path / "node.key"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--os",
        "linux",
        *extra,
    ]


@pytest.fixture
def registry(http_registry: HttpRegistry) -> HttpRegistry:
    http_registry.posts[ACCEPT_URL] = (201, {"license_version": "2.0"})
    http_registry.posts["/api/v1/nodes/"] = (201, {"id": NODE_ID, "name": "alice-1"})
    return http_registry


def test_it_accepts_the_license_registers_and_loads_the_verified_model(
    registry: HttpRegistry, tmp_path: Path, embedder: Embedder
) -> None:
    client = prepare_node(parse_args(_argv(registry, tmp_path, "--accept-license")))

    key = load_or_create_key(tmp_path / "node.key")
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
    (accept_path, accept_body), (node_path, node_body) = registry.posted
    assert (accept_path, accept_body) == (ACCEPT_URL, {"license_version": "2.0"})
    assert node_path == "/api/v1/nodes/"
    assert node_body["public_key"] == protocol.public_key_b64(key)
    assert node_body["name"] == "alice-1"
    assert node_body["subnets"] == ["minilm-embed"]
    env = node_body["env"]
    assert env["os"] == "linux"
    assert env["backend"] == "cpu"
    assert env["gpu_family"] == "none"
    assert env["runtime"].startswith("onnxruntime-")
    assert env["cpu_count"] >= 1

    assert client.node_id == NODE_ID
    assert client.env == env
    assert client.model.checksum == registry.manifest()["model_checksum"]
    tokenizer = registry.manifest()["artifacts"][1]
    assert (tokenizer["role"], client.model.tokenizer_checksum) == ("tokenizer", tokenizer["sha256"])
    assert client.ws_url == registry.base_url.replace("http", "ws") + "/ws/node/?token=tok"
    texts = ["a verified model", "computes the same vectors"]
    assert np.array_equal(client.model.compute({"texts": texts}), embedder(texts))


def test_a_restart_reuses_the_key_and_the_cache(registry: HttpRegistry, tmp_path: Path) -> None:
    prepare_node(parse_args(_argv(registry, tmp_path)))
    registry.requests.clear()

    prepare_node(parse_args(_argv(registry, tmp_path)))

    assert registry.chunk_requests() == 0
    first, second = (body for path, body in registry.posted if path == "/api/v1/nodes/")
    assert first["public_key"] == second["public_key"]
    assert ACCEPT_URL not in registry.requests  # no --accept-license, no acceptance


def test_it_exits_1_naming_the_subnets_there_are(
    registry: HttpRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = _argv(registry, tmp_path)
    argv[argv.index("minilm-embed")] = "nope"
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 1
    assert "no subnet 'nope' (it has: minilm-embed)" in caplog.text


def test_it_refuses_a_subnet_of_a_task_it_has_no_runner_for(
    registry: HttpRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    subnets = json.loads(registry.routes["/api/v1/subnets/"])
    subnets[0]["task_type"] = "audio"
    registry.routes["/api/v1/subnets/"] = json.dumps(subnets).encode()

    with caplog.at_level(logging.ERROR):
        assert main(_argv(registry, tmp_path)) == 1
    assert "this node cannot run 'audio' jobs" in caplog.text
    assert registry.posted == []


def test_it_exits_1_with_the_registrys_reason(
    registry: HttpRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry.posts["/api/v1/nodes/"] = (403, {"detail": "accept the license first"})
    with caplog.at_level(logging.ERROR):
        assert main(_argv(registry, tmp_path)) == 1
    assert "HTTP 403: accept the license first" in caplog.text
    assert registry.chunk_requests() == 0

"""Issue 14's must-show: an operator creates a MiniLM embeddings subnet from its package in
admin and, without any command line, nodes pass its benchmark and a job settles.

Everything past the admin form is the product's own path: the form queues the subnet's
preparation (packaging, benchmark reference, honeypot pool: Celery, eager here as in the
embedded mode) and activation; each contributor accepts the license and registers a node
through the API, fetches and verifies the model from the manifest and chunk URLs with the
headless node's own `bim_node.artifacts.fetch_model`, loads it with the node's runner, and
answers the registry's benchmark and job over the node websocket with `bim_node.jobs`'
messages (real embeddings, session-signed). The user submits through the API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bim_core import families, protocol
from bim_core.runtimes.runners import runner_load
from bim_node.artifacts import fetch_model
from bim_node.jobs import BenchmarkTask, ServedModel
from registry.models import Honeypot, Job, JobState, Node
from subnets.models import Subnet, SubnetChange
from tests.factories import NodeKeys, UserFactory, user_with_credits
from tests.registry.test_node_socket import handshake, ready, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

SLUG = "minilm-from-admin"
TEXTS = ["A subnet created in admin.", "No command line was run.", "東京は日本の首都です。"]


class DjangoClientFetcher:
    """The node's fetcher (bim_node.artifacts.Fetcher) over Django's test client: the same
    manifest and chunk views a node downloads from."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get_json(self, url: str) -> Any:
        response = self.client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return response.json()

    def get_bytes(self, url: str) -> bytes:
        response = self.client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return b"".join(response.streaming_content) if response.streaming else response.content


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def contributor_node(name: str, cache_dir: Path) -> tuple[NodeKeys, ServedModel]:
    """What `python -m bim_node` does before its socket (bim_node.__main__.prepare_node)."""
    owner = UserFactory(username=name)
    api = api_for(owner)
    listed = {s["slug"]: s for s in api.get("/api/v1/subnets/").json()}
    subnet = listed[SLUG]
    accepted = api.post(f"/api/v1/subnets/{SLUG}/accept-license/", {"license_version": subnet["license"]["version"]}, format="json")
    assert accepted.status_code in (200, 201), accepted.content
    long_term, session = protocol.new_private_key(), protocol.new_private_key()
    registered = api.post(
        "/api/v1/nodes/",
        {"public_key": protocol.public_key_b64(long_term), "name": name, "subnets": [SLUG], "env": {"os": "linux"}},
        format="json",
    )
    assert registered.status_code in (200, 201), registered.content
    bundle = fetch_model(DjangoClientFetcher(Client()), subnet["manifest_url"], cache_dir, expected_checksum=subnet["model_checksum"])
    compute = runner_load(subnet["task_type"], bundle.files, bundle.preprocessing, threads=1)
    model = ServedModel(
        compute=compute,
        family=families.family_for(subnet["task_type"]),
        checksum=bundle.model_checksum,
        tokenizer_checksum=bundle.checksums.get("tokenizer"),
    )
    node = Node.objects.get(pk=registered.json()["id"])
    return NodeKeys(node=node, long_term=long_term, session=session), model


def test_a_subnet_created_from_a_package_in_admin_benchmarks_nodes_and_settles_a_job(tmp_path):
    operator = UserFactory(username="operator", is_staff=True, is_superuser=True)
    admin = Client()
    admin.force_login(operator)

    form = admin.get("/admin/subnets/subnet/add/")
    assert form.status_code == 200 and b"minilm-int8" in form.content
    created = admin.post(
        "/admin/subnets/subnet/add/",
        {"package": "minilm-int8", "slug": SLUG, "name": "", "license": "", "activate": "on"},
    )

    subnet = Subnet.objects.get(slug=SLUG)
    assert created.status_code == 302 and created["Location"] == f"/admin/subnets/subnet/{subnet.pk}/change/"
    assert (subnet.state, subnet.setup_status) == (Subnet.State.ACTIVE, Subnet.Setup.READY), subnet.setup_detail
    assert subnet.benchmark_reference.model_checksum == subnet.model_checksum
    assert subnet.benchmark_reference.pool.count() == 12
    assert Honeypot.objects.filter(subnet=subnet, model_checksum=subnet.model_checksum).count() == 40
    assert (subnet.price_per_call_micro, subnet.price_per_item_micro, subnet.output_dim) == (333, 1000, 384)
    assert list(SubnetChange.objects.filter(subnet=subnet).order_by("at", "pk").values_list("field", "after")) == [
        ("created", {"state": "draft", "source": "package minilm-int8"}),
        ("state", "active"),
    ]
    page = admin.get(created["Location"]).content.decode()
    assert "Creation from a package: <strong>Ready</strong>" in page

    nodes = [contributor_node(name, tmp_path / name) for name in ("alice", "bob")]
    user = user_with_credits(10)

    async def scenario() -> dict[str, Any]:
        sockets = []
        for keys, model in nodes:
            socket = await handshake(keys, subnet)
            await ready(socket, subnet)
            benchmark = await socket.receive_json_from(timeout=10)
            assert benchmark["type"] == "benchmark" and benchmark["subnet"] == SLUG
            task = BenchmarkTask(benchmark["benchmark_id"], benchmark["inputs"], benchmark["runs"])
            timings, result = [], None
            for _ in range(task.runs):
                begun = time.perf_counter()
                result = await sync_to_async(model.compute)(task.inputs)
                timings.append(round((time.perf_counter() - begun) * 1000, 3))
            await socket.send_json_to(model.benchmark_result_message(task, result, timings, keys.session))
            passed = await socket.receive_json_from(timeout=10)
            assert passed["type"] == "benchmark_ok", passed
            sockets.append(socket)

        submitted = await database_sync_to_async(
            lambda: api_for(user).post(
                "/api/v1/jobs/", {"subnet": SLUG, "inputs": {"texts": TEXTS}, "idempotency_key": "must-show"}, format="json"
            )
        )()
        assert submitted.status_code == 201, submitted.content
        job_id = submitted.json()["id"]
        for (keys, model), socket in zip(nodes, sockets):
            offer = await socket.receive_json_from(timeout=10)
            assert offer["type"] == "job" and offer["job_id"] == job_id
            job = model.check_job(offer)
            vectors = await sync_to_async(model.compute)(job.inputs)
            payload, shape = model.encoded(vectors, job.inputs)
            await socket.send_json_to(model.result_message(job, payload, shape, 5, keys.session))
            assert (await socket.receive_json_from(timeout=10))["type"] == "result_ok"
        final = await database_sync_to_async(lambda: api_for(user).get(f"/api/v1/jobs/{job_id}/").json())()
        for socket in sockets:
            await socket.disconnect()
        return final

    final = run(scenario)

    assert final["state"] == "settled", final
    assert final["receipt"]["verification"]["min_cosine"] >= 0.9999
    assert {n["node_id"] for n in final["receipt"]["nodes"]} == {str(keys.node.pk) for keys, _ in nodes}
    assert Job.objects.get(pk=final["id"]).state == JobState.SETTLED

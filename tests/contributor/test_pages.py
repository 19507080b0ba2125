"""The contributor site: sign-up, log in and out, the dashboard, per-subnet opt-in (the
license acceptance recorded with its version and time before any job can reach the
browser), the browser's node registration and status endpoints, the node websocket on the
session cookie, and the dashboard's protocol bytes (contributor/static/js/protocol.js and
jobs.js) against bim_core/protocol.py."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import numpy as np
import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from bim_core import protocol
from bim_site.asgi import application
from bim_site.processes import ROOT
from ledger.models import Account, AccountKind
from registry import dispatch, submit, verify
from registry.models import Node, NodeSubnet
from registry.results import result_record
from subnets.models import EulaAcceptance
from tests.factories import SubnetFactory, UserFactory, online_node, result_message, unit_vectors, user_with_credits

PASSWORD = "a long enough passphrase 7"
DASHBOARD_JS = ROOT / "contributor" / "static" / "js"


@pytest.fixture
def subnet(db):
    return SubnetFactory(slug="minilm-embed", name="MiniLM embeddings")


@pytest.fixture
def contributor(db, client):
    user = UserFactory(username="carol")
    client.force_login(user)
    return user


def _register(client: Client, public_key: str, subnets: list[str], **extra) -> object:
    body = {"public_key": public_key, "subnets": subnets, "env": {"os": "linux", "runtime": "onnxruntime-web-1.30.0", "backend": "wasm", "gpu_family": "none", "cpu_count": 4}}
    return client.post(reverse("contributor:node-register"), json.dumps(body), content_type="application/json", **extra)


def _key() -> str:
    return protocol.public_key_b64(protocol.new_private_key())


# ------------------------------------------------------------------ accounts


@pytest.mark.django_db
def test_sign_up_creates_an_ordinary_account_and_logs_it_in(client, subnet):
    response = client.post(
        reverse("contributor:signup"), {"username": "dana", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 302 and response.url == reverse("contributor:dashboard")
    user = get_user_model().objects.get(username="dana")
    assert not user.is_staff and user.check_password(PASSWORD)
    dashboard = client.get(reverse("contributor:dashboard"))
    assert dashboard.status_code == 200
    assert b'data-testid="username">dana<' in dashboard.content


@pytest.mark.django_db
def test_sign_up_refuses_mismatched_passwords_and_a_taken_name(client):
    UserFactory(username="erin")
    response = client.post(
        reverse("contributor:signup"), {"username": "erin", "password1": PASSWORD, "password2": PASSWORD + "x"}
    )
    assert response.status_code == 200
    assert response.context["form"].errors.keys() >= {"username", "password2"}
    assert get_user_model().objects.filter(username="erin").count() == 1


@pytest.mark.django_db
def test_log_in_and_log_out(client):
    user = UserFactory(username="frank")
    user.set_password(PASSWORD)
    user.save()
    assert client.post(reverse("contributor:login"), {"username": "frank", "password": "wrong"}).status_code == 200
    response = client.post(reverse("contributor:login"), {"username": "frank", "password": PASSWORD})
    assert response.status_code == 302 and response.url == reverse("contributor:dashboard")
    assert client.get(reverse("contributor:dashboard")).status_code == 200
    assert client.post(reverse("contributor:logout")).status_code == 302
    assert client.get(reverse("contributor:dashboard")).status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize(
    "password",
    [
        pytest.param("short7", id="too-short"),
        pytest.param("password123", id="common"),
        pytest.param("31415926535897", id="numeric"),
        pytest.param("dana-the-contributor", id="like-the-username"),
    ],
)
def test_sign_up_refuses_a_weak_password(client, password):
    response = client.post(
        reverse("contributor:signup"),
        {"username": "dana-the-contributor", "password1": password, "password2": password},
    )
    assert response.status_code == 200
    assert "password2" in response.context["form"].errors
    assert not get_user_model().objects.filter(username="dana-the-contributor").exists()


@pytest.mark.django_db
def test_repeated_failed_logins_lock_the_account_out_from_that_address(client, settings):
    user = UserFactory(username="gina")
    user.set_password(PASSWORD)
    user.save()
    login = reverse("contributor:login")

    failures = [
        client.post(login, {"username": "gina", "password": f"wrong {i}"}, REMOTE_ADDR="10.0.0.7").status_code
        for i in range(settings.AXES_FAILURE_LIMIT)
    ]
    locked = client.post(login, {"username": "gina", "password": PASSWORD}, REMOTE_ADDR="10.0.0.7")

    assert failures[:-1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)
    assert failures[-1] == 429
    assert locked.status_code == 429  # even the right password, until the cool-off
    assert "_auth_user_id" not in client.session
    # Another address (the account's owner elsewhere) still logs in.
    elsewhere = Client().post(login, {"username": "gina", "password": PASSWORD}, REMOTE_ADDR="10.0.0.8")
    assert elsewhere.status_code == 302


@pytest.mark.django_db
def test_the_dashboard_requires_login(client):
    response = client.get(reverse("contributor:dashboard"))
    assert response.status_code == 302
    assert response.url == f"{reverse('contributor:login')}?next={reverse('contributor:dashboard')}"
    assert client.get(reverse("contributor:home")).status_code == 200


# ------------------------------------------------------------------ opt-in


def test_opt_in_records_the_license_version_and_time(client, contributor, subnet):
    page = client.get(reverse("contributor:opt-in", args=[subnet.slug]))
    assert page.status_code == 200
    assert subnet.license.name.encode() in page.content and b'value="2.0"' in page.content
    before = timezone.now()
    response = client.post(reverse("contributor:opt-in", args=[subnet.slug]), {"license_version": "2.0", "accept": "on"})
    assert response.status_code == 302 and response.url == reverse("contributor:dashboard")
    acceptance = EulaAcceptance.objects.get(user=contributor)
    assert acceptance.license == subnet.license and acceptance.license_version == "2.0"
    assert before - timedelta(seconds=1) <= acceptance.accepted_at <= timezone.now()
    assert acceptance.ip == "127.0.0.1"
    dashboard = client.get(reverse("contributor:dashboard"))
    assert f'data-testid="opted-in-{subnet.slug}"'.encode() in dashboard.content
    config = dashboard.context["config"]
    assert config["subnets"] == [
        {
            "slug": subnet.slug,
            "name": subnet.name,
            "task_type": "embedding",
            "model_checksum": subnet.model_checksum,
            "manifest_url": f"/subnets/{subnet.slug}/manifest.json",
            "opted_in": True,
            "unavailable": "",
        }
    ]


def test_opt_in_needs_the_box_ticked_and_the_current_version(client, contributor, subnet):
    url = reverse("contributor:opt-in", args=[subnet.slug])
    assert client.post(url, {"license_version": "2.0"}).status_code == 200
    stale = client.post(url, {"license_version": "1.0", "accept": "on"})
    assert stale.status_code == 200 and b"is at version 2.0" in stale.content
    assert not EulaAcceptance.objects.filter(user=contributor).exists()
    assert client.get(reverse("contributor:opt-in", args=["no-such-subnet"])).status_code == 404


def test_a_dashboard_before_opt_in_offers_the_license_page(client, contributor, subnet):
    dashboard = client.get(reverse("contributor:dashboard"))
    assert reverse("contributor:opt-in", args=[subnet.slug]).encode() in dashboard.content
    assert dashboard.context["config"]["subnets"][0]["opted_in"] is False


# ------------------------------------------------------------------ the browser's node


def test_a_browser_cannot_register_for_a_subnet_before_opting_in(client, contributor, subnet):
    key = _key()
    refused = _register(client, key, [subnet.slug])
    assert refused.status_code == 403 and refused.json()["code"] == "license_not_accepted"
    assert not Node.objects.filter(public_key=key).exists()

    client.post(reverse("contributor:opt-in", args=[subnet.slug]), {"license_version": "2.0", "accept": "on"})
    created = _register(client, key, [subnet.slug])
    assert created.status_code == 201, created.content
    node = Node.objects.get(pk=created.json()["id"])
    assert node.owner == contributor and node.name == f"browser-{key[:8]}"
    assert (node.os, node.runtime, node.backend, node.gpu_family) == ("linux", "onnxruntime-web-1.30.0", "wasm", "none")
    assert node.capabilities == {"cpu_count": 4, "client": "browser"}
    # The same browser (same key in IndexedDB) on its next visit is the same node.
    again = _register(client, key, [subnet.slug])
    assert again.status_code == 200 and again.json()["id"] == str(node.pk)


def test_a_browser_says_whether_it_has_webrtc_and_routing_reads_it(client, contributor, subnet):
    """env.webrtc (a browser without RTCPeerConnection says false) is kept, as a bim-node's
    is, so dispatch gives peer-to-peer jobs to other nodes first; anything but a boolean is
    dropped."""
    client.post(reverse("contributor:opt-in", args=[subnet.slug]), {"license_version": "2.0", "accept": "on"})
    base = {"os": "linux", "runtime": "wllama-2.3.7", "backend": "wasm", "gpu_family": "none", "cpu_count": 2}
    for webrtc, kept in ((True, {"webrtc": True}), (False, {"webrtc": False}), ("yes", {})):
        body = {"public_key": _key(), "subnets": [subnet.slug], "env": {**base, "webrtc": webrtc}}
        created = client.post(reverse("contributor:node-register"), json.dumps(body), content_type="application/json")
        assert created.status_code == 201, created.content
        assert Node.objects.get(pk=created.json()["id"]).capabilities == {"cpu_count": 2, "client": "browser", **kept}


def test_registration_refuses_a_foreign_key_bad_input_and_unknown_subnets(client, contributor, subnet):
    client.post(reverse("contributor:opt-in", args=[subnet.slug]), {"license_version": "2.0", "accept": "on"})
    other = online_node(subnet)
    assert _register(client, other.node.public_key, [subnet.slug]).status_code == 409
    assert _register(client, "not base64", [subnet.slug]).json()["code"] == "invalid_public_key"
    assert _register(client, _key(), []).status_code == 400
    assert _register(client, _key(), ["nope"]).status_code == 404
    assert client.post(reverse("contributor:node-register"), "{", content_type="application/json").status_code == 400


def test_registration_needs_the_session_and_the_csrf_token(subnet):
    user = UserFactory()
    EulaAcceptance.objects.create(user=user, subnet=subnet, license=subnet.license, license_version="2.0")
    assert _register(Client(), _key(), [subnet.slug]).status_code == 401
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    assert _register(browser, _key(), [subnet.slug]).status_code == 403  # no CSRF token
    page = browser.get(reverse("contributor:dashboard"))
    token = page.context["csrf_token"]
    assert _register(browser, _key(), [subnet.slug], HTTP_X_CSRFTOKEN=str(token)).status_code == 201


def test_status_returns_the_owners_ledger_balances_and_the_nodes_work(client, contributor, subnet):
    ours, theirs = online_node(subnet, owner=contributor), online_node(subnet)
    keys = {k.node.pk: k for k in (ours, theirs)}
    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": ["a", "b"]}, idempotency_key="s")
    dispatch.job_dispatch(job_id=job.id)
    for assignment in job.assignments.all():
        k = keys[assignment.node_id]
        result_record(node_id=k.node.pk, message=result_message(k, job, assignment, unit_vectors(2)))
    verify.job_verify(job_id=job.id)

    body = client.get(reverse("contributor:status"), {"node": str(ours.node.pk)}).json()
    earnings = Account.objects.get(kind=AccountKind.NODE_EARNINGS, node_id=ours.node.pk).balance
    escrow = Account.objects.get(kind=AccountKind.NODE_ESCROW, node_id=ours.node.pk).balance
    assert earnings > 0 and escrow > 0
    assert body["balances"] == {
        "earnings_micro": earnings,
        "escrow_micro": escrow,
        "node_earnings_micro": earnings,
        "node_escrow_micro": escrow,
    }
    node = body["node"]
    assert node["id"] == str(ours.node.pk) and node["counts"]["agreed"] == 1
    assert [(a["job_id"], a["state"], a["job_state"], a["items"]) for a in node["assignments"]] == [
        (str(job.id), "agreed", "settled", 2)
    ]
    assert node["subnets"][0]["slug"] == subnet.slug and node["subnets"][0]["items_per_s"] == 30.0
    # The registry's own speed on real jobs comes beside the benchmark's, for the dashboard.
    NodeSubnet.objects.filter(node=ours.node, subnet=subnet).update(observed_items_per_s=12.5, observed_latency_ms=160.0)
    link = client.get(reverse("contributor:status"), {"node": str(ours.node.pk)}).json()["node"]["subnets"][0]
    assert (link["observed_items_per_s"], link["observed_latency_ms"]) == (12.5, 160.0)
    # Another owner's node is not ours to read; without ?node= only the balances come back.
    assert client.get(reverse("contributor:status"), {"node": str(theirs.node.pk)}).status_code == 404
    assert client.get(reverse("contributor:status"), {"node": "not-a-uuid"}).status_code == 404
    assert client.get(reverse("contributor:status")).json()["node"] is None
    assert Client().get(reverse("contributor:status")).status_code == 401


# ------------------------------------------------------------------ the websocket on the session cookie


async def _socket(cookie: str | None, origin: str | None) -> WebsocketCommunicator:
    headers = []
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, "/ws/node/", headers=headers)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_a_browser_session_gets_no_jobs_for_a_subnet_before_opting_in(client):
    """The page's socket carries no token: the session cookie authenticates it (from the
    site's own origin only), and `ready` for a subnet whose license the owner has not
    accepted is refused, so no job is ever offered."""
    subnet = SubnetFactory()
    user = UserFactory()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    long_term = protocol.new_private_key()
    node = Node.objects.create(owner=user, name="browser", public_key=protocol.public_key_b64(long_term))
    NodeSubnet.objects.create(node=node, subnet=subnet)

    async def scenario() -> tuple[dict, dict, dict]:
        socket = await _socket(cookie, "http://127.0.0.1:8000")
        assert (await socket.connect(timeout=5))[0]
        challenge = await socket.receive_json_from(timeout=5)
        session_pub = protocol.public_key_b64(protocol.new_private_key())
        signed = protocol.hello_message(node_id=str(node.pk), nonce=challenge["nonce"], session_key_pub=session_pub)
        await socket.send_json_to(
            {"type": "hello", "node_id": str(node.pk), "session_key_pub": session_pub, "signature": protocol.sign(long_term, signed), "env": {}}
        )
        welcome = await socket.receive_json_from(timeout=5)
        await socket.send_json_to({"type": "ready", "subnet": subnet.slug, "model_checksum": subnet.model_checksum, "max_concurrent": 1})
        answer = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return challenge, welcome, answer

    challenge, welcome, answer = async_to_sync(scenario)()
    assert challenge["type"] == "challenge" and welcome["type"] == "welcome"
    assert answer["type"] == "error" and answer["code"] == "license_not_accepted"
    assert NodeSubnet.objects.get(node=node).ready_at is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_the_session_socket_refuses_a_foreign_origin_and_no_session(client):
    user = UserFactory()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value

    async def scenario() -> tuple[bool, int | None]:
        foreign = await _socket(cookie, "http://evil.example")
        refused, _ = await foreign.connect(timeout=5)
        anonymous = await _socket(None, "http://127.0.0.1:8000")
        assert (await anonymous.connect(timeout=5))[0]
        closed = await anonymous.receive_output(timeout=5)
        return refused, closed.get("code")

    foreign_connected, anonymous_close = async_to_sync(scenario)()
    assert foreign_connected is False
    assert anonymous_close == protocol.CLOSE_UNAUTHENTICATED


# ------------------------------------------------------------------ the dashboard script's bytes


def test_the_dashboard_script_hashes_encodes_and_signs_exactly_like_registry_protocol(tmp_path):
    """The dashboard's protocol.js and jobs.js under Node's WebCrypto, given the same seeds,
    must produce the bytes
    bim_core/protocol.py produces: canonical JSON hashes (non-ASCII, emoji, CJK, control
    characters), f32le vectors, and the hello, result and benchmark signatures."""
    long_seed, session_seed = bytes(range(32)), bytes(range(32, 64))
    long_key = protocol.private_key_from_b64(protocol.b64encode(long_seed))
    session_key = protocol.private_key_from_b64(protocol.b64encode(session_seed))
    inputs = {"texts": ["hello world", "Grüße aus Köln", "東京 🚀 \"quoted\" back\\slash", "tab\tnew\nline\u0001\u007f"]}
    contract = {
        "job_id": "0c9d7e4a-3b21-4f8e-a6d5-1f2e3d4c5b6a",
        "tolerances": {"cosine_min": 0.9999, "norm_tolerance": 0.001},
        "determinism": {"temperature": 0, "top_p": 1, "seed": 0},
        "preprocessing": {"max_tokens": 256, "pooling": "mean", "normalize": True},
        "limits": {"max_items": 32, "latency_ms": 30000},
        "input_hash": protocol.input_hash(inputs),
        "model_checksum": "ab" * 32,
        "tokenizer_checksum": "",
        "nested": [{"b": None, "a": [1, 2.5, -0.125]}],
    }
    vectors = unit_vectors(4, dim=384, seed=3)
    timings = [12.345, 7.0, 0.5, 1234.567]
    case = {
        "long_seed": list(long_seed),
        "session_seed": list(session_seed),
        "node_id": "5b0f3c1e-8d2a-4f6b-9c3d-2e7a1b4c5d6e",
        "nonce": protocol.b64encode(b"\xa5" * 32),
        "inputs": inputs,
        "contract": contract,
        "contract_hash": protocol.contract_hash(contract),
        "assignment_id": "7e6d5c4b-3a29-4187-9f6e-5d4c3b2a1908",
        "vectors": vectors.astype(np.float64).ravel().tolist(),
        "shape": [4, 384],
        "timings": timings,
    }
    script = tmp_path / "check.mjs"
    script.write_text(
        f"""
import * as protocol from {json.dumps((DASHBOARD_JS / "protocol.js").as_uri())};
import * as jobs from {json.dumps((DASHBOARD_JS / "jobs.js").as_uri())};
const c = JSON.parse(process.argv[2]);
const pkcs8 = (seed) => Uint8Array.from([...Buffer.from("302e020100300506032b657004220420", "hex"), ...seed]);
const load = (seed) => crypto.subtle.importKey("pkcs8", pkcs8(seed), {{name: "Ed25519"}}, false, ["sign"]);
const longKey = await load(c.long_seed), sessionKey = await load(c.session_seed);
const sessionPub = {json.dumps(protocol.public_key_b64(session_key))};
const job = await jobs.checkJob({{type: "job", assignment_id: c.assignment_id, job_id: c.contract.job_id, role: "A",
  contract: c.contract, contract_hash: c.contract_hash, inputs: c.inputs, deadline: "2999-01-01T00:00:00+00:00"}},
  {{modelChecksum: c.contract.model_checksum}});
const output = {{data: Float32Array.from(c.vectors), rows: c.shape[0], dim: c.shape[1]}};
const result = await jobs.buildResult(job, output, sessionKey, 41.6);
const benchmark = {{kind: "benchmark", benchmarkId: "0f0e0d0c-0b0a-4908-8706-050403020100", texts: c.inputs.texts, runs: c.timings.length}};
const bench = await jobs.buildBenchmarkResult(benchmark, output, c.timings.map(protocol.roundMs), sessionKey);
const honest = {{type: "job", assignment_id: c.assignment_id, job_id: c.contract.job_id, contract: c.contract,
  contract_hash: c.contract_hash, inputs: c.inputs}};
const tampered = [
  {{inputs: {{texts: ["tampered"]}}}},
  {{inputs: {{texts: []}}}},
  {{contract: {{...c.contract, tolerances: {{cosine_min: 0.5, norm_tolerance: 0.001}}}}}},
  {{job_id: "00000000-0000-4000-8000-000000000000"}},
  {{deadline: "yesterday"}},
];
const refused = [];
for (const change of tampered) {{
  try {{ await jobs.checkJob({{...honest, ...change}}, {{modelChecksum: c.contract.model_checksum}}); refused.push(null); }}
  catch (e) {{ refused.push(e.reason); }}
}}
try {{ await jobs.checkJob(honest, {{modelChecksum: "cd".repeat(32)}}); refused.push(null); }}
catch (e) {{ refused.push(e.reason); }}
console.log(JSON.stringify({{
  input_hash: await protocol.inputHash(c.inputs),
  canonical: protocol.canonicalJson(c.contract),
  hello: await protocol.signB64(longKey, protocol.helloMessage(c.node_id, c.nonce, sessionPub)),
  result, bench, refused,
}}));
"""
    )
    done = subprocess.run(
        ["node", "--no-warnings", str(script), json.dumps(case)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    js = json.loads(done.stdout)

    assert js["input_hash"] == contract["input_hash"]
    assert js["canonical"].encode() == protocol.canonical_json(contract)
    assert js["hello"] == protocol.sign(
        long_key, protocol.hello_message(node_id=case["node_id"], nonce=case["nonce"], session_key_pub=protocol.public_key_b64(session_key))
    )
    payload = protocol.encode_vectors(vectors)
    result = js["result"]
    assert protocol.b64decode(result["data"]) == payload
    assert result["result_hash"] == protocol.sha256_hex(payload)
    assert result["shape"] == [4, 384] and result["encoding"] == "f32le" and result["elapsed_ms"] == 42
    assert result["signature"] == protocol.sign(
        session_key,
        protocol.result_message(
            job_id=contract["job_id"],
            assignment_id=case["assignment_id"],
            contract_hash=case["contract_hash"],
            input_hash=contract["input_hash"],
            result_hash=result["result_hash"],
            shape=(4, 384),
        ),
    )
    bench = js["bench"]
    # The registry re-reads the timings from JSON and signs-checks them with three decimals.
    assert bench["signature"] == protocol.sign(
        session_key,
        protocol.benchmark_message(
            benchmark_id=bench["benchmark_id"],
            result_hash=protocol.sha256_hex(payload),
            shape=(4, 384),
            timings_ms=[float(t) for t in json.loads(json.dumps(bench["timings_ms"]))],
        ),
    )
    # The checks a node makes before computing (docs/protocol.md §4.4), each with its reason.
    assert js["refused"] == [
        "bad_input_hash",
        "bad_message",
        "bad_contract_hash",
        "bad_message",
        "bad_message",
        "model_mismatch",
    ]

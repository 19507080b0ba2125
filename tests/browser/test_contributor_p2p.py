"""Must-show for peer-to-peer jobs (docs/p2p.md) with the browser contributor: the real
market (daphne, a Celery worker with beat, PostgreSQL and Redis: tests/market.py) with the
contributor page in real headless Chromium as a node and the Python node (bim_node, another
owner, on 127.1.0.1) as the other, both serving the MiniLM embeddings subnet. A user submits
jobs by input hash and summary only and plays its end with bim_core.peer (aiortc) through
the user socket (tests/browser/p2p_user.py): it offers each node a data channel, sends the
`input` frame, receives the `result` frames, checks their hashes and session signatures, and
confirms delivery. Every peer connection runs on loopback with no STUN or TURN server.

Two jobs, because the two paths of docs/p2p.md §4 differ in what the registry must see:
1. The browser and the Python node. WASM onnxruntime and native onnxruntime differ in the last
   bits (about 1e-7 here), so the two commits name different hashes: the registry asks both
   nodes for their payloads and the input (`upload_request`, reason `mismatch`, which the
   page answers from its store), compares them within tau and settles; the job detail then
   carries the result and the receipt verifies as a relay job's does.
2. Two browser pages of different owners, the Python node stopped: the same engine gives the
   same bytes, the user confirms the committed hash, the job settles on the commits alone, and
   the registry's database holds the job's input hash and nowhere its text.
3. The same pages sent an input that is not the submitted one: both refuse it, to the user
   (`input_refused`) and to the registry (`job_failed`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from bim_core import families, protocol
from bim_core.peer import allow_loopback
from bim_sdk import Client, verify_receipt
from ledger.checks import ledger_violations
from registry.models import Assignment, Job, Node
from subnets.models import Subnet
from tests.browser.conftest import sign_up, wait_for
from tests.browser.p2p_user import NodeLink, bring_input
from tests.market import nodes_routable, running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PASSWORD = "peer to peer from a browser 7"
SUBNET = "minilm-embed"
EMBEDDING = families.family_for("embedding")


@pytest.fixture
def market(tmp_path):
    """The market with bob's Python node; BIM_P2P_LOOPBACK lets its peers use 127.0.0.1."""
    allow_loopback()  # this process plays the user
    with running_market(tmp_path, contributors="bob", nodes={"bob": SUBNET}, BIM_P2P_LOOPBACK="1") as (url, tokens, group):
        yield url, tokens, group


def contributor_page(browser: Any, url: str, username: str, console: list[str]) -> Any:
    """A person signs up, opts into the subnet and contributes: the page is a ready node (in
    a context of its own, closed with the browser)."""
    page = browser.new_context().new_page()
    page.set_default_timeout(30_000)
    page.on("console", lambda message: console.append(f"{username} {message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"{username} pageerror: {error}"))
    sign_up(page, url, username, PASSWORD)
    wait_for(page, "window.bim && window.bim.phase === 'no subnet'")
    page.click(f"[data-testid=opt-in-{SUBNET}]")
    page.check("#id_accept")
    page.click("[data-testid=accept-license]")
    page.wait_for_url(f"{url}/contribute/")
    wait_for(page, "window.bim.benchmark && window.bim.benchmark.passed && window.bim.phase.startsWith('ready on')", timeout=240_000)
    return page


def submit_p2p(client: Client, inputs: dict[str, Any], key: str) -> dict[str, Any]:
    body = {
        "subnet": SUBNET,
        "transport": "p2p",
        "input_hash": protocol.input_hash(inputs),
        "input_summary": EMBEDDING.input_summary(inputs),
        "idempotency_key": key,
    }
    return client.http.request("POST", "/api/v1/jobs/", json=body).json()


def play_user(url: str, token: str, job_id: str, inputs: dict[str, Any]) -> list[NodeLink]:
    """bring_input in a thread of its own: Playwright's sync API keeps an event loop here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            ws_url = url.replace("http://", "ws://", 1) + f"/ws/user/?token={token}"
            outcome["links"] = asyncio.run(bring_input(ws_url, job_id, inputs, timeout_s=150))
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="p2p-user")
    thread.start()
    thread.join(180)
    assert not thread.is_alive(), "the user's end did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["links"]


def check_results(links: list[NodeLink], job: dict[str, Any], inputs: dict[str, Any]) -> None:
    """What the user checks of each `result` frame (docs/p2p.md §3): its bytes hash to its
    result_hash and the assignment's session key signed it, as a relay result."""
    contract_hash = protocol.contract_hash(job["contract"])
    for link in links:
        header = link.header
        assert header["kind"] == "result", header
        assert (header["job_id"], header["assignment_id"]) == (job["id"], link.assignment_id)
        assert header["input_hash"] == protocol.input_hash(inputs) == job["contract"]["input_hash"]
        assert (header["encoding"], header["shape"]) == ("f32le", [len(inputs["texts"]), 384])
        assert protocol.sha256_hex(link.payload) == header["result_hash"]
        signed = protocol.result_message(
            job_id=job["id"], assignment_id=link.assignment_id, contract_hash=contract_hash,
            input_hash=header["input_hash"], result_hash=header["result_hash"], shape=tuple(header["shape"]),
        )
        assert protocol.signature_valid(link.session_key_pub, header["signature"], signed)


def confirm_delivery(client: Client, job_id: str, links: list[NodeLink]) -> list[bool]:
    answers = []
    for link in links:
        body = {"assignment_id": link.assignment_id, "result_hash": link.header["result_hash"]}
        answers.append(client.http.request("POST", f"/api/v1/jobs/{job_id}/delivered/", json=body).json()["matched"])
    return answers


def check_commits(links: list[NodeLink]) -> None:
    """Each node's commit reports the data channel as the user's end counted it: no relay,
    the bytes the user received as sent and the bytes it sent as received."""
    for link in links:
        assert link.candidates == 0  # every candidate was in the node's answer (non-trickle)
        stats = Assignment.objects.get(pk=link.assignment_id).transport_stats
        assert stats == {"relayed": False, "bytes_sent": link.stats["bytes_received"], "bytes_received": link.stats["bytes_sent"]}
        # Direct: host candidates, or Chromium's loopback address learned as peer-reflexive
        # (Chromium gathers no 127.0.0.1 host candidate, even when loopback is allowed).
        assert link.stats["relayed"] is False
        assert {link.stats["local_candidate"], link.stats["remote_candidate"]} <= {"host", "prflx"}


def page_figures(page: Any, link: NodeLink) -> dict[str, Any]:
    """The page's record of one peer-to-peer job, once its connection closed: the selected
    pair is no TURN relay, and the bytes are those the user's end counted."""
    found = f"window.bim.peerJobs.find((f) => f.assignmentId === {json.dumps(link.assignment_id)})"
    wait_for(page, f"{found} && {found}.closedAfterMs != null", timeout=10_000)
    figures = page.evaluate(found)
    assert figures["relayed"] is False and {figures["local_candidate"], figures["remote_candidate"]} <= {"host", "prflx"}
    assert (figures["bytes_sent"], figures["bytes_received"]) == (link.stats["bytes_received"], link.stats["bytes_sent"])
    return figures


def database_rows_with(needle: str) -> dict[str, int]:
    """Rows holding `needle`, by table, in every table of the registry's database: as text,
    and as the hex of its UTF-8 (how a bytea column holds it)."""
    hexed = needle.encode().hex()
    hits = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT count(*) FROM "{table}" AS r WHERE r::text LIKE %s OR r::text LIKE %s', [f"%{needle}%", f"%{hexed}%"])
            if count := cursor.fetchone()[0]:
                hits[table] = count
    return hits


def node_of(link: NodeLink) -> Node:
    return Assignment.objects.select_related("node__owner").get(pk=link.assignment_id).node


def logs(group: Any, console: list[str]) -> str:
    tails = [f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in sorted(Path(group.log_dir).glob("*.log"))]
    return "\n".join([*tails, "--- browser console", *console[-80:]])


@pytest.mark.django_db(transaction=True)
def test_a_browser_node_answers_p2p_jobs_beside_a_python_node_and_the_registry_never_sees_the_input(market, webrtc_browser, tau):
    url, tokens, group = market
    client = Client(url, tokens["demo-user"], timeout=30)
    registry_key = client.registry_key()
    console: list[str] = []
    figures: dict[str, Any] = {}
    try:
        dana = contributor_page(webrtc_browser, url, "dana", console)
        nodes_routable(2, group)

        # 1. The browser and the Python node: their commits differ in the last bits.
        marker1 = f"mixed-pair-{uuid.uuid4().hex}"
        inputs1 = {"texts": [f"A browser tab and a Python node embed this ({marker1}).", "Prompts travel peer to peer."]}
        job1 = submit_p2p(client, inputs1, "p2p-browser-1")
        links1 = play_user(url, tokens["demo-user"], job1["id"], inputs1)
        assert {node_of(link).owner.username for link in links1} == {"dana", "bob"}
        check_results(links1, client.job(job1["id"]), inputs1)
        hashes1 = {link.header["result_hash"] for link in links1}
        assert len(hashes1) == 2, "WASM and native onnxruntime gave the same bytes: this job no longer takes the mismatch path"
        assert confirm_delivery(client, job1["id"], links1) == [True, True]
        final1 = client.wait(job1["id"], timeout=120)
        assert final1["state"] == "settled", final1
        # The registry asked both nodes for their bytes and the input, and judged them as a
        # relay job: the page uploaded from its store, and the job detail carries the result.
        browser1 = next(link for link in links1 if node_of(link).owner.username == "dana")
        uploaded = Assignment.objects.get(pk=browser1.assignment_id)
        assert uploaded.result is not None and uploaded.upload_reason == ""
        assert any("uploading" in line and "(mismatch)" in line for line in dana.evaluate("window.bim.log"))
        assert Job.objects.get(pk=job1["id"]).inputs == inputs1
        vectors1 = verify_receipt(final1, registry_key=registry_key, inputs=inputs1)
        assert final1["receipt"]["verification"]["min_cosine"] >= tau
        delivered = next(link for link in links1 if link.header["result_hash"] == final1["receipt"]["result_hash"])
        assert (protocol.decode_vectors(delivered.payload, (2, 384)) == vectors1).all()
        check_commits(links1)
        figures["job1"] = {"page": page_figures(dana, browser1), "user": [vars_of(link) for link in links1]}

        # 2. Two browser pages of different owners: the Python node stops. Both pages run on
        # this one machine, so the subnet asks only for distinct owners (the default policy
        # also wants distinct IP blocks, which 127.0.0.1 twice is not).
        group.kill("bob")
        bob = Node.objects.get(owner__username="bob")
        wait_until(lambda: not Node.objects.get(pk=bob.pk).is_online)
        Subnet.objects.filter(slug=SUBNET).update(routing_policy={"distinct": ["owner_id"]})
        erin = contributor_page(webrtc_browser, url, "erin", console)
        nodes_routable(2, group)

        marker2 = f"browser-pair-{uuid.uuid4().hex}"
        inputs2 = {"texts": [f"Only the two browsers read this ({marker2}).", "Grüße aus Köln 🚀", "東京"]}
        job2 = submit_p2p(client, inputs2, "p2p-browser-2")
        links2 = play_user(url, tokens["demo-user"], job2["id"], inputs2)
        assert {node_of(link).owner.username for link in links2} == {"dana", "erin"}
        check_results(links2, client.job(job2["id"]), inputs2)
        assert len({link.header["result_hash"] for link in links2}) == 1  # one engine, one answer
        assert confirm_delivery(client, job2["id"], links2) == [True, True]
        final2 = client.wait(job2["id"], timeout=120)
        assert final2["state"] == "settled", final2
        assert final2["receipt"]["verification"]["path"] == "2-of-2"
        # Settled on the commits: the registry holds neither the input nor the result, so the
        # receipt is checked against the bytes the user received over the channel.
        assert final2["result"] is None
        job2_row = Job.objects.get(pk=job2["id"])
        assert (job2_row.inputs, job2_row.relay_bytes, job2_row.fallback_reason) == ({}, 0, "")
        received = links2[0]
        delivered2 = {
            "encoding": "f32le", "shape": received.header["shape"], "result_hash": received.header["result_hash"],
            **EMBEDDING.result_for_user(protocol.decode_vectors(received.payload, (3, 384))),
        }
        vectors2 = verify_receipt({**final2, "result": delivered2}, registry_key=registry_key, inputs=inputs2)
        assert vectors2.shape == (3, 384)
        check_commits(links2)
        figures["job2"] = {
            "pages": [page_figures(page, link) for page, link in pair_pages(links2, dana, erin)],
            "user": [vars_of(link) for link in links2],
        }

        # 3. An input that is not the one submitted: each page refuses it over its channel
        # (input_refused) and gives the job back to the registry (job_failed).
        marker3 = f"swapped-input-{uuid.uuid4().hex}"
        job3 = submit_p2p(client, {"texts": ["What the user declared."]}, "p2p-browser-3")
        swapped = {"texts": [f"What the user sent instead ({marker3})."]}
        links3 = play_user(url, tokens["demo-user"], job3["id"], swapped)
        assert [(link.header, link.payload) for link in links3] == [({"kind": "input_refused", "reason": "bad_input_hash"}, b"")] * 2
        wait_until(lambda: not Assignment.objects.filter(job_id=job3["id"], state="dispatched").exists())
        for page in (dana, erin):
            assert any("refused its input" in line for line in page.evaluate("window.bim.log"))

        # 4. A page away between its commit and the registry's upload request: its store
        # (IndexedDB) kept the committed result, and the request, sent while no socket of its
        # was there, comes again after its next `welcome` (docs/p2p.md §4).
        inputs4 = {"texts": [f"Kept across a reload ({uuid.uuid4().hex})."]}
        job4 = submit_p2p(client, inputs4, "p2p-browser-4")
        links4 = play_user(url, tokens["demo-user"], job4["id"], inputs4)  # not confirmed: it waits
        wait_until(lambda: Job.objects.get(pk=job4["id"]).state == "verifying")
        away = next(link for link in links4 if node_of(link).owner.username == "dana")
        dana.goto("about:blank")
        wait_until(lambda: not Node.objects.get(pk=node_of(away).pk).is_online, timeout=15)  # its socket closed
        # The user disputes dana's bytes: the registry asks dana's node for them, and no socket hears it.
        disputed = client.http.request(
            "POST", f"/api/v1/jobs/{job4['id']}/delivered/", json={"assignment_id": away.assignment_id, "result_hash": "0" * 64}
        )
        assert disputed.status_code == 202 and disputed.json() == {"matched": False}
        dana.goto(f"{url}/contribute/")
        wait_until(lambda: Assignment.objects.get(pk=away.assignment_id).result is not None, timeout=120)
        dana_log = dana.evaluate("window.bim.log")
        assert any("from before for the registry's uploads" in line for line in dana_log), dana_log
        assert any("uploading" in line and "(dispute)" in line for line in dana_log), dana_log
        assert client.wait(job4["id"], timeout=120)["state"] == "settled"

        # What the registry's database holds: job 2's input hash, never its text, nor job 3's
        # refused one; job 1's text, which the mismatch made the nodes upload (and which shows
        # that the search finds what is there).
        assert "registry_job" in database_rows_with(protocol.input_hash(inputs2))
        assert database_rows_with(marker2) == {}
        assert database_rows_with(marker3) == {}
        assert "registry_job" in database_rows_with(marker1)
    except Exception:
        print(logs(group, console))
        raise

    assert ledger_violations() == []
    print(json.dumps(figures, indent=1, default=str))


def vars_of(link: NodeLink) -> dict[str, Any]:
    return {
        "node": node_of(link).owner.username, "setup_ms": round(link.setup_ms, 1), "reply_ms": round(link.reply_ms, 1),
        "trickled_candidates": link.candidates, "stats": link.stats,
    }


def pair_pages(links: list[NodeLink], *pages: Any) -> list[tuple[Any, NodeLink]]:
    """Each link with the page that is its node."""
    by_node = {page.evaluate("window.bim.nodeId"): page for page in pages}
    return [(by_node[str(node_of(link).pk)], link) for link in links]


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)

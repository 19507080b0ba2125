"""A browser serves the text subnet: in real (headless, Debian) Chromium against a live
registry (daphne + a real Celery worker with beat, on PostgreSQL and Redis), as
test_contributor_e2e.py does for embeddings.

The browser signs up, accepts the SmolLM2 subnet's license, fetches the ~98 MB GGUF chunk by
chunk through the verified store, runs it with llama.cpp in WebAssembly (wllama), passes the
registry's benchmark and computes text jobs paired with a headless Python node of another
owner (llama-cpp-python) on another loopback /24. Each job settles with a verified receipt
naming the browser: 2-of-2 where the two runtimes generated the same tokens, by the
registry's re-scoring where they did not. The browser streamed its tokens as `partial`
messages while it generated, as the Python node does.

Peer to peer (docs/p2p.md), the same pair takes a text job the SDK's exchange submits by input
hash and summary: the prompt reaches each node over its data channel, the browser streams its
tokens to the user as `partial` frames and then the `result` frame, and the registry gets only
the signed commits (and, the subnet's policy having output rules, node A's text)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bim_core import protocol
from bim_core.peer import allow_loopback
from bim_core.runtimes.generator import Generator
from bim_sdk import Client, TextDelta, TextResult, verify_receipt
from ledger.checks import ledger_violations
from registry import selectors
from registry.models import Assignment, AssignmentState, Benchmark, BenchmarkState, Job, Node
from subnets import defaults
from subnets.services import packaged_file
from tests.browser.conftest import opt_in, sign_up, wait_for, watch_console
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PASSWORD = "generating text in a browser 42"
SLUG = defaults.TEXT_SLUG
JOBS = [
    {"prompt": "Translate 'good morning' into French.", "max_tokens": 8},
    {"prompt": "Name three colours of the rainbow.", "max_tokens": 8},
]
# What the page sends on its node socket, recorded before any script of the page runs:
# the partial messages (text so far) and the results' job ids.
RECORD_SENT = """
window.__bimSent = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  try {
    const m = JSON.parse(data);
    if (m.type === "partial") window.__bimSent.push({type: m.type, job_id: m.job_id, text: m.text, tokens: m.tokens});
    if (m.type === "result") window.__bimSent.push({type: m.type, job_id: m.job_id, shape: m.shape});
  } catch (err) { /* not JSON: not ours to record */ }
  return send.call(this, data);
};
"""


# The page's data channel frames (headers only): what it streamed to the user, in order.
RECORD_CHANNEL = """
window.__bimChannel = [];
const channelSend = RTCDataChannel.prototype.send;
RTCDataChannel.prototype.send = function (data) {
  if (typeof data === "string") {
    try {
      const h = JSON.parse(data);
      window.__bimChannel.push({kind: h.kind, text: h.text, tokens: h.tokens, job_id: h.job_id, result_hash: h.result_hash});
    } catch (err) { /* not a header */ }
  }
  return channelSend.call(this, data);
};
"""


def _logs(group, console: list[str]) -> str:
    tails = [f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(Path(group.log_dir).glob("*.log"))]
    return "\n".join([*tails, "--- browser console", *console[-60:]])


@pytest.mark.django_db(transaction=True)
def test_a_browser_generates_text_jobs_with_llama_cpp_in_webassembly_and_is_paid(tmp_path, browser):
    with running_market(tmp_path, contributors="bob", nodes={"bob": SLUG}) as (url, tokens, group):
        context = browser.new_context()
        page = context.new_page()
        console = watch_console(page)
        page.add_init_script(RECORD_SENT)
        page.set_default_timeout(30_000)
        try:
            sign_up(page, url, "erin", PASSWORD)
            wait_for(page, "window.bim && window.bim.phase === 'no subnet'")
            assert page.locator(f"[data-testid=unavailable-{SLUG}]").count() == 0
            opt_in(page, url, SLUG)

            # The GGUF fetched and verified chunk by chunk, loaded into wllama, benchmarked.
            wait_for(page, "window.bim && window.bim.benchmark && window.bim.benchmark.passed === true", timeout=300_000)
            state = page.evaluate("({nodeId: bim.nodeId, model: bim.model, env: bim.env, subnet: bim.subnet.slug})")
            assert state["subnet"] == SLUG
            assert state["model"]["fromCache"] is False and state["model"]["chunkRequests"] > 90
            assert state["model"]["bytes"] > 90_000_000
            assert (state["env"]["runtime"], state["env"]["backend"]) == ("wllama-2.3.7", "wasm")
            browser_node = Node.objects.select_related("owner").get(pk=state["nodeId"])
            assert browser_node.owner.username == "erin" and browser_node.runtime == "wllama-2.3.7"
            assert Benchmark.objects.filter(node=browser_node, state=BenchmarkState.PASSED).exists()

            client = Client(url, tokens["demo-user"], timeout=30)
            submitted = [client.submit(SLUG, inputs, idempotency_key=f"browser-text-{i}") for i, inputs in enumerate(JOBS)]
            finals = [client.wait(job["id"], timeout=240) for job in submitted]
            registry_key = client.registry_key()
            sent = page.evaluate("window.__bimSent")
        except Exception:
            print(_logs(group, console))
            raise
        finally:
            context.close()

    native = Generator.from_preprocessing(
        packaged_file(defaults.TEXT_MODEL.package, defaults.TEXT_MODEL.path), defaults.text_subnet_settings()["preprocessing"]
    )
    paths = []
    for final, inputs in zip(finals, JOBS, strict=True):
        assert final["state"] == "settled", final
        delivered = verify_receipt(final, registry_key=registry_key, inputs=inputs)
        receipt = final["receipt"]
        assert state["nodeId"] in {n["node_id"] for n in receipt["nodes"]}, receipt
        mine = Assignment.objects.get(job_id=final["id"], node_id=state["nodeId"])
        assert mine.state == AssignmentState.AGREED
        generated = selectors.assignment_result(mine)
        reference = native.generate(inputs["prompt"], inputs["max_tokens"])
        same = generated["tokens"] == reference.tokens
        # Identical tokens agree as they are; others were re-scored and accepted (the
        # browser is paid either way, or the assertion above would have failed).
        assert receipt["verification"]["path"] == ("2-of-2" if same else "rescored"), receipt["verification"]
        if same:
            assert delivered["text"] == generated["text"] == reference.text
        paths.append(receipt["verification"]["path"])
        # Streamed while generating: the partials grew towards the result's text.
        partials = [m for m in sent if m["type"] == "partial" and m["job_id"] == final["id"]]
        assert partials, sent
        assert all(generated["text"].startswith(p["text"]) and 1 <= p["tokens"] <= len(generated["tokens"]) for p in partials)
        assert [m["shape"] for m in sent if m["type"] == "result" and m["job_id"] == final["id"]] == [[len(generated["tokens"])]]
    assert ledger_violations() == []
    print(json.dumps({"browser_node": state["nodeId"], "paths": paths, "model_bytes": state["model"]["bytes"]}))


def _text_contributor(page, url: str) -> dict:
    """Sign up, opt into the text subnet, load and benchmark the GGUF: the page's state."""
    sign_up(page, url, "erin", PASSWORD)
    wait_for(page, "window.bim && window.bim.phase === 'no subnet'")
    opt_in(page, url, SLUG)
    wait_for(page, "window.bim && window.bim.benchmark && window.bim.benchmark.passed === true", timeout=300_000)
    wait_for(page, "window.bim.phase.startsWith('ready on')", timeout=60_000)
    return page.evaluate("({nodeId: bim.nodeId, env: bim.env})")


@pytest.mark.django_db(transaction=True)
def test_a_browser_streams_a_p2p_text_job_to_the_user_beside_a_python_node(tmp_path, webrtc_browser):
    allow_loopback()  # this process is the user: its SDK's peers use 127.0.0.1
    inputs = {"prompt": "Name three colours of the rainbow.", "max_tokens": 8}
    env = {"BIM_P2P_LOOPBACK": "1", "BIM_P2P_AUDIT_BP": "0"}
    with running_market(tmp_path, contributors="bob", nodes={"bob": SLUG}, **env) as (url, tokens, group):
        context = webrtc_browser.new_context()
        page = context.new_page()
        console = watch_console(page)
        page.add_init_script(RECORD_SENT)
        page.add_init_script(RECORD_CHANNEL)
        page.set_default_timeout(30_000)
        try:
            state = _text_contributor(page, url)
            assert state["env"]["webrtc"] is True  # the text engine says so: P2P text jobs may come
            assert Node.objects.get(pk=state["nodeId"]).capabilities.get("webrtc") is True

            client = Client(url, tokens["demo-user"], timeout=30)
            events = list(client.generate(SLUG, inputs["prompt"], inputs["max_tokens"], stream=True, timeout=240, transport="p2p"))
            registry_key = client.registry_key()
            sent = page.evaluate("window.__bimSent")
            frames = page.evaluate("window.__bimChannel")
            log = page.evaluate("window.bim.log")
        except Exception:
            print(_logs(group, console))
            raise
        finally:
            context.close()

    *deltas, final = events
    assert isinstance(final, TextResult) and deltas and all(isinstance(d, TextDelta) for d in deltas)
    outcome = final.p2p
    assert outcome is not None and outcome.fallback_reason == "" and outcome.refusals == {}
    assert len(outcome.opened) == 2 and len(outcome.received) == 2 and all(r.checked for r in outcome.received)
    job_id = final.job["id"]
    assert final.job["state"] == "settled"
    receipt = final.receipt
    assert state["nodeId"] in {n["node_id"] for n in receipt["nodes"]}, receipt
    verified = verify_receipt(
        final.job, registry_key=registry_key, inputs=inputs, payload=outcome.payload_for(receipt["result_hash"])
    )
    assert verified["text"] == final.text

    mine = Assignment.objects.select_related("job").get(job_id=job_id, node_id=state["nodeId"])
    assert mine.state == AssignmentState.AGREED and mine.transport_stats["relayed"] is False
    from_browser = next(r for r in outcome.received if r.assignment_id == str(mine.pk))
    generated = json.loads(from_browser.payload)
    # The browser streamed its text over the channel: partial frames growing towards its
    # result's text, all before the result frame; none of it went to the registry.
    kinds = [f["kind"] for f in frames]
    assert kinds.count("result") == 1 and kinds.index("result") == len(kinds) - 1, kinds
    partials = [f for f in frames if f["kind"] == "partial"]
    assert partials and all(generated["text"].startswith(p["text"]) for p in partials), (partials, generated)
    assert [p["tokens"] for p in partials] == sorted(p["tokens"] for p in partials)
    # Nothing streamed to the registry; a result with its text went there only as an upload it
    # asked for (node A's text, for the output rules; both, on a mismatch).
    assert [m for m in sent if m["type"] == "partial" and m["job_id"] == job_id] == []
    uploads = [line for line in log if f"uploading {str(mine.pk)[:8]}'s result" in line]
    assert len([m for m in sent if m["type"] == "result" and m["job_id"] == job_id]) == len(uploads), (sent, log)
    assert any(f"job {job_id[:8]}" in line and "input received peer to peer" in line for line in log), log

    # 2-of-2 where both runtimes generated the same tokens: the prompt never reached the
    # registry (node A's text did, for the output rules); re-scored where they differed, which
    # asks both nodes for their text and the prompt (docs/p2p.md §4).
    path = receipt["verification"]["path"]
    job = Job.objects.get(pk=job_id)
    assert job.transport == "p2p" and job.fallback_reason == ""
    if path == "2-of-2":
        assert job.inputs == {}
        assert job.assignments.filter(state=AssignmentState.AGREED, result__isnull=False).count() == 1
    else:
        assert path == "rescored", receipt["verification"]
        assert job.inputs == inputs
    assert protocol.input_hash(inputs) == job.contract["input_hash"]
    assert ledger_violations() == []
    print(json.dumps({
        "path": path, "browser_role": mine.role, "uploads": uploads, "deltas": len(deltas), "browser_partials": len(partials),
        "sdk_s": round(outcome.seconds, 2),
    }))

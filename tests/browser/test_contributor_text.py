"""A browser serves the text subnet: in real (headless, Debian) Chromium against a live
registry (daphne + a real Celery worker with beat, on PostgreSQL and Redis), as
test_contributor_e2e.py does for embeddings.

The browser signs up, accepts the SmolLM2 subnet's license, fetches the ~98 MB GGUF chunk by
chunk through the verified store, runs it with llama.cpp in WebAssembly (wllama), passes the
registry's benchmark and computes text jobs paired with a headless Python node of another
owner (llama-cpp-python) on another loopback /24. Each job settles with a verified receipt
naming the browser: 2-of-2 where the two runtimes generated the same tokens, by the
registry's re-scoring where they did not. The browser streamed its tokens as `partial`
messages while it generated, as the Python node does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bim_core.runtimes.generator import Generator
from bim_sdk import Client, verify_receipt
from ledger.checks import ledger_violations
from registry import selectors
from registry.models import Assignment, AssignmentState, Benchmark, BenchmarkState, Node
from subnets import defaults
from subnets.services import packaged_file
from tests.browser.conftest import sign_up, wait_for
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


def _logs(group, console: list[str]) -> str:
    tails = [f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(Path(group.log_dir).glob("*.log"))]
    return "\n".join([*tails, "--- browser console", *console[-60:]])


@pytest.mark.django_db(transaction=True)
def test_a_browser_generates_text_jobs_with_llama_cpp_in_webassembly_and_is_paid(tmp_path, browser):
    with running_market(tmp_path, contributors="bob", nodes={"bob": SLUG}) as (url, tokens, group):
        context = browser.new_context()
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        page.add_init_script(RECORD_SENT)
        page.set_default_timeout(30_000)
        try:
            sign_up(page, url, "erin", PASSWORD)
            wait_for(page, "window.bim && window.bim.phase === 'no subnet'")
            assert page.locator(f"[data-testid=unavailable-{SLUG}]").count() == 0
            page.click(f"[data-testid=opt-in-{SLUG}]")
            page.check("#id_accept")
            page.click("[data-testid=accept-license]")
            page.wait_for_url(f"{url}/contribute/")

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

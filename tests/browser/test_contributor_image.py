"""Issue 17, images: a browser computes the image subnet (waifu2x UpConv7, 2x) in real
(headless, Debian) Chromium, against a live registry (daphne + a real Celery worker with
beat, PostgreSQL and Redis, as tests/browser/test_contributor_e2e.py).

The browser signs up, opts into the image subnet, fetches and verifies the same ONNX file
through the chunk path, passes the registry's image benchmark on onnxruntime-web WASM, and
then computes image jobs paired with a headless Python node of another owner on another
loopback /24 (the browser connects from 127.0.0.1, the node from 127.1.0.1). The jobs
settle: the browser's pixels (upscaler.py's padding, tiling and rounding, in
js/upscale.js) agreed with native onnxruntime's within the subnet's SSIM tau, and every
receipt verifies with bim_sdk.verify_receipt."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bim_core import protocol
from bim_core.png import png_encode
from bim_core.runtimes.upscaler import Upscaler
from bim_core.verification import verify_image_pair
from bim_sdk import Client, verify_receipt
from ledger.checks import ledger_violations
from registry.models import Assignment, AssignmentState, Benchmark, BenchmarkState, Node, NodeSubnet
from subnets import defaults
from tests.browser.conftest import opt_in, sign_up, wait_for, watch_console
from tests.images import sample_image, waifu2x_model
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

SLUG = defaults.IMAGE_SLUG
PASSWORD = "upscaling from a browser 17"
# Small, so a 2-core machine computes them quickly: one tile each, one of them not square.
CROPS = [
    {"name": "chelsea", "height": 32, "width": 32, "top": 60, "left": 150},
    {"name": "coffee", "height": 48, "width": 64, "top": 120, "left": 220},
]


@pytest.fixture
def market(tmp_path):
    """The seeded database, the registry, a worker and bob's Python image node on 127.1.0.1."""
    with running_market(tmp_path, contributors="bob", nodes={"bob": SLUG}) as (url, tokens, group):
        yield url, tokens, group


def _logs(log_dir: Path, console: list[str]) -> str:
    """The processes' log tails and the page's console, for a failure's report."""
    tails = [f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}" for path in sorted(log_dir.glob("*.log"))]
    return "\n".join([*tails, "--- browser console", *console[-60:]])


def _routable(count: int) -> bool:
    links = NodeSubnet.objects.filter(subnet__slug=SLUG, ready_at__isnull=False, score__gt=0, node__is_online=True)
    return links.count() >= count


@pytest.mark.django_db(transaction=True)
def test_an_image_job_settles_between_a_browser_and_a_python_node_of_another_owner(market, browser):
    url, tokens, group = market
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    console = watch_console(page)
    page.set_default_timeout(30_000)
    try:
        sign_up(page, url, "iris", PASSWORD)
        wait_for(page, "window.bim && window.bim.phase === 'no subnet'")
        # Before opting in, the table already says which backend the image subnet would get.
        assert page.locator(f"[data-testid=plan-{SLUG}]").inner_text().startswith("WASM")
        assert page.locator(f"[data-testid=unavailable-{SLUG}]").count() == 0

        opt_in(page, url, SLUG)

        # The model fetched through the verified chunk path; the registry's image benchmark
        # (a 96 x 128 photo crop, checked against its reference within tau) passed.
        wait_for(page, "window.bim && window.bim.benchmark && window.bim.benchmark.passed === true", timeout=300_000)
        state = page.evaluate(
            "({nodeId: bim.nodeId, model: bim.model, env: bim.env, benchmark: bim.benchmark,"
            " taskType: bim.engine.taskType, threads: bim.engine.threads})"
        )
        assert state["taskType"] == "image"
        assert state["model"]["fromCache"] is False and state["model"]["chunkRequests"] > 0
        assert state["env"]["runtime"].startswith("onnxruntime-web") and state["env"]["backend"] == "wasm"
        browser_node = Node.objects.select_related("owner").get(pk=state["nodeId"])
        assert browser_node.owner.username == "iris" and browser_node.ip_block.startswith("127.0.0.")
        assert browser_node.runtime == state["env"]["runtime"]
        benchmark = Benchmark.objects.filter(node=browser_node, state=BenchmarkState.PASSED).latest("issued_at")
        assert benchmark.min_cosine >= defaults.image_subnet_settings()["tolerances"]["ssim_min"]  # the SSIM, for images
        plan = page.locator(f"[data-testid=plan-{SLUG}]").inner_text()
        assert plan.startswith("WASM") and "onnxruntime-web" in plan and "images/s" in plan, plan
        assert "images/s" in page.locator("[data-testid=bench-ips]").inner_text()

        deadline = time.monotonic() + 60
        while not _routable(2):
            assert time.monotonic() < deadline, "the browser and bob's node are not both routable"
            time.sleep(0.2)

        client = Client(url, tokens["demo-user"], timeout=30)
        registry_key = client.registry_key()
        images = [sample_image(**crop) for crop in CROPS]
        inputs = [{"image": protocol.b64encode(png_encode(image))} for image in images]
        jobs = [client.submit(SLUG, job_inputs, idempotency_key=f"browser-image-{i}") for i, job_inputs in enumerate(inputs)]
        finals = [client.wait(job["id"], timeout=180) for job in jobs]

        tolerances = defaults.image_subnet_settings()["tolerances"]
        native = Upscaler.from_preprocessing(waifu2x_model(), defaults.image_subnet_settings()["preprocessing"])
        bob = Node.objects.get(owner__username="bob")
        worst = []
        for final, job_inputs, image in zip(finals, inputs, images, strict=True):
            assert final["state"] == "settled", final
            pixels = verify_receipt(final, registry_key=registry_key, inputs=job_inputs)
            assert pixels.shape == (2 * image.shape[0], 2 * image.shape[1], 3)
            receipt = final["receipt"]
            assert {n["node_id"] for n in receipt["nodes"]} == {state["nodeId"], str(bob.pk)}
            assert receipt["verification"]["metric"] == "ssim"
            assert receipt["verification"]["worst"] >= tolerances["ssim_min"]
            worst.append(receipt["verification"]["worst"])
            # The browser's own answer, as the registry recorded it, against this machine's
            # native run of the same file.
            browser_result = Assignment.objects.get(job_id=final["id"], node=browser_node)
            assert browser_result.state == AssignmentState.AGREED
            assert verify_image_pair(pixels, native(image), **tolerances).passed

        wait_for(page, f"window.bim.verified >= {len(CROPS)}", timeout=30_000)
        assert page.locator("#jobs-body tr .state-agreed").count() >= len(CROPS)
        assert "images/s" in page.locator("[data-testid=speed-jobs]").inner_text()
    except Exception:
        print(_logs(Path(group.log_dir), console))
        raise
    finally:
        context.close()

    assert ledger_violations() == []
    print(
        json.dumps(
            {
                "browser_node": state["nodeId"],
                "benchmark": state["benchmark"],
                "benchmark_runs_ms": benchmark.timings_ms,
                "threads": state["threads"],
                "ssim_worst": worst,
            }
        )
    )


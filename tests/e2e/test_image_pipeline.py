"""End to end for the image family: daphne, a real Celery worker (with beat) on Redis,
PostgreSQL, and two contributor node processes upscaling real photo crops with the
waifu2x UpConv7 model; the SDK returns receipt-verified images."""

from __future__ import annotations

import pytest

from bim_core.png import png_encode
from bim_core.runtimes.upscaler import Upscaler
from bim_core.verification import verify_image_pair
from bim_sdk import Client
from ledger.checks import ledger_violations
from registry.models import Job, JobState
from subnets import defaults
from tests.images import sample_image, waifu2x_model
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# One tile, one tile with a short edge, and a 2 x 2 tiled image (tile 128).
CROPS = [
    {"name": "chelsea", "height": 64, "width": 64, "top": 40, "left": 120},
    {"name": "coffee", "height": 96, "width": 128, "top": 100, "left": 200},
    {"name": "astronaut", "height": 150, "width": 192, "top": 20, "left": 180},
]


@pytest.mark.django_db(transaction=True)
def test_image_jobs_settle_through_two_node_processes_with_ssim_above_tau(tmp_path):
    images = [sample_image(**crop) for crop in CROPS]
    pair = {name: defaults.IMAGE_SLUG for name in ("alice", "bob")}
    with running_market(tmp_path, contributors="alice,bob", nodes=pair) as (url, tokens, _):
        client = Client(url, tokens["demo-user"], timeout=30)
        results = [
            client.upscale(defaults.IMAGE_SLUG, png_encode(image), timeout=180, idempotency_key=f"img-{i}")
            for i, image in enumerate(images)
        ]

    tolerances = defaults.image_subnet_settings()["tolerances"]
    local = Upscaler.from_preprocessing(waifu2x_model(), defaults.image_subnet_settings()["preprocessing"])
    for image, result in zip(images, results, strict=True):
        height, width = image.shape[:2]
        assert result.pixels.shape == (2 * height, 2 * width, 3)
        receipt = result.receipt
        assert receipt["verification"]["path"] == "2-of-2"
        assert receipt["verification"]["metric"] == "ssim"
        assert receipt["verification"]["worst"] >= tolerances["ssim_min"]
        assert len({n["node_id"] for n in receipt["nodes"]}) == 2
        # What the nodes agreed on is what this machine's copy of the model computes.
        assert verify_image_pair(result.pixels, local(image), **tolerances).passed
    assert Job.objects.filter(state=JobState.SETTLED, subnet__slug=defaults.IMAGE_SLUG, user__username="demo-user").count() == len(CROPS)
    assert ledger_violations() == []

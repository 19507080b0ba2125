"""End to end for the image family: daphne, a real Celery worker (with beat) on Redis,
PostgreSQL, and two contributor node processes upscaling real photo crops with the
waifu2x UpConv7 model; the SDK returns receipt-verified images."""

from __future__ import annotations

import os
import uuid

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from bim_sdk import Client
from bim_site.processes import ProcessGroup, child_env, free_port
from contributor.node.upscaler import Upscaler
from ledger.checks import ledger_violations
from registry.families import png_encode
from registry.models import Job, JobState
from registry.verification import verify_image_pair
from subnets import defaults
from tests.images import sample_image, waifu2x_model

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# One tile, one tile with a short edge, and a 2 x 2 tiled image (tile 128).
CROPS = [
    {"name": "chelsea", "height": 64, "width": 64, "top": 40, "left": 120},
    {"name": "coffee", "height": 96, "width": 128, "top": 100, "left": 200},
    {"name": "astronaut", "height": 150, "width": 192, "top": 20, "left": 180},
]


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_image_jobs_settle_through_two_node_processes_with_ssim_above_tau(tmp_path, capsys):
    assert connection.vendor == "postgresql", "this test is about PostgreSQL + Redis"
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    with capsys.disabled():
        call_command("bim_seed", "--demo", "--contributors", "alice,bob", "--json", stdout=open(os.devnull, "w"))
    from rest_framework.authtoken.models import Token

    tokens = dict(Token.objects.values_list("user__username", "key"))
    env = child_env(
        DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL,
        BIM_CHANNEL_PREFIX=f"e2e{uuid.uuid4().hex[:8]}",
        BIM_ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        BIM_REGISTRY_KEY_PATH=str(settings.REGISTRY_KEY_PATH),
        BIM_NODE_HEARTBEAT_S="2",
    )
    images = [sample_image(**crop) for crop in CROPS]
    group = ProcessGroup(log_dir=tmp_path / "logs", env=env)
    try:
        url = group.start_registry(free_port())
        group.start_worker(beat=True)
        for name in ("alice", "bob"):
            group.start_node(name, registry=url, token=tokens[name], subnet=defaults.IMAGE_SLUG, state_dir=tmp_path / "nodes")
        client = Client(url, tokens["demo-user"], timeout=30)
        results = [
            client.upscale(defaults.IMAGE_SLUG, png_encode(image), timeout=180, idempotency_key=f"img-{i}")
            for i, image in enumerate(images)
        ]
    finally:
        group.stop()

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

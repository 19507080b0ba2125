"""The browser image family's ground truth (tests/js/fixtures/images.json: Pillow's PNG
decoding, the upscaler's tiling around a stand-in model, an image job's signed result) is
what bim_core produces today: regenerated in memory, it must equal the committed file, so
the JavaScript tests never check against stale bytes."""

from __future__ import annotations

import json

from tests.js.make_image_fixtures import FIXTURE, fixture_text


def test_the_committed_image_fixture_is_what_bim_core_produces() -> None:
    committed = FIXTURE.read_text(encoding="utf-8")
    fresh = fixture_text()
    assert json.loads(committed) == json.loads(fresh), "run: .venv/bin/python -m tests.js.make_image_fixtures"
    assert committed == fresh

"""The browser protocol module's ground truth (tests/js/fixtures/protocol.json) is what
bim_core produces today: regenerated in memory, it must equal the committed file, so the
JavaScript tests (tests/js/, `node --test`) never check against stale bytes."""

from __future__ import annotations

import json

from tests.js.make_fixtures import FIXTURE, fixture_text


def test_the_committed_js_fixture_is_what_bim_core_produces() -> None:
    committed = FIXTURE.read_text(encoding="utf-8")
    fresh = fixture_text()
    assert json.loads(committed) == json.loads(fresh), "run: .venv/bin/python -m tests.js.make_fixtures"
    assert committed == fresh

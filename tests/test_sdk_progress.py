"""`bim embed`'s progress bar: texts split into several jobs, the bar drawn on stderr while
they run, only for a terminal and never with --json, and stdout the same either way.

Against the real registry (pytest-django's live server), jobs settled in-process as
tests/test_sdk_cli.py settles them."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from typing import Any

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from registry.models import Job
from tests.factories import SubnetFactory, online_node, settle, unit_vectors, user_with_credits
from tests.test_sdk_cli import bim

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

TEXTS = [f"text number {i}" for i in range(5)]  # in jobs of 2: three jobs


class Terminal(io.StringIO):
    """stderr as a person's terminal: what is written to it is kept."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def market(live_server, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    user = user_with_credits(10)
    monkeypatch.setenv("BIM_URL", live_server.url)
    monkeypatch.setenv("BIM_TOKEN", Token.objects.create(user=user).key)
    subnet = SubnetFactory()
    return {"subnet": subnet, "nodes": [online_node(subnet) for _ in range(3)]}


def settle_jobs_when_submitted(market: dict[str, Any], count: int) -> threading.Thread:
    """Settle the subnet's jobs, oldest first, as the command under test submits them."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            done: set[Any] = set()
            deadline = time.monotonic() + 60
            while len(done) < count:
                assert time.monotonic() < deadline, f"the command submitted {len(done)} of {count} jobs"
                job = Job.objects.filter(subnet=market["subnet"]).exclude(pk__in=done).order_by("created_at").first()
                if job is None:
                    time.sleep(0.05)
                    continue
                vectors = unit_vectors(job.item_count, seed=len(done))
                settle(str(job.id), market["nodes"], vectors, vectors)
                done.add(job.pk)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.failures = failures  # type: ignore[attr-defined]
    thread.start()
    return thread


def embed_in_batches(market, capsys, stderr: io.StringIO | None, *options: str) -> tuple[int, str, str]:
    """`bim embed SUBNET TEXTS --batch-size 2 options`, stderr replaced by `stderr` if given
    (restored before capsys is torn down): (exit status, stdout, what went to stderr)."""
    settler = settle_jobs_when_submitted(market, count=3)
    with contextlib.redirect_stderr(stderr) if stderr is not None else contextlib.nullcontext():
        status, out, err = bim(capsys, "embed", market["subnet"].slug, *TEXTS, "--batch-size", "2", *options)
    settler.join(60)
    assert settler.failures == [], settler.failures  # type: ignore[attr-defined]
    return status, out, stderr.getvalue() if stderr is not None else err


def test_a_batch_shows_a_bar_on_a_terminal_and_prints_every_text(market, capsys):
    status, out, err = embed_in_batches(market, capsys, Terminal())

    assert status == 0, err
    assert Job.objects.filter(subnet=market["subnet"]).count() == 3
    assert sorted(Job.objects.values_list("item_count", flat=True)) == [1, 2, 2]
    # The bar counted the texts as their jobs settled, and showed the job it waited on.
    assert "5/5" in err and " texts" in err and "job 3: " in err
    assert "\r" not in out and "5/5" not in out
    lines = out.splitlines()
    assert sum(line.endswith("receipt verified") for line in lines) == 3
    assert [line.split(":")[0] for line in lines if not line.endswith("receipt verified")] == [repr(t) for t in TEXTS]


def test_no_bar_when_stderr_is_not_a_terminal(market, capsys):
    status, out, err = embed_in_batches(market, capsys, None)

    assert status == 0, err
    assert err == ""
    assert len(out.splitlines()) == 3 + len(TEXTS)


def test_json_gets_no_bar_even_on_a_terminal(market, capsys):
    status, out, err = embed_in_batches(market, capsys, Terminal(), "--json")

    assert status == 0, err
    assert err == ""
    jobs = json.loads(out)  # stdout is the JSON and nothing else
    assert [job["item_count"] for job in jobs] == [2, 2, 1]
    assert all(job["state"] == "settled" and job["receipt"] for job in jobs)

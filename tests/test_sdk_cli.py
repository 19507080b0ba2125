"""The `bim` command line against the real registry (pytest-django's live server on the test
database): what it prints, its exit statuses, and receipts it verifies offline.

Jobs are settled the way tests/registry/test_api.py settles them: two nodes' signed results
recorded and verified in-process, while the command waits on the registry over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from django.db import connection
from rest_framework.authtoken.models import Token

import bim_core.http
from bim_core import protocol
from bim_core.money import MICRO
from bim_sdk.cli import main
from bim_sdk.cli_errors import EXIT_AUTH, EXIT_RECEIPT_INVALID, EXIT_REFUSED, EXIT_UNREACHABLE
from registry.models import Job, NodeSubnet
from registry.submit import job_submit
from tests.factories import SubnetFactory, online_node, settle, unit_vectors, user_with_credits

pytestmark = pytest.mark.timeout(120)

TEXTS = ["a text the cli embeds", "and another"]


def bim(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `bim argv...` in-process: (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse: --help and usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bim_core.http.time, "sleep", lambda _s: None)


@pytest.fixture
def market(live_server, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The registry at $BIM_URL, a user with 10 credits whose token is $BIM_TOKEN, and an
    embedding subnet with three online nodes."""
    user = user_with_credits(10)
    token = Token.objects.create(user=user).key
    monkeypatch.setenv("BIM_URL", live_server.url)
    monkeypatch.setenv("BIM_TOKEN", token)
    subnet = SubnetFactory()
    return {"url": live_server.url, "token": token, "subnet": subnet, "nodes": [online_node(subnet) for _ in range(3)]}


def settle_when_submitted(market: dict[str, Any], vectors: np.ndarray) -> threading.Thread:
    """Settle the next job on the market's subnet as soon as the registry has it: the
    command under test submits it and then waits for settlement over HTTP."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            deadline = time.monotonic() + 30
            while (job := Job.objects.filter(subnet=market["subnet"]).first()) is None:
                assert time.monotonic() < deadline, "the command submitted no job"
                time.sleep(0.05)
            settle(str(job.id), market["nodes"], vectors, vectors)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
        finally:
            connection.close()  # this thread's own connection, or the test database stays in use

    thread = threading.Thread(target=run, daemon=True)
    thread.failures = failures  # type: ignore[attr-defined]
    thread.start()
    return thread


def settled_job_file(market: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    """A real settled job, as `bim job ID --json` prints it, in a file."""
    vectors = unit_vectors(len(TEXTS), seed=5)
    settler = settle_when_submitted(market, vectors)
    status, out, err = bim(capsys, "embed", market["subnet"].slug, *TEXTS, "--json")
    settler.join(30)
    assert settler.failures == [] and status == 0, err  # type: ignore[attr-defined]
    job_id = json.loads(out)["id"]

    status, out, err = bim(capsys, "job", job_id, "--json")
    assert status == 0, err
    path = tmp_path / "job.json"
    path.write_text(out)
    return path


def registry_key(market: dict[str, Any]) -> str:
    return requests.get(market["url"] + "/api/v1/registry/", timeout=10).json()["receipt_key"]


# ---------------------------------------------------------------- help and usage


def test_help_names_every_command(capsys):
    status, out, _ = bim(capsys, "--help")

    assert status == 0
    for command in (
        "login", "logout", "embed", "generate", "upscale", "job", "jobs", "cancel", "subnets", "balance", "verify", "receipt"
    ):
        assert f"    {command}" in out
    assert "$BIM_URL" in out and "$BIM_TOKEN" in out and "5 the key was refused" in out


def test_receipt_verify_has_its_own_help(capsys):
    status, out, _ = bim(capsys, "receipt", "verify", "--help")

    assert status == 0
    assert "FILE.json" in out and "--registry-key" in out


def test_a_call_without_a_url_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("BIM_URL", raising=False)
    monkeypatch.setenv("BIM_TOKEN", "t")

    status, _, err = bim(capsys, "balance")

    assert status == 2
    assert "no registry URL: run `bim login`, or give --url or $BIM_URL" in err


def test_an_unreachable_registry_exits_3(capsys, no_backoff):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    status, out, _ = bim(capsys, "balance", "--url", url, "--token", "t", "--json")

    assert status == EXIT_UNREACHABLE
    assert json.loads(out)["error"]["code"] == "unreachable"


# ---------------------------------------------------------------- the registry's answers


@pytest.mark.django_db(transaction=True)
def test_balance_reads_url_and_token_from_the_environment(market, capsys):
    status, out, err = bim(capsys, "balance", "--json")

    assert status == 0, err
    assert json.loads(out)["credits_micro"] == 10 * MICRO


@pytest.mark.django_db(transaction=True)
def test_a_refused_call_exits_1_with_the_registrys_code(market, capsys):
    status, out, err = bim(capsys, "embed", "no-such-subnet", "hello")

    assert status == EXIT_REFUSED
    assert out == ""
    assert err.startswith("bim: HTTP 404 unknown_subnet: ")

    status, out, _ = bim(capsys, "embed", "no-such-subnet", "hello", "--json")

    assert status == EXIT_REFUSED
    assert json.loads(out)["error"] == {"code": "unknown_subnet", "status": 404, "detail": "jobs[0]: no active subnet 'no-such-subnet'"}


@pytest.mark.django_db(transaction=True)
def test_a_wrong_token_exits_5(market, capsys):
    status, _, err = bim(capsys, "balance", "--token", "not-a-token")

    assert status == EXIT_AUTH
    assert err.startswith("bim: HTTP 401 ")


@pytest.mark.django_db(transaction=True)
def test_embed_prints_the_receipt_verified_vectors(market, capsys):
    vectors = unit_vectors(len(TEXTS), seed=9)
    settler = settle_when_submitted(market, vectors)

    status, out, err = bim(capsys, "embed", market["subnet"].slug, *TEXTS)
    settler.join(30)

    assert settler.failures == [], settler.failures
    assert status == 0, err
    first_line, *rows = out.splitlines()
    assert first_line.endswith("receipt verified")
    assert len(rows) == len(TEXTS)
    assert rows[0].startswith(f"{TEXTS[0]!r}: [{vectors[0][0]:.4f}, ")
    assert rows[0].endswith("(384 dims)")


@pytest.mark.django_db(transaction=True)
def test_embed_takes_texts_from_a_file_and_jobs_lists_them(market, capsys, tmp_path):
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n")
    settler = settle_when_submitted(market, unit_vectors(len(TEXTS), seed=9))
    status, out, err = bim(capsys, "embed", market["subnet"].slug, "--file", str(texts_file))
    settler.join(30)
    assert status == 0, err
    assert len(out.splitlines()) == 1 + len(TEXTS)  # the blank line is skipped

    status, out, _ = bim(capsys, "jobs", "--json")
    listed = json.loads(out)
    assert status == 0 and listed["count"] == 1 and listed["results"][0]["state"] == "settled"


@pytest.mark.django_db(transaction=True)
def test_subnets_shows_capacity_and_cancel_releases_a_queued_job(market, capsys):
    status, out, _ = bim(capsys, "subnets")
    assert status == 0 and f"{market['subnet'].slug}" in out and "nodes 3/3 ready/online" in out

    # The nodes stay online but stop taking jobs (fetching a new model, say): a job waits queued.
    NodeSubnet.objects.filter(subnet=market["subnet"]).update(ready_at=None)
    user = Token.objects.get(key=market["token"]).user
    job, _ = job_submit(user=user, subnet_slug=market["subnet"].slug, inputs={"texts": TEXTS}, idempotency_key="q")
    assert Job.objects.get(pk=job.pk).state == "queued"
    status, out, _ = bim(capsys, "cancel", str(job.id), "--json")
    assert status == 0 and json.loads(out)["failure_reason"] == "cancelled by its user"
    status, _, err = bim(capsys, "cancel", str(job.id))
    assert status == EXIT_REFUSED and "job_not_queued" in err


# ---------------------------------------------------------------- receipts, offline


@pytest.mark.django_db(transaction=True)
def test_receipt_verify_accepts_a_real_receipt(market, capsys, tmp_path):
    path = settled_job_file(market, capsys, tmp_path)
    key = registry_key(market)
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"texts": TEXTS}))

    status, out, err = bim(capsys, "receipt", "verify", str(path), "--registry-key", key, "--inputs", str(inputs), "--json")

    assert status == 0, err
    checked = json.loads(out)
    assert checked["valid"] is True
    assert checked["job_id"] == json.loads(path.read_text())["id"]
    assert checked["registry_key"] == key and checked["registry_key_given"] and checked["inputs_checked"]
    assert len(checked["nodes"]) == 2

    # Without a key it checks against the one the receipt names, and says so (`bim verify`
    # is `bim receipt verify`).
    status, out, _ = bim(capsys, "verify", str(path))
    assert status == 0
    assert out.startswith("receipt valid: job ")
    assert "pass --registry-key" in out


@pytest.mark.django_db(transaction=True)
def test_receipt_verify_rejects_a_tampered_receipt(market, capsys, tmp_path):
    path = settled_job_file(market, capsys, tmp_path)
    key = registry_key(market)
    job = json.loads(path.read_text())
    job["result"]["vectors"][0][3] += 1e-3
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(job))

    status, out, err = bim(capsys, "receipt", "verify", str(tampered), "--registry-key", key)

    assert status == EXIT_RECEIPT_INVALID
    assert out == ""
    assert "receipt_invalid: delivered result does not hash to the receipt's result_hash" in err


@pytest.mark.django_db(transaction=True)
def test_receipt_verify_rejects_another_registry_key_and_other_inputs(market, capsys, tmp_path):
    path = settled_job_file(market, capsys, tmp_path)
    other_key = protocol.public_key_b64(protocol.new_private_key())
    other_inputs = tmp_path / "inputs.json"
    other_inputs.write_text(json.dumps({"texts": [TEXTS[0], "swapped"]}))

    status, _, err = bim(capsys, "receipt", "verify", str(path), "--registry-key", other_key)
    assert status == EXIT_RECEIPT_INVALID
    assert "signed by another key" in err

    status, _, err = bim(capsys, "receipt", "verify", str(path), "--inputs", str(other_inputs))
    assert status == EXIT_RECEIPT_INVALID
    assert "these inputs are not the job's inputs" in err


def test_receipt_verify_rejects_a_file_that_is_no_job(capsys, tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"state": "settled", "receipt": {"registry_key": "x"}}))

    status, _, err = bim(capsys, "receipt", "verify", str(path))

    assert status == EXIT_RECEIPT_INVALID
    assert err.startswith("bim: receipt_invalid: ")

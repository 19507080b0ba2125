"""The SDK client against a real local HTTP server: what it retries, how often, with which
idempotency key, and what it raises. No database."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

import bim_core.http
from bim_core import protocol
from bim_sdk import BimError, Client

TOKEN = "t0ken"


@dataclass
class Script:
    """What the server answers: `failures` in order (a status with a JSON body, a status
    with a text body, or "drop" to close the connection without answering), then `final`."""

    failures: list[Any] = field(default_factory=list)
    final: tuple[int, Any] = (201, {"id": "job-1", "state": "queued"})
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self) -> Any:
        with self.lock:
            return self.failures.pop(0) if self.failures else self.final


@dataclass
class Server:
    url: str
    script: Script

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.script.requests


@pytest.fixture
def server() -> Iterator[Server]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            script.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(raw) if raw else None,
                }
            )
            answer = script.next_answer()
            if answer == "drop":
                self.close_connection = True
                return  # no status line: the client sees the connection end
            status, body = answer
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(url=f"http://127.0.0.1:{httpd.server_address[1]}", script=script)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Backoff sleeps the client asked for, without waiting them out."""
    asked: list[float] = []
    monkeypatch.setattr(bim_core.http.time, "sleep", asked.append)
    return asked


def client(server_url: str, *, retries: int = 4) -> Client:
    return Client(server_url + "/", TOKEN, timeout=5.0, retries=retries, backoff=0.1)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- retried answers


def test_a_post_is_retried_through_503s_with_the_same_idempotency_key(server, sleeps):
    server.script.failures = [(503, {"code": "overloaded", "detail": "busy"})] * 3

    job = client(server.url).submit_embeddings("embed-0", ["a", "b"])

    assert job == {"id": "job-1", "state": "queued"}
    assert len(server.requests) == 4
    keys = {r["body"]["idempotency_key"] for r in server.requests}
    assert len(keys) == 1 and next(iter(keys))
    assert all(r["method"] == "POST" and r["path"] == "/api/v1/jobs/" for r in server.requests)
    assert all(r["body"] == server.requests[0]["body"] for r in server.requests)
    assert all(r["authorization"] == f"Token {TOKEN}" for r in server.requests)
    assert sleeps == [0.1, 0.2, 0.4]


def test_a_callers_idempotency_key_is_sent_unchanged_on_every_retry(server, sleeps):
    server.script.failures = [(502, "bad gateway"), (504, "timeout"), (429, {"code": "throttled"})]

    client(server.url).submit_embeddings("embed-0", ["a"], idempotency_key="order-17")

    assert [r["body"]["idempotency_key"] for r in server.requests] == ["order-17"] * 4


def test_two_submissions_get_different_generated_keys(server, sleeps):
    sdk = client(server.url)
    sdk.submit_embeddings("embed-0", ["a"])
    sdk.submit_embeddings("embed-0", ["a"])
    first, second = (r["body"]["idempotency_key"] for r in server.requests)
    assert first != second


def test_a_get_is_retried_too(server, sleeps):
    server.script.failures = [(503, "busy")]
    server.script.final = (200, {"id": "job-1", "state": "settled"})

    assert client(server.url).job("job-1")["state"] == "settled"
    assert [r["path"] for r in server.requests] == ["/api/v1/jobs/job-1/"] * 2


def test_retries_are_bounded_and_the_last_answer_is_raised(server, sleeps):
    server.script.failures = [(503, {"code": "overloaded", "detail": "busy"})] * 10

    with pytest.raises(BimError) as raised:
        client(server.url, retries=2).submit_embeddings("embed-0", ["a"])

    assert (raised.value.status, raised.value.code, raised.value.detail) == (503, "overloaded", "busy")
    assert len(server.requests) == 3
    assert len(sleeps) == 2


def test_a_final_error_without_a_json_body_still_raises_bim_error(server, sleeps):
    server.script.failures = [(503, "upstream down")] * 10

    with pytest.raises(BimError) as raised:
        client(server.url, retries=1).balance()

    assert raised.value.status == 503
    assert raised.value.code == "error"
    assert "upstream down" in raised.value.detail


# ---------------------------------------------------------------- client errors are final


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_input"),
        (401, "not_authenticated"),
        (402, "insufficient_credits"),
        (404, "unknown_subnet"),
        (409, "idempotency_conflict"),
    ],
)
def test_a_4xx_raises_bim_error_at_once(server, sleeps, status, code):
    server.script.failures = [(status, {"code": code, "detail": "refused"})]

    with pytest.raises(BimError) as raised:
        client(server.url).submit_embeddings("embed-0", ["a"])

    assert (raised.value.status, raised.value.code, raised.value.detail) == (status, code, "refused")
    assert len(server.requests) == 1
    assert sleeps == []


# ---------------------------------------------------------------- connection errors


def test_a_dropped_connection_is_retried_with_the_same_key(server, sleeps):
    server.script.failures = ["drop", "drop"]

    job = client(server.url).submit_embeddings("embed-0", ["a"])

    assert job["id"] == "job-1"
    assert len(server.requests) == 3
    assert len({r["body"]["idempotency_key"] for r in server.requests}) == 1
    assert sleeps == [0.1, 0.2]


def test_dropped_connections_are_retried_a_bounded_number_of_times(server, sleeps):
    server.script.failures = ["drop"] * 10

    with pytest.raises(requests.ConnectionError):
        client(server.url, retries=3).submit_embeddings("embed-0", ["a"])

    assert len(server.requests) == 4
    assert sleeps == [0.1, 0.2, 0.4]


def test_a_refused_connection_is_retried_then_raised(sleeps):
    with pytest.raises(requests.ConnectionError):
        client(f"http://127.0.0.1:{unused_port()}", retries=2).balance()
    assert sleeps == [0.1, 0.2]


def test_without_retries_a_connection_error_is_raised_at_once(sleeps):
    with pytest.raises(requests.ConnectionError):
        client(f"http://127.0.0.1:{unused_port()}", retries=0).balance()
    assert sleeps == []


# ---------------------------------------------------------------- API keys and batches


def test_an_api_key_goes_as_bearer_and_a_token_as_token(server):
    server.script.final = (200, {"credits_micro": 1})

    Client(server.url, "bim_abc").balance()
    Client(server.url, "40hexdigitsofadrftoken").balance()

    assert [r["authorization"] for r in server.requests] == ["Bearer bim_abc", "Token 40hexdigitsofadrftoken"]


def test_texts_are_split_into_jobs_with_keys_derived_from_one(server):
    server.script.final = (201, {"jobs": [{"id": f"job-{i}", "state": "queued"} for i in range(3)]})

    client(server.url).embed_many("embed-0", ["a", "b", "c", "d", "e"], batch_size=2, idempotency_key="run-7")

    # Submitted at once, in one batch request, before any is waited on (the results are an
    # iterator not yet read).
    assert [(r["method"], r["path"]) for r in server.requests] == [("POST", "/api/v1/jobs/batch/")]
    jobs = server.requests[0]["body"]["jobs"]
    assert [job["inputs"]["texts"] for job in jobs] == [["a", "b"], ["c", "d"], ["e"]]
    assert [job["idempotency_key"] for job in jobs] == ["run-7:0", "run-7:1", "run-7:2"]


def test_a_refused_batch_cancels_the_jobs_already_submitted(server, monkeypatch):
    monkeypatch.setattr(protocol, "JOBS_PER_BATCH_MAX", 2)  # two requests for three jobs
    server.script.failures = [
        (201, {"jobs": [{"id": "job-1", "state": "queued"}, {"id": "job-2", "state": "queued"}]}),
        (402, {"code": "insufficient_credits", "detail": "not enough credits"}),
        (200, {"id": "job-1", "state": "failed"}),
        (200, {"id": "job-2", "state": "failed"}),
    ]

    with pytest.raises(BimError) as refused:
        client(server.url).embed_many("embed-0", ["a", "b", "c"], batch_size=1)

    assert (refused.value.status, refused.value.code) == (402, "insufficient_credits")
    assert [(r["method"], r["path"]) for r in server.requests] == [
        ("POST", "/api/v1/jobs/batch/"),
        ("POST", "/api/v1/jobs/batch/"),
        ("POST", "/api/v1/jobs/job-1/cancel/"),
        ("POST", "/api/v1/jobs/job-2/cancel/"),
    ]

"""HTTP client for the BIM API."""

from __future__ import annotations

import io
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bim_core import protocol
from bim_core.http import HttpClient, HttpError
from bim_core.job_inputs import InputInvalid
from bim_core.png import png_encode, png_size

from . import p2p
from .receipts import delivered_result, verify_receipt
from .results import EmbeddingResult, ImageResult, TextDelta, TextResult

TERMINAL = {"settled", "failed", "expired"}
# API keys from /developer/ start so and go as `Authorization: Bearer`; anything else is a
# DRF token (`Authorization: Token`), as the registry's own pages and tests hand out.
API_KEY_PREFIX = "bim_"
# A subnet's default max_items_per_job (subnets.models.Subnet): the batch size of embed_many.
DEFAULT_BATCH_SIZE = 64

# Called with the job each time it is polled while waiting (a progress bar redraws on it).
OnPoll = Callable[[dict[str, Any]], None]


class BimError(HttpError):
    """The API refused a request (`status`, and its `code` and `detail`), or a job ended
    unsettled (status 409, code `job_failed` or `job_expired`)."""


DATA_TERMS_REFUSAL = "data_terms_not_acknowledged"


class DataTermsNotAcknowledged(BimError):
    """A job was refused (403) because you have not acknowledged the subnet's data-handling
    terms (contributors see your jobs' inputs and outputs). Read them at `terms_url` (or
    `Client.data_terms`), then `Client.acknowledge_data_terms(subnet, version)`, or in a
    browser at `acknowledge_url`, and submit again."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(status, code, detail)
        self.body = body
        self.subnet: str = str(body.get("subnet", ""))
        self.terms_version: int | None = body.get("terms_version")
        self.terms_url: str = str(body.get("terms_url", ""))
        self.acknowledge_url: str = str(body.get("acknowledge_url", ""))


class Client:
    """Every write carries an idempotency key, so retrying after a timeout or a dropped
    connection never submits (or pays for) a job twice. Connection errors, timeouts, 5xx
    and 429 are retried `retries` times with exponential backoff (`bim_core.http`); when
    the last try gets no answer, its `requests` exception is raised as it is."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.25,
        registry_key: str | None = None,
    ) -> None:
        scheme = "Bearer" if token.startswith(API_KEY_PREFIX) else "Token"
        self.http = HttpClient(
            base_url, token, timeout=timeout, retries=retries, backoff_s=backoff, error=BimError, auth_scheme=scheme
        )
        self._registry_key = registry_key

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self.http.request(method, path, **kwargs).json()
        except BimError as exc:
            if exc.code == DATA_TERMS_REFUSAL:
                # Links relative to the registry are made absolute: a user can open them.
                body = {
                    **exc.body,
                    **{k: self.http.url(v) for k, v in exc.body.items() if k.endswith("_url") and isinstance(v, str)},
                }
                raise DataTermsNotAcknowledged(exc.status, exc.code, exc.detail, body) from None
            raise

    def data_terms(self, subnet: str) -> dict[str, Any]:
        """The subnet's data-handling terms (`text`, `version`, `summary`) and when you
        acknowledged this version (`acknowledged_at`, None: your jobs there are refused)."""
        return self._request("GET", f"/api/v1/subnets/{subnet}/data-terms/")

    def acknowledge_data_terms(self, subnet: str, version: int) -> dict[str, Any]:
        """Acknowledge the version of the subnet's terms you read (`data_terms`); a stale
        version is refused (409 data_terms_version_mismatch: read them again)."""
        return self._request("POST", f"/api/v1/subnets/{subnet}/data-terms/", json={"version": version})

    def withdraw_data_terms(self, subnet: str) -> dict[str, Any]:
        """Withdraw your acknowledgement: your next job on the subnet is refused."""
        return self._request("DELETE", f"/api/v1/subnets/{subnet}/data-terms/")

    def registry_key(self) -> str:
        if self._registry_key is None:
            self._registry_key = self._request("GET", "/api/v1/registry/")["receipt_key"]
        return self._registry_key

    def submit(
        self, subnet: str, inputs: dict[str, Any], *, idempotency_key: str | None = None, transport: str = "relay"
    ) -> dict[str, Any]:
        """Submit a job with inputs as the subnet's task family takes them; the same
        idempotency key (a fresh one when none is given) makes retries safe. With transport
        "p2p" the registry gets only the inputs' hash and summary (docs/p2p.md): bring the
        inputs to the job's nodes with `p2p_events`."""
        body: dict[str, Any] = {"subnet": subnet, "idempotency_key": idempotency_key or str(uuid.uuid4())}
        if transport == "p2p":
            summary = p2p.family_of_inputs(inputs).input_summary(inputs)
            body.update(transport="p2p", input_hash=protocol.input_hash(inputs), input_summary=summary)
        elif transport == "relay":
            body["inputs"] = inputs
        else:
            raise ValueError(f"transport is relay or p2p, not {transport!r}")
        return self._request("POST", "/api/v1/jobs/", json=body)

    def p2p_events(
        self,
        job: dict[str, Any],
        inputs: dict[str, Any],
        *,
        timeout: float = 120.0,
        connect_timeout: float = p2p.DEFAULT_CONNECT_TIMEOUT_S,
        relay_fallback: bool = True,
    ) -> Iterator[p2p.Partial | p2p.Outcome]:
        """Bring a submitted peer-to-peer job's inputs to its nodes over data channels and
        receive their results (bim_sdk.p2p): yields streamed text (`p2p.Partial`, unverified)
        and ends with the `p2p.Outcome` once the job is settled, failed or expired. A node
        whose channel does not open within `connect_timeout` s sends the inputs through the
        registry after all (`relay_fallback`; off: BimError no_peer_connection)."""
        try:
            yield from p2p.exchange_events(
                self._request,
                ws_url=p2p.user_socket_url(self.http.base_url, self.http.token),
                job=job,
                inputs=inputs,
                timeout=timeout,
                connect_timeout=connect_timeout,
                relay_fallback=relay_fallback,
            )
        except p2p.PeerRefused as exc:
            raise BimError(exc.status, exc.code, exc.detail) from None

    def _p2p_run(self, subnet: str, inputs: dict[str, Any], key: str | None, options: dict[str, Any]) -> p2p.Outcome:
        job = self.submit(subnet, inputs, idempotency_key=key, transport="p2p")
        return deque(self.p2p_events(job, inputs, **options), maxlen=1)[0]  # type: ignore[return-value]

    def _p2p_verified(self, outcome: p2p.Outcome, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """The settled job and its receipt-verified result; a result that came only over a
        channel is checked as received and written into the job as the registry would."""
        job = outcome.job
        if job["state"] != "settled":
            raise BimError(409, f"job_{job['state']}", job.get("failure_reason") or job["state"])
        payload = outcome.payload_for(str((job.get("receipt") or {}).get("result_hash", "")))
        result = verify_receipt(job, registry_key=self.registry_key(), inputs=inputs, payload=payload)
        if job.get("result") is None:
            job = {**job, "result": delivered_result(job, result)}
        return job, result

    def submit_many(
        self, subnet: str, inputs: list[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> list[dict[str, Any]]:
        """Submit many jobs through the batch endpoint, protocol.JOBS_PER_BATCH_MAX per
        request, each request all or none. Job i's key is `<key>:<i>`, so a retry of the
        whole call (or a resumed one with the same key) returns the jobs already submitted
        instead of paying twice. Returns each job's summary (id, state, price_micro,
        created, ...) in `inputs` order."""
        key = idempotency_key or str(uuid.uuid4())
        jobs: list[dict[str, Any]] = []
        for start in range(0, len(inputs), protocol.JOBS_PER_BATCH_MAX):
            part = inputs[start : start + protocol.JOBS_PER_BATCH_MAX]
            jobs.extend(self._submit_batch(subnet, part, key=key, first=start))
        return jobs

    def _submit_batch(self, subnet: str, inputs: list[dict[str, Any]], *, key: str, first: int) -> list[dict[str, Any]]:
        body = {
            "jobs": [
                {"subnet": subnet, "inputs": item, "idempotency_key": f"{key}:{first + i}"} for i, item in enumerate(inputs)
            ]
        }
        return self._request("POST", "/api/v1/jobs/batch/", json=body)["jobs"]

    def submit_embeddings(self, subnet: str, texts: list[str], *, idempotency_key: str | None = None) -> dict[str, Any]:
        return self.submit(subnet, {"texts": texts}, idempotency_key=idempotency_key)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v1/jobs/{job_id}/")

    def jobs(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._request("GET", "/api/v1/jobs/", params={"limit": limit, "offset": offset})

    def subnets(self) -> list[dict[str, Any]]:
        """The active subnets, each with its market now (nodes online and routable, jobs
        waiting, a wait estimate)."""
        return self._request("GET", "/api/v1/subnets/")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job no node was offered yet; its hold is released."""
        return self._request("POST", f"/api/v1/jobs/{job_id}/cancel/")

    def balance(self) -> dict[str, int]:
        return self._request("GET", "/api/v1/balance/")

    def stream(
        self, job_id: str, *, timeout: float = 120.0, poll: float = 0.2, on_poll: OnPoll | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield the job each time its state changes, ending with a terminal state."""
        deadline = time.monotonic() + timeout
        last_state = None
        while True:
            job = self.job(job_id)
            if on_poll is not None:
                on_poll(job)
            if job["state"] != last_state:
                last_state = job["state"]
                yield job
            if job["state"] in TERMINAL:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(poll)

    def wait(
        self, job_id: str, *, timeout: float = 120.0, poll: float = 0.2, on_poll: OnPoll | None = None
    ) -> dict[str, Any]:
        # The last state the stream yields is the terminal one.
        return deque(self.stream(job_id, timeout=timeout, poll=poll, on_poll=on_poll), maxlen=1)[0]

    def embed(
        self,
        subnet: str,
        texts: list[str],
        *,
        timeout: float = 120.0,
        idempotency_key: str | None = None,
        on_poll: OnPoll | None = None,
        transport: str = "relay",
        connect_timeout: float = p2p.DEFAULT_CONNECT_TIMEOUT_S,
    ) -> EmbeddingResult:
        """Submit, wait for settlement and return receipt-verified vectors. With transport
        "p2p" the texts go to the nodes over data channels, never to the registry."""
        if transport == "p2p":
            inputs = {"texts": texts}
            outcome = self._p2p_run(subnet, inputs, idempotency_key, {"timeout": timeout, "connect_timeout": connect_timeout})
            job, vectors = self._p2p_verified(outcome, inputs)
            return EmbeddingResult(job=job, vectors=vectors, p2p=outcome)
        job_id = self.submit_embeddings(subnet, texts, idempotency_key=idempotency_key)["id"]
        return self._embedding_result(job_id, texts, timeout=timeout, on_poll=on_poll)

    def embed_many(
        self,
        subnet: str,
        texts: list[str],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout: float = 120.0,
        idempotency_key: str | None = None,
        on_poll: OnPoll | None = None,
    ) -> Iterator[EmbeddingResult]:
        """Embed more texts than one job takes: split them into jobs of `batch_size`, submit
        them all (so they run side by side; the key of job i is `<key>:<i>`), then yield each
        one's receipt-verified result in the texts' order. If the registry refuses a job
        (credits run out), those already submitted are cancelled where still queued and the
        refusal is raised. `timeout` is per job, counted from when its wait starts."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        key = idempotency_key or str(uuid.uuid4())
        job_ids: list[str] = []
        try:
            for start in range(0, len(batches), protocol.JOBS_PER_BATCH_MAX):
                part = batches[start : start + protocol.JOBS_PER_BATCH_MAX]
                submitted = self._submit_batch(subnet, [{"texts": b} for b in part], key=key, first=start)
                job_ids.extend(job["id"] for job in submitted)
        except BimError:
            for job_id in job_ids:
                try:
                    self.cancel(job_id)
                except BimError:
                    pass  # already offered to nodes: it runs on (409 job_not_queued)
            raise
        return (
            self._embedding_result(job_id, batch, timeout=timeout, on_poll=on_poll)
            for job_id, batch in zip(job_ids, batches, strict=True)
        )

    def _embedding_result(self, job_id: str, texts: list[str], *, timeout: float, on_poll: OnPoll | None) -> EmbeddingResult:
        job = self.wait(job_id, timeout=timeout, on_poll=on_poll)
        if job["state"] != "settled":
            raise BimError(409, f"job_{job['state']}", job.get("failure_reason") or job["state"])
        vectors = verify_receipt(job, registry_key=self.registry_key(), inputs={"texts": texts})
        return EmbeddingResult(job=job, vectors=vectors)

    def upscale(
        self,
        subnet: str,
        png: bytes,
        *,
        timeout: float = 120.0,
        idempotency_key: str | None = None,
        on_poll: OnPoll | None = None,
        transport: str = "relay",
        connect_timeout: float = p2p.DEFAULT_CONNECT_TIMEOUT_S,
    ) -> ImageResult:
        """Submit an image to a 2x super-resolution subnet, wait for settlement and return
        the receipt-verified result. The subnet takes 8-bit RGB PNGs: any other image
        Pillow reads (palette, grey, alpha, 16-bit, JPEG) is converted first, alpha dropped."""
        inputs = {"image": protocol.b64encode(_rgb_png(png))}
        if transport == "p2p":
            outcome = self._p2p_run(subnet, inputs, idempotency_key, {"timeout": timeout, "connect_timeout": connect_timeout})
            job, pixels = self._p2p_verified(outcome, inputs)
            return ImageResult(job=job, pixels=pixels, png=protocol.b64decode(job["result"]["image"]), p2p=outcome)
        job_id = self.submit(subnet, inputs, idempotency_key=idempotency_key)["id"]
        job = self.wait(job_id, timeout=timeout, on_poll=on_poll)
        if job["state"] != "settled":
            raise BimError(409, f"job_{job['state']}", job.get("failure_reason") or job["state"])
        pixels = verify_receipt(job, registry_key=self.registry_key(), inputs=inputs)
        return ImageResult(job=job, pixels=pixels, png=protocol.b64decode(job["result"]["image"]))

    def generate(
        self,
        subnet: str,
        prompt: str,
        max_tokens: int,
        *,
        stream: bool = False,
        timeout: float = 120.0,
        poll: float = 0.1,
        idempotency_key: str | None = None,
        transport: str = "relay",
        connect_timeout: float = p2p.DEFAULT_CONNECT_TIMEOUT_S,
    ) -> TextResult | Iterator[TextDelta | TextResult]:
        """Generate text on a text subnet. Without `stream`, wait and return the
        receipt-verified result. With it, return an iterator of `TextDelta`s (the text a
        node streams, unverified) ending with the verified `TextResult`; the deltas are
        a preview and may differ from the verified text, which is the only answer paid for."""
        inputs = {"prompt": prompt, "max_tokens": max_tokens}
        if transport == "p2p":
            job = self.submit(subnet, inputs, idempotency_key=idempotency_key, transport="p2p")
            events = self._p2p_generate_events(job, inputs, timeout=timeout, connect_timeout=connect_timeout)
        else:
            job_id = self.submit(subnet, inputs, idempotency_key=idempotency_key)["id"]
            events = self._generate_events(job_id, inputs, timeout=timeout, poll=poll)
        if stream:
            return events
        return deque(events, maxlen=1)[0]

    def _generate_events(
        self, job_id: str, inputs: dict[str, Any], *, timeout: float, poll: float
    ) -> Iterator[TextDelta | TextResult]:
        deadline = time.monotonic() + timeout
        shown = ""
        while True:
            job = self.job(job_id)
            if job["state"] in TERMINAL:
                break
            partial = (job.get("partial") or {}).get("text", "")
            # Only growth is shown: when the stream switches to the other node (or a
            # replacement), its text may not extend what was shown, and is skipped.
            if partial.startswith(shown) and len(partial) > len(shown):
                yield TextDelta(partial[len(shown) :])
                shown = partial
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")
            time.sleep(poll)
        if job["state"] != "settled":
            raise BimError(409, f"job_{job['state']}", job.get("failure_reason") or job["state"])
        result = verify_receipt(job, registry_key=self.registry_key(), inputs=inputs)
        yield TextResult(job=job, text=result["text"], tokens=list(result["tokens"]), finish=result["finish"])

    def _p2p_generate_events(
        self, job: dict[str, Any], inputs: dict[str, Any], **options: Any
    ) -> Iterator[TextDelta | TextResult]:
        shown = ""
        for event in self.p2p_events(job, inputs, **options):
            if isinstance(event, p2p.Partial):
                # As from the relay: only growth is shown (the two nodes stream side by side).
                if event.text.startswith(shown) and len(event.text) > len(shown):
                    yield TextDelta(event.text[len(shown) :])
                    shown = event.text
                continue
            settled, result = self._p2p_verified(event, inputs)
            yield TextResult(settled, result["text"], list(result["tokens"]), result["finish"], p2p=event)


def _rgb_png(image: bytes) -> bytes:
    """An 8-bit RGB PNG goes as it is (its base64 is the input the receipt hashes); any other
    image is converted once, here, so the user can check the receipt against what was sent."""
    try:
        png_size(image)
        return image
    except InputInvalid:
        from PIL import Image

        with Image.open(io.BytesIO(image)) as opened:
            return png_encode(np.asarray(opened.convert("RGB")))

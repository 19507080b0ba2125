"""The one retrying HTTP client both clients talk to the registry with (the SDK and the node).

Requests go to a base URL with the API token; connection errors, timeouts, 5xx and 429 are
retried a bounded number of times with exponential backoff; any other error status, or the
last retried one, raises a typed `HttpError` carrying the status and the registry's JSON
`code` and `detail`. Each client names its own subclass (`bim_sdk.BimError`,
`bim_node.registry_api.RegistryError`) so its callers keep catching what they always caught.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

# No answer at all: the request may never have arrived. Retrying a write is safe only when
# the caller made it so (the SDK sends every job with an idempotency key).
RETRY_EXCEPTIONS = (requests.ConnectionError, requests.Timeout)


class HttpError(Exception):
    """The registry answered with an error status (after any retries)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(status, code, detail)
        self.status = status
        self.code = code
        self.detail = detail
        # The whole error body: a refusal may carry more than code and detail (links).
        self.body: dict[str, Any] = {}

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.detail}"


class HttpClient:
    """`request(method, path)` against `base_url`, retried, raising `error` for error answers.

    A path that is an absolute URL (a CDN serving model chunks) is used as it is, and the
    token goes only to the registry's own origin, never to another host. `auth_scheme` is
    how it goes: `Token` (DRF's tokens, the node's) or `Bearer` (an API key, `bim_…`).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | tuple[float, float] = 10.0,
        retries: int = 4,
        backoff_s: float = 0.25,
        error: type[HttpError] = HttpError,
        session: requests.Session | None = None,
        auth_scheme: str = "Token",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.auth_scheme = auth_scheme
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.error = error
        self.session = session or requests.Session()

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + "/" + path.lstrip("/")

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send `method path` (kwargs as for `requests`: json, params) and return the answer.

        Raises `self.error` for an error status that is final or the last one retried, and
        the `requests` connection error or timeout when the last try got no answer at all.
        """
        url = self.url(path)
        headers = {"Accept": "application/json"}
        if _same_origin(url, self.base_url):
            headers["Authorization"] = f"{self.auth_scheme} {self.token}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
            except RETRY_EXCEPTIONS as exc:
                if last:
                    raise
                failure = type(exc).__name__
            else:
                if response.status_code < 400:
                    return response
                if last or not retryable(response.status_code):
                    error = self.error(response.status_code, *error_code_and_detail(response))
                    error.body = _json_object(response)
                    raise error
                failure = f"HTTP {response.status_code}"
            delay = self.backoff_s * 2**attempt
            log.warning("%s %s failed (%s); retrying in %.1f s", method, url, failure, delay)
            time.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def retryable(status: int) -> bool:
    """Overload, rate limiting and a restarting registry pass; other errors are final."""
    return status >= 500 or status == 429


def error_code_and_detail(response: requests.Response) -> tuple[str, str]:
    """The registry's error body is `{"code": ..., "detail": ...}`; a proxy's may be text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return "error", response.text[:300]
    detail = body["detail"] if "detail" in body else response.text[:300]
    return str(body.get("code", "error")), str(detail)


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _same_origin(url: str, base_url: str) -> bool:
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)

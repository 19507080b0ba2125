"""The registry's REST API as the node uses it: subnets, license acceptance, registration,
and the model manifest and chunks (`artifacts.fetch_model`), over `bim_core.http`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from bim_core.http import HttpClient, HttpError


class RegistryError(HttpError):
    """The registry answered an HTTP request with an error status, or (status 0) not at all."""

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.detail}"


class RegistryApi:
    """The registry's REST API, with timeouts and retries on connection errors, 5xx and 429."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: tuple[float, float] = (5.0, 60.0),
        retries: int = 4,
        backoff_s: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.http = HttpClient(
            base_url, token, timeout=timeout, retries=retries, backoff_s=backoff_s, error=RegistryError, session=session
        )

    def request(self, method: str, path: str, *, body: Any = None) -> requests.Response:
        try:
            return self.http.request(method, path, json=body)
        except (requests.ConnectionError, requests.Timeout) as exc:
            # The node's callers handle one exception for "the registry cannot be used".
            raise RegistryError(0, "unreachable", f"{method} {self.http.url(path)}: {exc}") from exc

    def get_json(self, path: str) -> Any:
        return self.request("GET", path).json()

    def get_bytes(self, path: str) -> bytes:
        return self.request("GET", path).content

    def subnets(self) -> list[dict[str, Any]]:
        return list(self.get_json("/api/v1/subnets/"))

    def accept_license(self, slug: str, license_version: str) -> None:
        self.request(
            "POST",
            f"/api/v1/subnets/{quote(slug, safe='')}/accept-license/",
            body={"license_version": license_version},
        )

    def register_node(
        self, *, public_key: str, name: str, subnets: list[str], env: dict[str, Any]
    ) -> dict[str, Any]:
        body = {"public_key": public_key, "name": name, "subnets": subnets, "env": env}
        return dict(self.request("POST", "/api/v1/nodes/", body=body).json())


def websocket_url(registry_url: str, token: str) -> str:
    """`http(s)://host[/prefix]` -> `ws(s)://host[/prefix]/ws/node/?token=...`."""
    parts = urlsplit(registry_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"registry URL must be http or https: {registry_url}")
    path = parts.path.rstrip("/") + "/ws/node/"
    return urlunsplit((scheme, parts.netloc, path, "token=" + quote(token, safe=""), ""))

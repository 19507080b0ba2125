"""ICE servers for a job's peer connection: STUN addresses and short-lived TURN credentials.

TURN credentials follow the "TURN REST API" convention (draft-uberti-behave-turn-rest-00),
which coturn checks when started with `--use-auth-secret --static-auth-secret=SECRET`:

    username   = f"{expiry}:{user}"        expiry: Unix seconds, int(now) + ttl_s
    credential = base64(HMAC-SHA1(SECRET, username))

The registry, which holds SECRET, hands these to both ends of a job; the TURN server needs no
user database and no call back to the registry, and a leaked pair stops working at expiry.
coturn checks the expiry on every authenticated request (allocate, refresh, permission), so
`ttl_s` must cover the longest a relayed connection is meant to live, not only its set-up.

The list `ice_servers` returns is the W3C `RTCIceServer` JSON shape, so the same value goes to
a browser's `new RTCPeerConnection({iceServers})` and to `bim_core.peer.Peer`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Sequence

# A day, the draft's suggested lifetime: a credential outliving its job is a credential
# someone else can use for free relaying.
MAX_TTL_S = 86_400
# Shorter than a job's set-up plus one allocation refresh is a credential that expires mid-job.
MIN_TTL_S = 60
# STUN's USERNAME attribute holds at most 513 bytes (RFC 8489 §14.3); the expiry takes 11.
MAX_USER_BYTES = 256

STUN_SCHEMES = ("stun:", "stuns:")
TURN_SCHEMES = ("turn:", "turns:")


def turn_credentials(*, secret: str, user: str, ttl_s: int, now: float) -> tuple[str, str]:
    """The (username, credential) pair a TURN server with `secret` accepts until now + ttl_s.

    `user` names who the relay is for (it shows in the TURN server's log); it may not contain
    ":" since the server splits the username at the first one to read the expiry."""
    if not secret:
        raise ValueError("the TURN secret is empty")
    _check_user(user)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be an integer from {MIN_TTL_S} to {MAX_TTL_S} seconds, not {ttl_s!r}")
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now) or now < 0:
        raise ValueError(f"now must be a finite, non-negative Unix time, not {now!r}")
    username = f"{int(now) + ttl_s}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers(
    *,
    stun_urls: Sequence[str],
    turn_urls: Sequence[str],
    secret: str,
    user: str,
    ttl_s: int,
    now: float,
) -> list[dict]:
    """`RTCIceServer` dicts: one STUN entry for `stun_urls` (none when empty) and one TURN
    entry with fresh REST credentials for `turn_urls` (none when `turn_urls` or `secret` is
    empty: a deployment without TURN still gives peers STUN)."""
    stun = _urls(stun_urls, STUN_SCHEMES, "stun_urls")
    turn = _urls(turn_urls, TURN_SCHEMES, "turn_urls")
    servers: list[dict] = []
    if stun:
        servers.append({"urls": stun})
    if turn and secret:
        username, credential = turn_credentials(secret=secret, user=user, ttl_s=ttl_s, now=now)
        servers.append({"urls": turn, "username": username, "credential": credential})
    return servers


def _check_user(user: str) -> None:
    if not isinstance(user, str) or not user:
        raise ValueError("the TURN user id is empty")
    if ":" in user:
        raise ValueError(f"the TURN user id may not contain ':' (it ends the expiry): {user!r}")
    if not user.isprintable() or len(user.encode()) > MAX_USER_BYTES:
        raise ValueError(f"the TURN user id must be printable and at most {MAX_USER_BYTES} bytes")


def _urls(urls: Sequence[str], schemes: tuple[str, ...], name: str) -> list[str]:
    # A bare string is a sequence too: refused, rather than read as one URL per character.
    if isinstance(urls, str | bytes):
        raise ValueError(f"{name} must be a list of URLs, not a single string")
    checked = []
    for url in urls:
        if not isinstance(url, str) or not url.startswith(schemes) or not url.partition(":")[2]:
            raise ValueError(f"{name}: {url!r} is not a {' or '.join(s.rstrip(':') for s in schemes)} URL")
        checked.append(url)
    return checked

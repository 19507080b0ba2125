"""The registry's own Ed25519 key, which signs receipts.

Read from BIM_REGISTRY_KEY (base64 raw private key) or the file at REGISTRY_KEY_PATH,
made there on first use so a newcomer's registry signs from its first receipt."""

from __future__ import annotations

import os
import threading
from functools import cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings

from bim_core import protocol


@cache
def registry_private_key() -> Ed25519PrivateKey:
    if configured := os.environ.get("BIM_REGISTRY_KEY"):
        return protocol.private_key_from_b64(configured)
    path = settings.REGISTRY_KEY_PATH
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked: a racing process either wins
        # or finds the winner's complete key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(protocol.private_key_to_b64(protocol.new_private_key()))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return protocol.private_key_from_b64(path.read_text().strip())


def registry_public_key() -> str:
    return protocol.public_key_b64(registry_private_key())

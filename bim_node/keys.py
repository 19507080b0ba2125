"""The node's long-term Ed25519 key, kept in a file that only its owner can read.

The registry knows a node by this key's public half; losing the file means
registering a new node, and leaking it lets someone else earn as this node.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bim_core import protocol


class KeyFileError(Exception):
    """The key file exists but cannot be used as it is."""


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Load the key at `path` (base64 of the raw 32-byte private key), creating it if absent."""
    if path.exists():
        return load_key(path)
    key = protocol.new_private_key()
    _write_new_key_file(path, protocol.private_key_to_b64(key))
    # Another process may have created the file between the check and the link:
    # the file on disk is the key, so read it back rather than trust ours.
    return load_key(path)


def load_key(path: Path) -> Ed25519PrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        # Like ssh: a private key others can read is refused, not silently used.
        raise KeyFileError(f"{path} has mode {mode:04o}; run `chmod 600 {path}`")
    text = path.read_text(encoding="ascii").strip()
    try:
        raw = protocol.b64decode(text)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes")
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (protocol.ProtocolError, ValueError) as exc:
        raise KeyFileError(
            f"{path} does not hold a base64 raw 32-byte Ed25519 private key"
        ) from exc


def _write_new_key_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() never replaces an existing file, so a concurrent creator's key
        # survives and a crash never leaves a half-written key under `path`.
        with suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

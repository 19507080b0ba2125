"""The long-term key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bim_core import protocol
from bim_node.keys import KeyFileError, load_or_create_key


def test_it_creates_a_private_key_file_and_loads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.key"

    key = load_or_create_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(protocol.b64decode(path.read_text().strip())) == 32
    again = load_or_create_key(path)
    assert protocol.public_key_b64(again) == protocol.public_key_b64(key)
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temp file left


def test_it_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    load_or_create_key(path)
    path.chmod(0o644)

    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_key(path)


def test_it_refuses_a_file_that_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_text("not base64 at all!\n")
    path.chmod(0o600)

    with pytest.raises(KeyFileError, match="base64 raw 32-byte"):
        load_or_create_key(path)

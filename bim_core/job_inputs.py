"""A job's inputs before any task family reads them: the subnet's limits, the error for
inputs that do not fit them, and which strings may be stored as they are. Pure module (no
Django); the families (bim_core/families.py) and the PNG codec (bim_core/png.py) raise
InputInvalid, so it lives below both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class InputInvalid(ValueError):
    """The user's inputs do not fit the subnet; the message says why."""


@dataclass(frozen=True)
class SubnetLimits:
    """What a subnet allows per job, whatever its family."""

    max_items: int
    max_chars: int
    preprocessing: dict[str, Any]


def storable_text(text: str) -> bool:
    """Whether a string can be stored and hashed as it is: UTF-8 encodable (no lone
    surrogate, which JSON's \\uD800 escapes can carry) and free of NUL, which PostgreSQL's
    text and jsonb columns refuse. Checked here so every database refuses the same inputs."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

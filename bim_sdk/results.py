"""What the SDK's calls return: a settled job with its receipt-verified result (and how a
peer-to-peer job went), and the unverified text a node streams while generating."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import p2p


class _Receipted:
    """What every verified result says of its settled job's receipt."""

    job: dict[str, Any]

    @property
    def receipt(self) -> dict[str, Any]:
        return self.job["receipt"]

    @property
    def trusted(self) -> bool:
        """Ran on a trusted subnet (registry-operated nodes), as the verified receipt says."""
        return bool(self.job["receipt"].get("trusted", False))


@dataclass(frozen=True)
class EmbeddingResult(_Receipted):
    job: dict[str, Any]
    vectors: np.ndarray
    p2p: p2p.Outcome | None = None  # how a peer-to-peer job went (None: relay)


@dataclass(frozen=True)
class ImageResult(_Receipted):
    job: dict[str, Any]
    pixels: np.ndarray  # uint8 (2H, 2W, 3), the pixels the receipt's result_hash names
    png: bytes  # the same pixels as the registry delivered them, a lossless PNG
    p2p: p2p.Outcome | None = None


@dataclass(frozen=True)
class TextDelta:
    """Text a node streamed while generating: unverified, shown as it arrives."""

    text: str


@dataclass(frozen=True)
class TextResult(_Receipted):
    job: dict[str, Any]
    text: str  # the verified text, the one the receipt's result_hash names
    tokens: list[int]
    finish: str  # "stop" (the model ended its answer) or "length" (max_tokens reached)
    p2p: p2p.Outcome | None = None

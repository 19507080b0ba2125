"""Verification under nondeterminism: pure comparisons of two nodes' results.

No Django here. One function per task family, picked by the subnet's task type; a new
family is one function plus its tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Verdict:
    passed: bool
    metric: str
    worst: float | None  # the weakest item's similarity, None when not comparable
    reason: str = ""
    per_item: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "metric": self.metric, "worst": self.worst, "reason": self.reason}


def verify_embedding_pair(
    a: np.ndarray, b: np.ndarray, *, cosine_min: float, norm_tolerance: float = 1e-3
) -> Verdict:
    """Pass when both results have the same shape, every vector is unit-normalized (the
    contract's pooling says so) and every item's cosine is at least `cosine_min`."""
    if a.shape != b.shape or a.ndim != 2:
        return Verdict(False, "cosine", None, f"shapes differ: {a.shape} vs {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        # NaN compares false with everything, so it would slip past both checks below.
        return Verdict(False, "cosine", None, "a result holds NaN or infinity")
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    norms_a = np.linalg.norm(a64, axis=1)
    norms_b = np.linalg.norm(b64, axis=1)
    off_norm = np.maximum(np.abs(norms_a - 1.0), np.abs(norms_b - 1.0))
    if np.any(off_norm > norm_tolerance):
        item = int(np.argmax(off_norm))
        return Verdict(False, "cosine", None, f"item {item} is not unit-normalized")
    cosines = np.einsum("ij,ij->i", a64, b64) / (norms_a * norms_b)
    worst = float(cosines.min())
    per_item = [float(c) for c in cosines]
    if worst < cosine_min:
        item = int(np.argmin(cosines))
        return Verdict(False, "cosine", worst, f"item {item} cosine {worst:.7f} < {cosine_min}", per_item)
    return Verdict(True, "cosine", worst, "", per_item)


def _embedding(a: np.ndarray, b: np.ndarray, tolerances: dict[str, Any]) -> Verdict:
    return verify_embedding_pair(
        a, b, cosine_min=float(tolerances["cosine_min"]), norm_tolerance=float(tolerances.get("norm_tolerance", 1e-3))
    )


VERIFIERS: dict[str, Callable[[Any, Any, dict[str, Any]], Verdict]] = {
    "embedding": _embedding,
}


def verify_pair(task_type: str, a: Any, b: Any, tolerances: dict[str, Any]) -> Verdict:
    try:
        verifier = VERIFIERS[task_type]
    except KeyError:
        raise ValueError(f"no verifier for task type {task_type!r}") from None
    return verifier(a, b, tolerances)

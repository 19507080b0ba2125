"""Verification under nondeterminism: pure comparisons of two nodes' results.

No Django here. One function per task family, picked by the subnet's task type; a new
family is one function plus its tolerances.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def token_edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance over token ids (insert, delete, substitute one token)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, token in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != other)))
        previous = current
    return previous[-1]


def verify_text_pair(a: Mapping[str, Any], b: Mapping[str, Any], *, edit_distance_max: float) -> Verdict:
    """Greedy decoding under one pinned runtime is deterministic, so two honest nodes
    usually emit identical token ids: that, with the same finish reason and text, passes. Anything
    else fails here and is settled by re-scoring (`judge_rescored`), never paid as is:
    the paper's "normalized edit distance <= n" rule would pay a forgery that changes a
    few tokens, so the distance is only recorded (`worst` = 1 - distance), with whether
    the paper's rule would have passed it."""
    tokens_a, tokens_b = list(a["tokens"]), list(b["tokens"])
    if tokens_a == tokens_b and a["finish"] == b["finish"] and a["text"] == b["text"]:
        return Verdict(True, "tokens", 1.0, "", [1.0])
    longest = max(len(tokens_a), len(tokens_b))
    distance = token_edit_distance(tokens_a, tokens_b) / longest if longest else 0.0
    similarity = 1.0 - distance
    if tokens_a == tokens_b:
        # The text is the tokens' text: one of the two made it up, and re-scoring (which
        # decodes the tokens) tells which.
        reason = (
            f"same tokens, finish differs: {a['finish']} vs {b['finish']}"
            if a["finish"] != b["finish"]
            else "same tokens, text differs"
        )
    else:
        first = next(
            (i for i, (x, y) in enumerate(zip(tokens_a, tokens_b)) if x != y), min(len(tokens_a), len(tokens_b))
        )
        paper = "within" if distance <= edit_distance_max and a["finish"] == b["finish"] else "beyond"
        reason = (
            f"tokens diverge at position {first} ({len(tokens_a)} vs {len(tokens_b)} tokens), normalized edit "
            f"distance {distance:.3f}, {paper} the paper's {edit_distance_max}: re-scoring decides"
        )
    return Verdict(False, "tokens", similarity, reason, [similarity])


def judge_rescored(positions: Sequence[tuple[float, float]], margin: float) -> tuple[bool, list[int]]:
    """The re-scoring rule: given, for each claimed token, its logit and the top logit at
    that position under one teacher-forced pass, accept the sequence when every claimed
    token is within `margin` of the top choice. Returns (accepted, the failing positions).
    Written as "not within" so a NaN logit fails instead of slipping through."""
    failing = [i for i, (claimed, top) in enumerate(positions) if not (top - claimed <= margin)]
    return not failing, failing


def verify_image_pair(a: np.ndarray, b: np.ndarray, *, ssim_min: float, phash_max: int) -> Verdict:
    """Pass when both images are RGB uint8 of the same shape and their SSIM (scikit-image,
    over the three channels, data range 255) is at least `ssim_min`.

    The perceptual hash goes first only because it is cheap: an unrelated image (random
    output, another input's answer) is refused on a distance above `phash_max` without
    computing SSIM. It never passes anything: a forged patch or ±2 noise leaves the hash
    unchanged, which only SSIM sees."""
    # Imported here: PIL, scipy and scikit-image are dead weight for the other families.
    import imagehash
    from PIL import Image
    from skimage.metrics import structural_similarity

    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        return Verdict(False, "ssim", None, f"shapes differ or are not RGB: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        return Verdict(False, "ssim", None, f"images must be uint8, not {a.dtype} / {b.dtype}")
    side = min(a.shape[:2])
    if side < 3:
        return Verdict(False, "ssim", None, f"images of {side} px are too small to compare")
    distance = int(imagehash.phash(Image.fromarray(a)) - imagehash.phash(Image.fromarray(b)))
    if distance > phash_max:
        return Verdict(False, "ssim", None, f"perceptual hash distance {distance} > {phash_max}")
    # The default 7 px window, narrowed (odd) for images smaller than it.
    window = min(7, side if side % 2 else side - 1)
    similarity = float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=window))
    if not similarity >= ssim_min:
        return Verdict(False, "ssim", similarity, f"SSIM {similarity:.7f} < {ssim_min}", [similarity])
    return Verdict(True, "ssim", similarity, "", [similarity])


def _embedding(a: np.ndarray, b: np.ndarray, tolerances: dict[str, Any]) -> Verdict:
    return verify_embedding_pair(
        a, b, cosine_min=float(tolerances["cosine_min"]), norm_tolerance=float(tolerances.get("norm_tolerance", 1e-3))
    )


def _text(a: Mapping[str, Any], b: Mapping[str, Any], tolerances: dict[str, Any]) -> Verdict:
    return verify_text_pair(a, b, edit_distance_max=float(tolerances["edit_distance"]))


def _image(a: np.ndarray, b: np.ndarray, tolerances: dict[str, Any]) -> Verdict:
    return verify_image_pair(a, b, ssim_min=float(tolerances["ssim_min"]), phash_max=int(tolerances["phash_max"]))


VERIFIERS: dict[str, Callable[[Any, Any, dict[str, Any]], Verdict]] = {
    "embedding": _embedding,
    "image": _image,
    "text": _text,
}


def verify_pair(task_type: str, a: Any, b: Any, tolerances: dict[str, Any]) -> Verdict:
    try:
        verifier = VERIFIERS[task_type]
    except KeyError:
        raise ValueError(f"no verifier for task type {task_type!r}") from None
    return verifier(a, b, tolerances)


# The metric each family reports, at its best value: what two identical results measure.
IDENTICAL_MEASURE = {"embedding": ("cosine", 1.0), "text": ("tokens", 1.0), "image": ("ssim", 1.0)}


def identical_verdict(task_type: str) -> Verdict:
    """Two results with the same SHA-256 are the same bytes: they agree at the metric's best
    value without being decoded (a peer-to-peer pair whose payloads the registry never
    held, docs/p2p.md)."""
    metric, best = IDENTICAL_MEASURE[task_type]
    return Verdict(True, metric, best, "identical result hashes", [best])

"""What an operator weighs a dispute on: the job's two or three results side by side, each
decoded by its task family and shown in a form a person can compare (a vector preview with
norms, the generated text, a thumbnail), with every pair's similarity measured by the
family's own verifier, the one that settled the job, and the sentinel's verdict."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bim_core import families, protocol
from bim_core.verification import verify_pair

from .models import Assignment, Dispute

VECTOR_ITEMS = 3  # vectors previewed per result
VECTOR_VALUES = 4  # leading values shown per vector
THUMBNAIL_SIDE = 192


@dataclass
class Output:
    assignment: Assignment
    kind: str  # "embedding", "text", "image", or "error" when it does not decode
    error: str = ""
    # embedding: one row per previewed item (values, norm); text: text, finish, tokens;
    # image: thumbnail data URI, shape.
    vectors: list[dict[str, Any]] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    text: str = ""
    finish: str = ""
    tokens: int = 0
    thumbnail: str = ""
    decoded: Any = None


@dataclass(frozen=True)
class Pair:
    a: str  # roles
    b: str
    metric: str
    similarity: float | None
    passed: bool
    reason: str
    per_item: list[float]


@dataclass(frozen=True)
class Comparison:
    task_type: str
    tolerances: dict[str, Any]
    outputs: list[Output]
    pairs: list[Pair]


def dispute_comparison(*, dispute: Dispute) -> Comparison:
    job = dispute.job
    task_type = job.contract["task_type"]
    tolerances = job.contract.get("tolerances", {})
    family = families.family_for(task_type)
    assignments = (
        job.assignments.filter(result__isnull=False).select_related("node").order_by("role", "dispatched_at")
    )
    outputs = [_output(family, assignment, job.inputs or job.contract.get("input_summary") or {}) for assignment in assignments]
    pairs = []
    decoded = [output for output in outputs if output.kind != "error"]
    for first, second in itertools.combinations(decoded, 2):
        verdict = verify_pair(task_type, first.decoded, second.decoded, tolerances)
        pairs.append(
            Pair(
                a=first.assignment.role,
                b=second.assignment.role,
                metric=verdict.metric,
                similarity=verdict.worst,
                passed=verdict.passed,
                reason=verdict.reason,
                per_item=verdict.per_item[:8],
            )
        )
    return Comparison(task_type=task_type, tolerances=tolerances, outputs=outputs, pairs=pairs)


def _output(family: families.TaskFamily, assignment: Assignment, inputs: dict[str, Any]) -> Output:
    try:
        result = family.decode_result(bytes(assignment.result), tuple(assignment.result_shape or ()), inputs)
    except (protocol.ProtocolError, ValueError, TypeError) as exc:
        # A result that no longer decodes is itself evidence: shown, not hidden by a 500.
        return Output(assignment=assignment, kind="error", error=str(exc))
    output = Output(assignment=assignment, kind=family.task_type, decoded=result)
    if family.task_type == "embedding":
        vectors = np.asarray(result, dtype=np.float64)
        output.shape = tuple(int(n) for n in vectors.shape)
        output.vectors = [
            {"item": index, "values": [float(v) for v in row[:VECTOR_VALUES]], "norm": float(np.linalg.norm(row))}
            for index, row in enumerate(vectors[:VECTOR_ITEMS])
        ]
    elif family.task_type == "text":
        output.text, output.finish, output.tokens = result["text"], result["finish"], len(result["tokens"])
    elif family.task_type == "image":
        output.shape = tuple(int(n) for n in result.shape)
        output.thumbnail = _thumbnail(result)
    return output


def _thumbnail(pixels: np.ndarray) -> str:
    """A small PNG as a data: URI (the page's CSP allows data: images): a few KiB to show,
    where the full result may be hundreds."""
    import io

    from PIL import Image  # only image disputes pay for Pillow

    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")

"""Task families: what a job's inputs look like and how a result travels, per task type.

Pure module (no Django), shared by the registry, the headless node, the SDK and the
benchmarks. A family answers four questions the rest of the code asks without knowing
what the model does:

- which inputs a user may submit (`validate_inputs`, with the subnet's limits), how many
  items they hold and how many price units the hold covers (`item_count`, `price_units`);
- how a node's result becomes the bytes it signs (`encode_result`: payload + shape) and how
  the registry turns those bytes back into something a verifier compares (`decode_result`,
  which refuses a payload that does not fit the job's inputs);
- how many price units a finished result actually used (`used_units`: a text job holds
  the price of its max_tokens and captures only the tokens generated);
- what the user receives (`result_for_user`), in a form the SDK can re-encode to check the
  receipt's result hash.

Comparison of two decoded results is `registry.verification.verify_pair`, keyed by the same
task type. A new family is one class here, one verifier there, and a runner in the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from . import protocol


class InputInvalid(ValueError):
    """The user's inputs do not fit the subnet; the message says why."""


@dataclass(frozen=True)
class SubnetLimits:
    """What a subnet allows per job, whatever its family."""

    max_items: int
    max_chars: int
    preprocessing: dict[str, Any]


class TaskFamily:
    task_type: ClassVar[str]
    encoding: ClassVar[str]

    def validate_inputs(self, raw: dict[str, Any], limits: SubnetLimits) -> dict[str, Any]:
        raise NotImplementedError

    def item_count(self, inputs: dict[str, Any]) -> int:
        raise NotImplementedError

    def price_units(self, inputs: dict[str, Any]) -> int:
        """Units the hold covers: the most a job of these inputs can cost."""
        return self.item_count(inputs)

    def used_units(self, inputs: dict[str, Any], result: Any) -> int:
        """Units a finished result used; never more than `price_units`."""
        return self.price_units(inputs)

    def encode_result(self, result: Any) -> tuple[bytes, tuple[int, ...]]:
        raise NotImplementedError

    def decode_result(self, payload: bytes, shape: tuple[int, ...], inputs: dict[str, Any]) -> Any:
        """Raises protocol.ProtocolError (`bad_shape` / `bad_message`) on a result that
        cannot be the answer to these inputs."""
        raise NotImplementedError

    def result_for_user(self, result: Any) -> dict[str, Any]:
        raise NotImplementedError

    def result_from_user(self, delivered: dict[str, Any]) -> Any:
        """Inverse of `result_for_user`: what the SDK re-encodes to check the result hash."""
        raise NotImplementedError


def _text_list(raw: Any, name: str, limits: SubnetLimits) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise InputInvalid(f"{name} must be a non-empty list of strings")
    if len(raw) > limits.max_items:
        raise InputInvalid(f"at most {limits.max_items} {name} per job")
    for index, text in enumerate(raw):
        if not isinstance(text, str) or not text.strip():
            raise InputInvalid(f"{name}[{index}] must be a non-empty string")
        if len(text) > limits.max_chars:
            raise InputInvalid(f"{name}[{index}] exceeds {limits.max_chars} characters")
    return list(raw)


class EmbeddingFamily(TaskFamily):
    """Sentence embeddings: inputs {"texts": [...]}, result one unit float32 vector per text."""

    task_type = "embedding"
    encoding = protocol.VECTOR_ENCODING

    def validate_inputs(self, raw: dict[str, Any], limits: SubnetLimits) -> dict[str, Any]:
        unknown = set(raw) - {"texts"}
        if unknown:
            raise InputInvalid(f"an embedding job takes only texts, not {', '.join(sorted(unknown))}")
        return {"texts": _text_list(raw.get("texts"), "texts", limits)}

    def item_count(self, inputs: dict[str, Any]) -> int:
        return len(inputs["texts"])

    def encode_result(self, result: np.ndarray) -> tuple[bytes, tuple[int, ...]]:
        vectors = np.asarray(result, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"embeddings must be a 2-d array, got shape {vectors.shape}")
        return protocol.encode_vectors(vectors), (int(vectors.shape[0]), int(vectors.shape[1]))

    def decode_result(self, payload: bytes, shape: tuple[int, ...], inputs: dict[str, Any]) -> np.ndarray:
        if len(shape) != 2:
            raise protocol.ProtocolError("bad_shape", "embeddings have shape [rows, dim]")
        if shape[0] != self.item_count(inputs):
            raise protocol.ProtocolError("bad_shape", f"{self.item_count(inputs)} vectors expected")
        return protocol.decode_vectors(payload, (shape[0], shape[1]))

    def result_for_user(self, result: np.ndarray) -> dict[str, Any]:
        # float32 -> Python float -> JSON is exact, so clients can rebuild the bytes and
        # check them against result_hash.
        return {"vectors": result.tolist()}

    def result_from_user(self, delivered: dict[str, Any]) -> np.ndarray:
        return np.asarray(delivered["vectors"], dtype=np.float32)


FAMILIES: dict[str, TaskFamily] = {
    family.task_type: family
    for family in (EmbeddingFamily(),)
}


def family_for(task_type: str) -> TaskFamily:
    try:
        return FAMILIES[task_type]
    except KeyError:
        raise InputInvalid(f"no task family {task_type!r}") from None

"""Task families: what a job's inputs look like and how a result travels, per task type.

Pure module (no Django), shared by the registry, the headless node, the SDK and the
benchmarks. A family answers four questions the rest of the code asks without knowing
what the model does:

- which inputs a user may submit (`validate_inputs`, with the subnet's limits), how many
  items they hold and how many price units the hold covers (`item_count`, `price_units`);
- what the registry needs to know of inputs it never sees (a peer-to-peer job, docs/p2p.md):
  their `input_summary` (how many texts, max_tokens, an image's size), checked against the
  subnet's limits by `validate_summary`; `item_count`, `price_units`, `used_units` and
  `decode_result` take the inputs or their summary alike;
- how a node's result becomes the bytes it signs (`encode_result`: payload + shape) and how
  the registry turns those bytes back into something a verifier compares (`decode_result`,
  which refuses a payload that does not fit the job's inputs);
- how many price units a finished result actually used (`used_units`: a text job holds
  the price of its max_tokens and captures only the tokens generated);
- what the user receives (`result_for_user`), in a form the SDK can re-encode to check the
  receipt's result hash.

Comparison of two decoded results is `bim_core.verification.verify_pair`, keyed by the same
task type. A new family is one class here, one verifier there, and a runner in the node.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from . import protocol
from .job_inputs import InputInvalid, SubnetLimits, storable_text
from .png import png_decode, png_encode, png_size


class TaskFamily:
    task_type: ClassVar[str]
    encoding: ClassVar[str]
    # A pair that differs is re-scored by the registry's own runner (teacher forcing)
    # before any third node is asked: where nondeterminism flips near-ties, not numbers.
    rescored_on_mismatch: ClassVar[bool] = False
    # Inputs whose tokens the subnet's tokenizer mostly cannot read are flagged at submit.
    tokenized_texts: ClassVar[bool] = False

    # The keys of this family's input summary: a dict with exactly these keys is a summary,
    # anything else is inputs (whose keys never equal them).
    summary_keys: ClassVar[frozenset[str]]

    def validate_inputs(self, raw: dict[str, Any], limits: SubnetLimits) -> dict[str, Any]:
        raise NotImplementedError

    def input_summary(self, inputs: dict[str, Any]) -> dict[str, int]:
        """What the registry prices, limits and checks results by, from inputs it holds;
        a peer-to-peer job's client sends it instead of the inputs."""
        raise NotImplementedError

    def validate_summary(self, raw: Any, limits: SubnetLimits) -> dict[str, int]:
        """A user's declared summary of inputs the registry will not see, within the
        subnet's limits (the nodes check the real inputs against it)."""
        if not isinstance(raw, dict) or set(raw) != self.summary_keys:
            raise InputInvalid(f"input_summary of a {self.task_type} job holds exactly {_names(set(self.summary_keys))}")
        for key, value in raw.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputInvalid(f"input_summary.{key} must be a positive integer")
        self._check_summary(raw, limits)
        return {key: int(raw[key]) for key in sorted(raw)}

    def _check_summary(self, summary: dict[str, int], limits: SubnetLimits) -> None:
        raise NotImplementedError

    def summary_of(self, inputs_or_summary: dict[str, Any]) -> dict[str, Any]:
        if set(inputs_or_summary) == self.summary_keys:
            return inputs_or_summary
        return self.input_summary(inputs_or_summary)

    def item_count(self, inputs: dict[str, Any]) -> int:
        """Items in the inputs (or their summary)."""
        return 1

    def price_units(self, inputs: dict[str, Any]) -> int:
        """Units the hold covers: the most a job of these inputs can cost."""
        return self.item_count(inputs)

    def used_units(self, inputs: dict[str, Any], result: Any) -> int:
        """Units a finished result used; never more than `price_units`."""
        return self.price_units(inputs)

    def used_units_of_shape(self, inputs: dict[str, Any], shape: tuple[int, ...]) -> int:
        """`used_units` from a result's signed shape alone (a peer-to-peer result whose bytes
        the registry never held): the same number, since decoding checks the shape."""
        return self.price_units(inputs)

    def encode_result(self, result: Any) -> tuple[bytes, tuple[int, ...]]:
        raise NotImplementedError

    def decode_result(self, payload: bytes, shape: tuple[int, ...], inputs: dict[str, Any]) -> Any:
        """Raises protocol.ProtocolError (`bad_shape` / `bad_message`) on a result that
        cannot be the answer to these inputs."""
        raise NotImplementedError

    def committed_size(self, shape: tuple[int, ...], inputs: dict[str, Any]) -> int | None:
        """The payload size a result of this shape must have for these inputs (or their
        summary), or None where it is not fixed (text); raises protocol.ProtocolError
        `bad_shape` for a shape no answer to them can have. What the registry checks of a
        peer-to-peer commit, whose bytes it does not hold (docs/p2p.md)."""
        raise NotImplementedError

    def check_output_dim(self, shape: tuple[int, ...], output_dim: int | None) -> None:
        """Raises protocol.ProtocolError `bad_shape` when a result's rows are not as wide as
        the subnet declares. Families whose shape follows from the inputs alone (text,
        image) have nothing to declare."""

    def result_for_user(self, result: Any) -> dict[str, Any]:
        raise NotImplementedError

    def result_from_user(self, delivered: dict[str, Any]) -> Any:
        """Inverse of `result_for_user`: what the SDK re-encodes to check the result hash."""
        raise NotImplementedError

    def receipt_measured(self, worst: float | None, tolerances: dict[str, Any]) -> dict[str, Any]:
        """What a receipt says was measured against which tolerance."""
        return {"worst": worst, "tolerances": tolerances}


def _names(keys: set[Any]) -> str:
    """Unknown keys for an error message, escaped: the message itself must be valid UTF-8."""
    return ", ".join(sorted(str(key).encode("utf-8", "backslashreplace").decode("utf-8") for key in keys))


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
        if not storable_text(text):
            raise InputInvalid(f"{name}[{index}] must be valid Unicode text without NUL characters")
    return list(raw)


class EmbeddingFamily(TaskFamily):
    """Sentence embeddings: inputs {"texts": [...]}, result one unit float32 vector per text."""

    task_type = "embedding"
    encoding = protocol.VECTOR_ENCODING
    tokenized_texts = True

    def validate_inputs(self, raw: dict[str, Any], limits: SubnetLimits) -> dict[str, Any]:
        unknown = set(raw) - {"texts"}
        if unknown:
            raise InputInvalid(f"an embedding job takes only texts, not {_names(unknown)}")
        return {"texts": _text_list(raw.get("texts"), "texts", limits)}

    summary_keys = frozenset({"items"})

    def input_summary(self, inputs: dict[str, Any]) -> dict[str, int]:
        return {"items": len(inputs["texts"])}

    def _check_summary(self, summary: dict[str, int], limits: SubnetLimits) -> None:
        if summary["items"] > limits.max_items:
            raise InputInvalid(f"at most {limits.max_items} texts per job")

    def item_count(self, inputs: dict[str, Any]) -> int:
        return int(self.summary_of(inputs)["items"])

    def committed_size(self, shape: tuple[int, ...], inputs: dict[str, Any]) -> int | None:
        if len(shape) != 2 or shape[0] != self.item_count(inputs):
            raise protocol.ProtocolError("bad_shape", f"{self.item_count(inputs)} vectors expected")
        return shape[0] * shape[1] * 4

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

    def check_output_dim(self, shape: tuple[int, ...], output_dim: int | None) -> None:
        # Rows and bytes can agree with each other and still be the wrong model's output:
        # truncated, renormalised vectors pass every other check, on two colluding nodes too.
        if output_dim is not None and (len(shape) != 2 or shape[1] != output_dim):
            raise protocol.ProtocolError("bad_shape", f"this subnet's embeddings have {output_dim} dimensions")

    def result_for_user(self, result: np.ndarray) -> dict[str, Any]:
        # float32 -> Python float -> JSON is exact, so clients can rebuild the bytes and
        # check them against result_hash.
        return {"vectors": result.tolist()}

    def result_from_user(self, delivered: dict[str, Any]) -> np.ndarray:
        return np.asarray(delivered["vectors"], dtype=np.float32)

    def receipt_measured(self, worst: float | None, tolerances: dict[str, Any]) -> dict[str, Any]:
        return {"min_cosine": worst, "cosine_min": tolerances.get("cosine_min")}


TEXT_ENCODING = "json"
TEXT_FINISHES = ("stop", "length")


class TextFamily(TaskFamily):
    """Text generation: inputs {"prompt": str, "max_tokens": int}; the result is the
    generated token ids (ending with the stop token when generation stopped by itself),
    their text and why generation ended, as canonical JSON: {"finish", "text", "tokens"}.

    The hold covers max_tokens; settlement captures the tokens actually generated. The
    prompt is bounded in UTF-8 bytes (the subnet's max_chars), not characters: the model's
    byte-level BPE makes at most one token per byte, so the bound keeps every accepted
    prompt inside the context the subnet pins."""

    task_type = "text"
    encoding = TEXT_ENCODING
    rescored_on_mismatch = True

    def validate_inputs(self, raw: dict[str, Any], limits: SubnetLimits) -> dict[str, Any]:
        unknown = set(raw) - {"prompt", "max_tokens"}
        if unknown:
            raise InputInvalid(f"a text job takes only prompt and max_tokens, not {_names(unknown)}")
        prompt, max_tokens = raw.get("prompt"), raw.get("max_tokens")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputInvalid("prompt must be a non-empty string")
        if not storable_text(prompt):
            raise InputInvalid("prompt must be valid Unicode text without NUL characters")
        if len(prompt.encode("utf-8", errors="replace")) > limits.max_chars:
            raise InputInvalid(f"prompt exceeds {limits.max_chars} bytes of UTF-8")
        ceiling = int(limits.preprocessing.get("max_new_tokens", 256))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= ceiling:
            raise InputInvalid(f"max_tokens must be an integer from 1 to {ceiling}")
        return {"prompt": prompt, "max_tokens": max_tokens}

    # The prompt's length is the nodes' to check: the summary holds what prices the job.
    summary_keys = frozenset({"max_tokens"})

    def input_summary(self, inputs: dict[str, Any]) -> dict[str, int]:
        return {"max_tokens": int(inputs["max_tokens"])}

    def _check_summary(self, summary: dict[str, int], limits: SubnetLimits) -> None:
        ceiling = int(limits.preprocessing.get("max_new_tokens", 256))
        if summary["max_tokens"] > ceiling:
            raise InputInvalid(f"max_tokens must be an integer from 1 to {ceiling}")

    def price_units(self, inputs: dict[str, Any]) -> int:
        return int(inputs["max_tokens"])

    def committed_size(self, shape: tuple[int, ...], inputs: dict[str, Any]) -> int | None:
        if len(shape) != 1 or shape[0] > int(inputs["max_tokens"]):
            raise protocol.ProtocolError("bad_shape", f"a text result holds at most max_tokens {inputs['max_tokens']} tokens")
        return None

    def used_units(self, inputs: dict[str, Any], result: dict[str, Any]) -> int:
        # The stop token took a forward pass like any other, so it is paid for.
        return min(len(result["tokens"]), self.price_units(inputs))

    def used_units_of_shape(self, inputs: dict[str, Any], shape: tuple[int, ...]) -> int:
        return min(int(shape[0]), self.price_units(inputs))  # shape is [number of tokens]

    def encode_result(self, result: dict[str, Any]) -> tuple[bytes, tuple[int, ...]]:
        body = {"finish": result["finish"], "text": result["text"], "tokens": [int(t) for t in result["tokens"]]}
        return protocol.canonical_json(body), (len(body["tokens"]),)

    def decode_result(self, payload: bytes, shape: tuple[int, ...], inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            result = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise protocol.ProtocolError("bad_message", "a text result is UTF-8 JSON") from None
        if not isinstance(result, dict) or set(result) != {"finish", "text", "tokens"}:
            raise protocol.ProtocolError("bad_message", "a text result holds exactly finish, text and tokens")
        tokens, finish = result["tokens"], result["finish"]
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens
        ):
            raise protocol.ProtocolError("bad_message", "tokens must be a list of token ids")
        if not isinstance(result["text"], str) or finish not in TEXT_FINISHES:
            raise protocol.ProtocolError("bad_message", f"text must be a string and finish one of {TEXT_FINISHES}")
        if len(shape) != 1 or shape[0] != len(tokens):
            raise protocol.ProtocolError("bad_shape", "a text result's shape is [number of tokens]")
        max_tokens = int(inputs["max_tokens"])
        if len(tokens) > max_tokens or (finish == "length" and len(tokens) != max_tokens):
            raise protocol.ProtocolError("bad_shape", f"{len(tokens)} tokens for max_tokens {max_tokens} and finish {finish}")
        if protocol.canonical_json(result) != payload:
            # One result, one byte string: the hash both nodes sign must not depend on spacing.
            raise protocol.ProtocolError("bad_message", "a text result must be canonical JSON")
        return result

    def result_for_user(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"text": result["text"], "tokens": list(result["tokens"]), "finish": result["finish"]}

    def result_from_user(self, delivered: dict[str, Any]) -> dict[str, Any]:
        return {"finish": delivered["finish"], "text": delivered["text"], "tokens": list(delivered["tokens"])}


IMAGE_ENCODING = "rgb8"
IMAGE_MIN_SIDE = 4  # a 2x result of 8 px still has room for SSIM's window


def _image_pixels(result: Any) -> np.ndarray:
    pixels = np.asarray(result)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"an image result is uint8 (H, W, 3), got {pixels.dtype} {pixels.shape}")
    return pixels


class ImageFamily(TaskFamily):
    """2x super-resolution: inputs {"image": base64 of an 8-bit RGB PNG}, at most the
    subnet's `max_side` pixels a side; the result is the upscaled image.

    On the wire (what nodes sign and the registry stores) a result is raw uint8 samples,
    row-major (H, W, 3) with shape [2h, 2w, 3], not PNG: the same pixels are then the same
    bytes whatever encoder a node (or browser) has, so result_hash names the pixels and
    the SDK can re-derive it. A 384 x 384 result is 432 KiB (576 KiB base64), inside a 1 MiB
    websocket message; the subnet's max_side keeps it there. The user receives a lossless
    PNG of those pixels, which the SDK decodes to check the receipt's hash."""

    task_type = "image"
    encoding = IMAGE_ENCODING

    def validate_inputs(self, raw: dict[str, Any], limits: SubnetLimits) -> dict[str, Any]:
        unknown = set(raw) - {"image"}
        if unknown:
            raise InputInvalid(f"an image job takes only image, not {_names(unknown)}")
        text = raw.get("image")
        if not isinstance(text, str) or not text:
            raise InputInvalid("image must be a base64 string of a PNG file")
        if len(text) > limits.max_chars:
            raise InputInvalid(f"image exceeds {limits.max_chars} characters of base64")
        try:
            png = protocol.b64decode(text)
        except protocol.ProtocolError:
            raise InputInvalid("image is not standard base64 (RFC 4648, with padding)") from None
        height, width = png_size(png)
        max_side = int(limits.preprocessing.get("max_side", 256))
        if not IMAGE_MIN_SIDE <= min(height, width) or max(height, width) > max_side:
            raise InputInvalid(f"image is {width}x{height}; each side must be {IMAGE_MIN_SIDE} to {max_side} px")
        png_decode(png)  # refuse a corrupt file now, not on two nodes later
        return {"image": text}

    summary_keys = frozenset({"height", "width"})

    def input_summary(self, inputs: dict[str, Any]) -> dict[str, int]:
        try:
            height, width = png_size(protocol.b64decode(inputs["image"]))
        except protocol.ProtocolError:
            raise InputInvalid("image is not standard base64 (RFC 4648, with padding)") from None
        return {"height": height, "width": width}

    def _check_summary(self, summary: dict[str, int], limits: SubnetLimits) -> None:
        max_side = int(limits.preprocessing.get("max_side", 256))
        height, width = summary["height"], summary["width"]
        if not IMAGE_MIN_SIDE <= min(height, width) or max(height, width) > max_side:
            raise InputInvalid(f"image is {width}x{height}; each side must be {IMAGE_MIN_SIDE} to {max_side} px")

    def committed_size(self, shape: tuple[int, ...], inputs: dict[str, Any]) -> int | None:
        summary = self.summary_of(inputs)
        expected = (2 * summary["height"], 2 * summary["width"], 3)
        if tuple(shape) != expected:
            raise protocol.ProtocolError("bad_shape", f"a 2x image of {summary['width']}x{summary['height']} has shape {list(expected)}")
        return expected[0] * expected[1] * 3

    def encode_result(self, result: np.ndarray) -> tuple[bytes, tuple[int, ...]]:
        pixels = _image_pixels(result)
        return np.ascontiguousarray(pixels).tobytes(), (int(pixels.shape[0]), int(pixels.shape[1]), 3)

    def decode_result(self, payload: bytes, shape: tuple[int, ...], inputs: dict[str, Any]) -> np.ndarray:
        try:
            summary = self.summary_of(inputs)
        except InputInvalid as exc:
            raise protocol.ProtocolError("bad_message", str(exc)) from None
        height, width = summary["height"], summary["width"]
        expected = (2 * height, 2 * width, 3)
        if tuple(shape) != expected:
            raise protocol.ProtocolError("bad_shape", f"a 2x image of {width}x{height} has shape {list(expected)}")
        if len(payload) != expected[0] * expected[1] * 3:
            raise protocol.ProtocolError("bad_shape", "payload length does not match the shape")
        return np.frombuffer(payload, dtype=np.uint8).reshape(expected)

    def result_for_user(self, result: np.ndarray) -> dict[str, Any]:
        return {"image": protocol.b64encode(png_encode(result))}

    def result_from_user(self, delivered: dict[str, Any]) -> np.ndarray:
        return png_decode(protocol.b64decode(delivered["image"]))


FAMILIES: dict[str, TaskFamily] = {
    family.task_type: family
    for family in (EmbeddingFamily(), TextFamily(), ImageFamily())
}


def family_for(task_type: str) -> TaskFamily:
    try:
        return FAMILIES[task_type]
    except KeyError:
        raise InputInvalid(f"no task family {task_type!r}") from None

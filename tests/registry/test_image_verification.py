"""Comparing two nodes' upscaled images: SSIM decides, the perceptual hash only refuses
early. Pure: no database; honest variations come from the real UpConv7 model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from bim_core.runtimes.upscaler import Upscaler
from bim_core.verification import verify_image_pair, verify_pair
from tests.images import sample_image, waifu2x_model

TOLERANCES = {"ssim_min": 0.9999, "phash_max": 8}  # the image subnet's (subnets/defaults.py)


def verify(a: np.ndarray, b: np.ndarray):
    return verify_image_pair(a, b, ssim_min=TOLERANCES["ssim_min"], phash_max=TOLERANCES["phash_max"])


@pytest.fixture(scope="module")
def honest() -> np.ndarray:
    return Upscaler(waifu2x_model(), tile=32)(sample_image(height=96, width=96))


def test_identical_images_pass_with_ssim_one(honest: np.ndarray) -> None:
    verdict = verify(honest, honest.copy())
    assert verdict.passed
    assert verdict.metric == "ssim"
    assert verdict.worst == pytest.approx(1.0)
    assert verdict.per_item == [verdict.worst]


@pytest.mark.parametrize(
    "other",
    [
        {"tile": 0},
        {"tile": 48},
        {"tile": 32, "threads": 2},
        {"tile": 32, "optimization": ort.GraphOptimizationLevel.ORT_DISABLE_ALL},
        {"tile": 32, "optimization": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC},
    ],
)
def test_honest_runs_in_other_configurations_pass(honest: np.ndarray, other: dict) -> None:
    theirs = Upscaler(waifu2x_model(), **other)(sample_image(height=96, width=96))
    verdict = verify(honest, theirs)
    assert verdict.passed, verdict.reason
    assert verdict.worst > 0.99999


def test_a_forged_patch_keeps_the_hash_but_fails_on_ssim(honest: np.ndarray) -> None:
    import imagehash
    from PIL import Image

    forged = honest.copy()
    forged[60:76, 60:76] = np.clip(forged[60:76, 60:76].astype(int) + 40, 0, 255)
    assert imagehash.phash(Image.fromarray(honest)) - imagehash.phash(Image.fromarray(forged)) <= 2
    verdict = verify(honest, forged)
    assert not verdict.passed
    assert verdict.worst is not None and verdict.worst < TOLERANCES["ssim_min"]
    assert verdict.reason.startswith("SSIM ")


def test_plus_minus_two_noise_fails_on_ssim(honest: np.ndarray) -> None:
    noise = np.random.default_rng(5).integers(-2, 3, honest.shape)
    verdict = verify(honest, np.clip(honest.astype(int) + noise, 0, 255).astype(np.uint8))
    assert not verdict.passed
    assert 0.95 < verdict.worst < 0.999


def test_a_cheap_bicubic_upscale_fails(honest: np.ndarray) -> None:
    from PIL import Image

    bicubic = np.asarray(Image.fromarray(sample_image(height=96, width=96)).resize((192, 192), Image.BICUBIC))
    assert not verify(honest, bicubic).passed


def test_random_output_is_refused_by_the_hash_before_ssim(honest: np.ndarray) -> None:
    random = np.random.default_rng(1).integers(0, 256, honest.shape, dtype=np.uint8)
    verdict = verify(honest, random)
    assert not verdict.passed
    assert verdict.worst is None
    assert verdict.reason.startswith("perceptual hash distance")


def test_another_inputs_answer_fails(honest: np.ndarray) -> None:
    other = Upscaler(waifu2x_model(), tile=32)(sample_image(name="coffee", height=96, width=96))
    assert not verify(honest, other).passed


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), "shapes differ"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 4), np.uint8), "not RGB"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((2, 8, 3), np.uint8), np.zeros((2, 8, 3), np.uint8), "too small"),
    ],
)
def test_incomparable_results_fail_without_a_score(a: np.ndarray, b: np.ndarray, reason: str) -> None:
    verdict = verify(a, b)
    assert not verdict.passed
    assert verdict.worst is None
    assert reason in verdict.reason


def test_small_images_are_compared_with_a_narrower_window() -> None:
    image = sample_image(height=5, width=12)
    assert verify(image, image.copy()).passed


def test_verify_pair_dispatches_image_with_the_subnet_tolerances(honest: np.ndarray) -> None:
    assert verify_pair("image", honest, honest.copy(), TOLERANCES).passed
    strict = {"ssim_min": 1.0, "phash_max": 0}
    nudged = honest.copy()
    nudged[0, 0, 0] ^= 1
    assert not verify_pair("image", honest, nudged, strict).passed

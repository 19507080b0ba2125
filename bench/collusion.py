"""Collusion under diversity-aware routing (paper section 7, hypothesis H2).

H2: diversity constraints reduce the probability that a colluding pair is accepted by more
than 10x, at modest cost. A job runs on two nodes and is accepted when they agree, so an
adversary whose Sybils are picked as *both* nodes of a job can have any answer accepted.
This measures P(both picks are the adversary's) for three routing policies:

    (a) owner      distinct=("owner_id",)                               owners only
    (b) network    distinct=("owner_id", "ip_block", "asn")
    (c) full       distinct=("owner_id", "ip_block", "asn", "os", "gpu_family")

Each number comes two ways:

  * Monte Carlo with the real picking rules: `bim_core.selection.rendezvous_scores` for
    every (job, node), then the greedy rule of `select_nodes` (rank order, ties by
    candidate order; A = best node, B = best node differing from A in every attribute of
    the policy). Vectorized: per job only the best few dozen honest and Sybil scores are
    merged and ranked; a job whose B is not decided inside that prefix goes to
    `select_nodes` itself. A sample of jobs per population and policy is re-run through
    `select_nodes` and must give the same pair (the run fails otherwise).
  * Exact values under ideal hashing. With h uniform, -ln(h)/w is an exponential race:
    P(A = a) = w_a / W, and given A = a the rest of the race is memoryless, so
    P(B = i | A = a) = w_i / W(C(a)) over C(a), the nodes compatible with a. Hence
    P(collude) = sum over Sybils a of (w_a / W) * W(Sybils in C(a)) / W(C(a)). This needs
    no sampling, so it resolves probabilities far below 1 / jobs; the Monte Carlo checks it.

Population (all knobs are flags; the defaults are assumptions, not measurements):
  * Honest fleet, 10,000 nodes. Owners: 1 + Pareto(1.5) nodes each, capped at 200 (most
    own one or two devices, a few labs own dozens). ASNs: 1,500 networks with Zipf(1.0)
    shares (the top ASN holds ~12 % of nodes, the top ten ~35 %: big ISPs and clouds).
    Each owner sits in one home ASN and one /24 per 16 nodes, drawn from a pool of
    1.5 blocks per expected node of that ASN, so unrelated owners sometimes share a /24.
    OS: windows 64 %, macos 18 %, linux 6 %, android 6 %, chromeos 4 %, ios 2 %; GPU
    family conditional on OS (windows: nvidia 52 %, intel 28 %, amd 20 %; macos: apple
    88 % ...); owners with 8+ nodes run one fingerprint. Weight = score x reputation,
    score lognormal(0, 0.5) x a GPU-family speed factor, reputation Beta(8, 1.5).
  * Adversary: a fraction f of *all* nodes (f / (1 - f) x honest), each Sybil under its own
    owner account, in `blocks` fresh /24s spread round-robin over `asns` ASNs chosen by
    where=popular (weighted by the honest share: it rents where capacity is), uniform, or
    fresh (networks no honest node uses). os/gpu list the fingerprints it reports; "*"
    means it reports the honest fleet's mix (os and gpu_family are self-reported at
    registration; ip_block and asn come from the connection). Sybil weights are drawn
    from the honest top decile (--sybil-weight high: farmed reputation on good GPUs) or
    from the whole honest distribution (equal). Profiles (--adversary, repeatable):
        farm          3 ASNs, 12 /24s, linux + nvidia
        farm-spoof    the same network, reporting the honest OS/GPU mix
        rented        60 ASNs, 400 /24s, linux/windows x nvidia/amd
        rented-spoof  the same network, reporting the honest OS/GPU mix

Costs: how often fewer than 2 nodes qualify (the full fleet, and random small subnets
where it matters, also for a third adjudicator), how many jobs get a different second
node than under (a), and how far picks move from weight-proportional (share of picks to
the top weight decile, total-variation distance to w_i / W and to policy (a)).

    .venv/bin/python bench/collusion.py            # ~1-2 min on 2 cores
    .venv/bin/python bench/collusion.py --quick    # seconds
    .venv/bin/python bench/collusion.py --adversary name=solo,asns=1,blocks=4,os=linux,gpu=nvidia

Tables go to stdout, then one JSON object on the last line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bim_core.selection import Candidate, hash64, rendezvous_scores, select_nodes  # noqa: E402

POLICIES: dict[str, tuple[str, ...]] = {
    "a": ("owner_id",),
    "b": ("owner_id", "ip_block", "asn"),
    "c": ("owner_id", "ip_block", "asn", "os", "gpu_family"),
}
POLICY_NAMES = {"a": "owner", "b": "network", "c": "full"}
ATTRIBUTES = ("owner_id", "ip_block", "asn", "os", "gpu_family")

OS_SHARES = {"windows": 0.64, "macos": 0.18, "linux": 0.06, "android": 0.06, "chromeos": 0.04, "ios": 0.02}
GPU_BY_OS = {
    "windows": {"nvidia": 0.52, "intel": 0.28, "amd": 0.20},
    "macos": {"apple": 0.88, "intel": 0.08, "amd": 0.04},
    "linux": {"nvidia": 0.55, "intel": 0.25, "amd": 0.20},
    "android": {"qualcomm": 0.55, "arm-mali": 0.40, "powervr": 0.05},
    "chromeos": {"intel": 0.75, "arm-mali": 0.15, "qualcomm": 0.10},
    "ios": {"apple": 1.0},
}
GPU_SPEED = {"nvidia": 1.6, "amd": 1.3, "apple": 1.2, "intel": 0.6, "qualcomm": 0.4, "arm-mali": 0.3, "powervr": 0.3}
OS_NAMES = list(OS_SHARES)
GPU_NAMES = list(GPU_SPEED)

DEFAULT_ADVERSARIES = (
    "name=farm,asns=3,blocks=12,os=linux,gpu=nvidia",
    "name=farm-spoof,asns=3,blocks=12,os=*,gpu=*",
    "name=rented,asns=60,blocks=400,os=linux+windows,gpu=nvidia+amd",
    "name=rented-spoof,asns=60,blocks=400,os=*,gpu=*",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- populations


@dataclass
class Population:
    """Nodes as parallel arrays; attributes are integer codes (equal code = equal string)."""

    node_ids: list[str]
    weight: np.ndarray
    owner: np.ndarray
    block: np.ndarray
    asn: np.ndarray
    os: np.ndarray
    gpu: np.ndarray
    sybil: np.ndarray

    def __len__(self) -> int:
        return len(self.node_ids)

    def codes(self, attr: str) -> np.ndarray:
        return {"owner_id": self.owner, "ip_block": self.block, "asn": self.asn, "os": self.os, "gpu_family": self.gpu}[
            attr
        ]

    def head(self, count: int) -> Population:
        return self.take(np.arange(count))

    def take(self, index: np.ndarray) -> Population:
        return Population(
            node_ids=[self.node_ids[i] for i in index],
            **{f: getattr(self, f)[index] for f in ("weight", "owner", "block", "asn", "os", "gpu", "sybil")},
        )

    def __add__(self, other: Population) -> Population:
        return Population(
            node_ids=self.node_ids + other.node_ids,
            **{
                f: np.concatenate([getattr(self, f), getattr(other, f)])
                for f in ("weight", "owner", "block", "asn", "os", "gpu", "sybil")
            },
        )

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(
                node_id=self.node_ids[i],
                owner_id=f"owner-{self.owner[i]}",
                weight=float(self.weight[i]),
                ip_block=f"block-{self.block[i]}",
                asn=f"AS{self.asn[i]}",
                os=OS_NAMES[self.os[i]],
                gpu_family=GPU_NAMES[self.gpu[i]],
            )
            for i in range(len(self))
        ]


@dataclass(frozen=True)
class FleetModel:
    honest: int = 10_000
    asn_count: int = 1_500
    asn_zipf: float = 1.0
    owner_pareto: float = 1.5
    owner_max: int = 200
    nodes_per_block: int = 16
    blocks_per_node: float = 1.5

    def asn_shares(self) -> np.ndarray:
        shares = 1.0 / np.arange(1, self.asn_count + 1) ** self.asn_zipf
        return shares / shares.sum()


def _fingerprints(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    os_codes = rng.choice(len(OS_NAMES), size=count, p=list(OS_SHARES.values()))
    gpu_codes = np.empty(count, dtype=np.int64)
    for code, name in enumerate(OS_NAMES):
        where = np.flatnonzero(os_codes == code)
        families = GPU_BY_OS[name]
        picks = rng.choice(len(families), size=len(where), p=list(families.values()))
        gpu_codes[where] = np.array([GPU_NAMES.index(g) for g in families])[picks]
    return os_codes, gpu_codes


def honest_fleet(model: FleetModel, rng: np.random.Generator) -> Population:
    n = model.honest
    sizes = np.minimum(model.owner_max, 1 + np.floor(rng.pareto(model.owner_pareto, size=n)).astype(np.int64))
    owners = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:owners]
    sizes[-1] -= sizes.sum() - n
    owner = np.repeat(np.arange(owners), sizes)
    rank_in_owner = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)

    shares = model.asn_shares()
    owner_asn = rng.choice(model.asn_count, size=owners, p=shares)
    pool = np.ceil(shares * n * model.blocks_per_node).astype(np.int64)  # /24s per ASN
    pool_start = np.concatenate([[0], np.cumsum(pool)[:-1]])
    owner_blocks = [
        pool_start[a] + rng.integers(0, pool[a], size=math.ceil(s / model.nodes_per_block))
        for a, s in zip(owner_asn, sizes, strict=True)
    ]
    block = np.array([owner_blocks[o][r // model.nodes_per_block] for o, r in zip(owner, rank_in_owner, strict=True)])

    os_codes, gpu_codes = _fingerprints(rng, n)
    big = np.flatnonzero(sizes >= 8)  # labs and farms run one fingerprint
    first = np.cumsum(sizes) - sizes
    for o in big:
        os_codes[owner == o] = os_codes[first[o]]
        gpu_codes[owner == o] = gpu_codes[first[o]]

    speed = np.array([GPU_SPEED[g] for g in GPU_NAMES])[gpu_codes]
    weight = rng.lognormal(0.0, 0.5, size=n) * speed * rng.beta(8.0, 1.5, size=n)
    return Population(
        node_ids=[f"honest-{i}" for i in range(n)],
        weight=weight,
        owner=owner,
        block=block,
        asn=owner_asn[owner],
        os=os_codes,
        gpu=gpu_codes,
        sybil=np.zeros(n, dtype=bool),
    )


@dataclass(frozen=True)
class Adversary:
    name: str
    asns: int
    blocks: int
    os: tuple[str, ...]
    gpu: tuple[str, ...]
    where: str = "popular"

    @property
    def spoofs(self) -> bool:
        return self.os == ("*",) or self.gpu == ("*",)

    @classmethod
    def parse(cls, spec: str) -> Adversary:
        """`name=farm,asns=3,blocks=12,os=linux,gpu=nvidia[,where=popular]`; `+` joins
        several values; os=* / gpu=* reports the honest fleet's mix."""
        fields = dict(part.split("=", 1) for part in spec.split(","))
        unknown = set(fields) - {"name", "asns", "blocks", "os", "gpu", "where"}
        if unknown:
            raise ValueError(f"unknown adversary field(s) {sorted(unknown)} in {spec!r}")
        adversary = cls(
            name=fields["name"],
            asns=int(fields["asns"]),
            blocks=int(fields["blocks"]),
            os=tuple(fields["os"].split("+")),
            gpu=tuple(fields["gpu"].split("+")),
            where=fields.get("where", "popular"),
        )
        if not 1 <= adversary.asns <= adversary.blocks:
            raise ValueError(f"{spec!r}: need 1 <= asns <= blocks")
        if adversary.where not in ("popular", "uniform", "fresh"):
            raise ValueError(f"{spec!r}: where is popular, uniform or fresh")
        for value, names in ((adversary.os, OS_NAMES), (adversary.gpu, GPU_NAMES)):
            if value != ("*",) and not set(value) <= set(names):
                raise ValueError(f"{spec!r}: {value} not among {names} (or *)")
        return adversary

    def describe(self) -> str:
        fingerprint = "honest mix (spoofed)" if self.spoofs else f"{'+'.join(self.os)} / {'+'.join(self.gpu)}"
        return f"{self.asns} ASNs ({self.where}), {self.blocks} /24s, {fingerprint}"


def sybil_group(
    adversary: Adversary,
    count: int,
    honest: Population,
    model: FleetModel,
    rng: np.random.Generator,
    *,
    weights: str,
) -> Population:
    """`count` Sybils, each with its own owner account; a prefix of the group is a smaller group."""
    if adversary.where == "fresh":
        asns = model.asn_count + np.arange(adversary.asns)
    else:
        p = model.asn_shares() if adversary.where == "popular" else None
        asns = rng.choice(model.asn_count, size=adversary.asns, replace=False, p=p)
    i = np.arange(count)
    block_local = i % adversary.blocks
    if adversary.spoofs:
        donors = rng.integers(0, len(honest), size=count)
        os_codes, gpu_codes = honest.os[donors], honest.gpu[donors]
    else:
        os_codes = np.array([OS_NAMES.index(o) for o in adversary.os])[i % len(adversary.os)]
        gpu_codes = np.array([GPU_NAMES.index(g) for g in adversary.gpu])[(i // len(adversary.os)) % len(adversary.gpu)]
    pool = honest.weight if weights == "equal" else honest.weight[honest.weight >= np.quantile(honest.weight, 0.9)]
    return Population(
        node_ids=[f"sybil-{adversary.name}-{k}" for k in range(count)],
        weight=rng.choice(pool, size=count),
        owner=honest.owner.max() + 1 + i,
        block=honest.block.max() + 1 + block_local,
        asn=asns[block_local % adversary.asns],
        os=os_codes,
        gpu=gpu_codes,
        sybil=np.ones(count, dtype=bool),
    )


def sybil_count(honest: int, fraction: float) -> int:
    return round(honest * fraction / (1.0 - fraction))


# ---------------------------------------------------------------- exact values (ideal hashing)


def _compatible(pop: Population, rows: np.ndarray, policy: Sequence[str]) -> np.ndarray:
    ok = np.ones((len(rows), len(pop)), dtype=bool)
    for attr in {"owner_id", *policy}:
        codes = pop.codes(attr)
        ok &= codes[rows, None] != codes[None, :]
    return ok


def exact_collusion(pop: Population, policy: Sequence[str], *, chunk: int = 256) -> tuple[float, float]:
    """(P(both picks are Sybils), P(first pick is a Sybil)) under ideal hashing."""
    w = pop.weight
    total = w.sum()
    sybils = np.flatnonzero(pop.sybil)
    collude = 0.0
    for start in range(0, len(sybils), chunk):
        rows = sybils[start : start + chunk]
        ok = _compatible(pop, rows, policy)
        w_ok = ok @ w
        w_sybil_ok = ok[:, sybils] @ w[sybils]
        has = w_ok > 0
        collude += float(np.sum(w[rows][has] / total * w_sybil_ok[has] / w_ok[has]))
    return collude, float(w[sybils].sum() / total)


def exact_picks(pop: Population, policy: Sequence[str], *, chunk: int = 256) -> dict[str, Any]:
    """Per node: P(first pick), P(second pick); and P(fewer than 2 qualify)."""
    w = pop.weight
    total = w.sum()
    first = w / total
    second = np.zeros(len(pop))
    fail = 0.0
    for start in range(0, len(pop), chunk):
        rows = np.arange(start, min(start + chunk, len(pop)))
        ok = _compatible(pop, rows, policy)
        w_ok = ok @ w
        has = w_ok > 0
        fail += float(first[rows][~has].sum())
        coef = np.where(has, first[rows] / np.where(has, w_ok, 1.0), 0.0)
        second += (coef @ ok) * w
    return {"first": first, "second": second, "fail": fail}


# ---------------------------------------------------------------- Monte Carlo with the real rules


@dataclass
class Scenario:
    label: str
    adversary: str  # "" for the honest fleet alone
    fraction: float
    pop: Population  # honest nodes first, then Sybils: the candidate order select_nodes sees
    sybil_slice: tuple[int, int]  # the Sybils' columns in the batch's Sybil score matrix
    _candidates: tuple[list[Candidate], dict[str, int]] | None = field(default=None, repr=False)

    def candidates(self) -> tuple[list[Candidate], dict[str, int]]:
        """select_nodes' input for this population, and each node's position in it."""
        if self._candidates is None:
            candidates = self.pop.candidates()
            self._candidates = (candidates, {c.node_id: i for i, c in enumerate(candidates)})
        return self._candidates


def _top(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column indices and scores of each row's best m, and the score below which that set
    may be missing nodes (-inf when it holds them all)."""
    n = scores.shape[1]
    if n <= m:
        idx = np.broadcast_to(np.arange(n), scores.shape).copy()
        return idx, scores.copy(), np.full(scores.shape[0], -np.inf)
    idx = np.argpartition(-scores, m - 1, axis=1)[:, :m]
    top = np.take_along_axis(scores, idx, axis=1)
    return idx, top, top.min(axis=1)


def simulate(
    keys: list[str],
    honest: Population,
    sybil_pool: Population,
    scenarios: list[Scenario],
    *,
    head: int = 32,
    batch: int = 200,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """Picks (A, B) per job for each scenario and policy, as positions in scenario.pop
    (B = -1 when no second node qualifies); and per scenario how many job x policy picks
    were left to select_nodes because the merged prefix could not decide them."""
    honest_hashes = np.fromiter((hash64(i) for i in honest.node_ids), dtype=np.uint64, count=len(honest))
    sybil_hashes = np.fromiter((hash64(i) for i in sybil_pool.node_ids), dtype=np.uint64, count=len(sybil_pool))
    n_honest = len(honest)
    jobs = len(keys)
    picks = {s.label: {p: np.full((jobs, 2), -1, dtype=np.int64) for p in POLICIES} for s in scenarios}
    codes = {s.label: {a: s.pop.codes(a) for a in ATTRIBUTES} for s in scenarios}
    fallbacks = {s.label: 0 for s in scenarios}
    started = time.perf_counter()
    for lo in range(0, jobs, batch):
        batch_keys = keys[lo : lo + batch]
        honest_scores = np.stack([rendezvous_scores(k, honest_hashes, honest.weight) for k in batch_keys])
        sybil_scores = np.stack([rendezvous_scores(k, sybil_hashes, sybil_pool.weight) for k in batch_keys])
        h_idx, h_top, h_floor = _top(honest_scores, head)
        for s in scenarios:
            a, b = s.sybil_slice
            s_idx, s_top, s_floor = _top(sybil_scores[:, a:b], head)
            idx = np.concatenate([h_idx, n_honest + s_idx], axis=1)
            top = np.concatenate([h_top, s_top], axis=1)
            order = np.lexsort((idx, -top), axis=1)  # rank order, ties by candidate order
            idx = np.take_along_axis(idx, order, axis=1)
            top = np.take_along_axis(top, order, axis=1)
            known = top > np.maximum(h_floor, s_floor)[:, None]  # the exact global rank prefix
            for p, policy in POLICIES.items():
                clash = np.zeros((len(batch_keys), idx.shape[1] - 1), dtype=bool)
                for attr in {"owner_id", *policy}:
                    c = codes[s.label][attr][idx]
                    clash |= c[:, 1:] == c[:, :1]
                ok = ~clash & known[:, 1:]
                decided = known[:, 0] & ok.any(axis=1)
                out = picks[s.label][p][lo : lo + len(batch_keys)]
                out[:, 0] = idx[:, 0]
                out[:, 1] = np.where(decided, idx[np.arange(len(idx)), ok.argmax(axis=1) + 1], -1)
                for row in np.flatnonzero(~decided):
                    fallbacks[s.label] += 1
                    out[row] = _select_positions(batch_keys[row], s, policy)
        if lo == 0 or (lo // batch) % 20 == 0:
            log(f"  jobs {lo + len(batch_keys):>7}/{jobs}  {time.perf_counter() - started:6.1f}s")
    return picks, fallbacks


def _select_positions(key: str, scenario: Scenario, policy: Sequence[str], k: int = 2) -> np.ndarray:
    """select_nodes itself, as positions in scenario.pop (-1 where it found fewer)."""
    candidates, position = scenario.candidates()
    chosen = [position[c.node_id] for c in select_nodes(key, candidates, k, distinct=policy)]
    return np.array(chosen + [-1] * (k - len(chosen)), dtype=np.int64)


def verify_equivalence(
    keys: list[str], scenarios: list[Scenario], picks: dict[str, dict[str, np.ndarray]], per_scenario: int
) -> dict[str, int]:
    """Re-run a sample of jobs through select_nodes: half where the adversary won the first
    pick (where the rules matter), half at random."""
    rng = np.random.default_rng(7)
    checked = mismatches = 0
    for s in scenarios:
        first = picks[s.label]["a"][:, 0]
        sybil_first = np.flatnonzero(s.pop.sybil[first])
        chosen = set(rng.choice(sybil_first, size=min(per_scenario // 2, len(sybil_first)), replace=False).tolist())
        chosen |= set(rng.choice(len(keys), size=per_scenario - len(chosen), replace=False).tolist())
        for j in sorted(chosen):
            for p, policy in POLICIES.items():
                checked += 1
                expected = _select_positions(keys[j], s, policy)
                if not np.array_equal(expected, picks[s.label][p][j]):
                    mismatches += 1
                    log(f"MISMATCH {s.label} policy {p} job {keys[j]}: {picks[s.label][p][j]} vs {expected}")
    return {"jobs_x_policies_checked": checked, "mismatches": mismatches}


# ---------------------------------------------------------------- statistics


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def ratio_interval(x_num: int, x_den: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(estimate, low, high) of p_num / p_den from counts over n jobs each. Katz log interval
    when both counts are positive (it treats the samples as independent; the jobs are
    shared, which only narrows the true interval); with no events in the denominator the
    estimate is infinite and the low end is the ratio of the Wilson bounds."""
    if x_num == 0 and x_den == 0:
        return math.nan, 0.0, math.inf
    if x_den == 0:
        return math.inf, wilson(x_num, n)[0] / wilson(0, n)[1], math.inf
    if x_num == 0:
        return 0.0, 0.0, wilson(0, n)[1] / wilson(x_den, n)[0]
    estimate = x_num / x_den
    se = math.sqrt(1 / x_num - 1 / n + 1 / x_den - 1 / n)
    return estimate, estimate * math.exp(-z * se), estimate * math.exp(z * se)


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


def pick_costs(pop: Population, first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Shift away from weight-proportional, from per-node pick probabilities (or counts)."""
    share = (first + second) / (first + second).sum()
    ideal = pop.weight / pop.weight.sum()
    top = pop.weight >= np.quantile(pop.weight, 0.9)
    return {
        "top_decile_share": float(share[top].sum()),
        "top_decile_weight_share": float(ideal[top].sum()),
        "tv_to_weight_proportional": float(0.5 * np.abs(share - ideal).sum()),
    }


# ---------------------------------------------------------------- the run


def fmt_p(p: float) -> str:
    if p == 0:
        return "0"
    return f"{p:.2e}"


def fmt_x(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if x < 1000 else f"{x:.3e}"


def small_subnet_failures(
    honest: Population, sizes: Sequence[int], samples: int, jobs_each: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Random subnets drawn from the honest fleet: P(no 2nd node) exactly, and with
    select_nodes itself for k=2 and k=3 (a third node for adjudication)."""
    rows = []
    for size in sizes:
        subsets = [rng.choice(len(honest), size=size, replace=False) for _ in range(samples)]
        for p, policy in POLICIES.items():
            exact = []
            short2 = short3 = trials = 0
            for index in subsets:
                sub = honest.take(index)
                exact.append(exact_picks(sub, policy)["fail"])
                candidates = sub.candidates()
                for j in range(jobs_each):
                    got = len(select_nodes(f"subnet-{size}-{j}", candidates, 3, distinct=policy))
                    short2 += got < 2
                    short3 += got < 3
                    trials += 1
            rows.append(
                {
                    "nodes": size,
                    "policy": p,
                    "fail_k2_exact": float(np.mean(exact)),
                    "fail_k2_mc": short2 / trials,
                    "fail_k3_mc": short3 / trials,
                    "trials": trials,
                }
            )
    return rows


def asn_sweep(honest: Population, model: FleetModel, fraction: float, weights: str, seed: int) -> list[dict[str, Any]]:
    """Exact reduction factors as the adversary spreads over more ASNs (4 /24s per ASN)."""
    rows = []
    count = sybil_count(len(honest), fraction)
    for asns in (1, 2, 3, 5, 10, 30, 100, 300):
        row: dict[str, Any] = {"asns": asns}
        for label, fingerprint in (("one_fingerprint", "os=linux,gpu=nvidia"), ("spoofed", "os=*,gpu=*")):
            adversary = Adversary.parse(f"name=sweep,asns={asns},blocks={4 * asns},{fingerprint}")
            rng = np.random.default_rng([seed, 99, asns])
            pop = honest + sybil_group(adversary, count, honest, model, rng, weights=weights)
            p = {q: exact_collusion(pop, policy)[0] for q, policy in POLICIES.items()}
            row[label] = {"a_over_b": _ratio(p["a"], p["b"]), "a_over_c": _ratio(p["a"], p["c"])}
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 3,000 honest nodes, two adversaries")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--honest", type=int, default=10_000)
    parser.add_argument("--fractions", default="0.01,0.05,0.20", help="Sybil share of all nodes")
    parser.add_argument("--adversary", action="append", help="repeatable; see the module docstring")
    parser.add_argument("--sybil-weight", choices=("high", "equal"), default="high")
    parser.add_argument("--asn-zipf", type=float, default=1.0)
    parser.add_argument("--verify", type=int, default=20, help="jobs per population re-run through select_nodes")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.honest, args.verify = min(args.jobs, 2_000), min(args.honest, 3_000), min(args.verify, 6)
    specs = args.adversary or (DEFAULT_ADVERSARIES[::2] if args.quick else DEFAULT_ADVERSARIES)
    adversaries = [Adversary.parse(spec) for spec in specs]
    fractions = [float(f) for f in args.fractions.split(",")]
    started = time.perf_counter()

    model = FleetModel(honest=args.honest, asn_zipf=args.asn_zipf)
    honest = honest_fleet(model, np.random.default_rng([args.seed, 0]))
    sybil_pools = []
    for n, adversary in enumerate(adversaries):
        rng = np.random.default_rng([args.seed, 1, n])
        count = sybil_count(len(honest), max(fractions))
        sybil_pools.append(sybil_group(adversary, count, honest, model, rng, weights=args.sybil_weight))
    pool = sybil_pools[0]
    for extra in sybil_pools[1:]:
        pool = pool + extra

    scenarios = [Scenario("honest fleet", "", 0.0, honest, (0, 0))]
    offset = 0
    for adversary, group in zip(adversaries, sybil_pools, strict=True):
        for fraction in fractions:
            count = sybil_count(len(honest), fraction)
            label = f"{adversary.name} {fraction:.0%}"
            scenarios.append(
                Scenario(label, adversary.name, fraction, honest + group.head(count), (offset, offset + count))
            )
        offset += len(group)

    keys = [f"job-{i}" for i in range(args.jobs)]
    log(f"simulating {args.jobs} jobs x {len(scenarios)} populations x {len(POLICIES)} policies")
    picks, fallbacks = simulate(keys, honest, pool, scenarios)
    mc_s = time.perf_counter() - started
    log(f"verifying against select_nodes ({args.verify} jobs per population)")
    equivalence = verify_equivalence(keys, scenarios, picks, args.verify)
    equivalence["fallback_jobs"] = int(sum(fallbacks.values()))

    log("exact values")
    jobs = args.jobs
    collusion_rows = []
    for s in scenarios[1:]:
        base: dict[str, Any] = {}
        for p, policy in POLICIES.items():
            pair = picks[s.label][p]
            both = int(np.sum(s.pop.sybil[pair[:, 0]] & (pair[:, 1] >= 0) & s.pop.sybil[pair[:, 1]]))
            exact, first_share = exact_collusion(s.pop, policy)
            row = {
                "adversary": s.adversary,
                "fraction": s.fraction,
                "sybils": int(s.pop.sybil.sum()),
                "policy": p,
                "collusions": both,
                "jobs": jobs,
                "p_mc": both / jobs,
                "p_mc_ci95": list(wilson(both, jobs)),
                "p_exact": exact,
                "p_first_pick_sybil_exact": first_share,
                "fail_mc": float(np.mean(pair[:, 1] < 0)),
                "second_pick_moved": float(np.mean(pair[:, 1] != picks[s.label]["a"][:, 1])),
            }
            if p == "a":
                base = row
            estimate, low, high = ratio_interval(base["collusions"], both, jobs)
            row["reduction_mc"] = estimate
            row["reduction_mc_ci95"] = [low, high]
            row["reduction_exact"] = _ratio(base["p_exact"], exact)
            collusion_rows.append(row)

    cost_rows = []
    exact_a = exact_picks(honest, POLICIES["a"])
    for p, policy in POLICIES.items():
        exact = exact_a if p == "a" else exact_picks(honest, policy)
        pair = picks["honest fleet"][p]
        counts = np.bincount(pair[:, 0], minlength=len(honest)).astype(float)
        seconds = np.bincount(pair[pair[:, 1] >= 0, 1], minlength=len(honest)).astype(float)
        share = (exact["first"] + exact["second"]) / (exact["first"] + exact["second"]).sum()
        share_a = (exact_a["first"] + exact_a["second"]) / (exact_a["first"] + exact_a["second"]).sum()
        os_second = {
            name: float(exact["second"][honest.os == code].sum() / exact["second"].sum())
            for code, name in enumerate(OS_NAMES)
        }
        cost_rows.append(
            {
                "policy": p,
                "fail_exact": exact["fail"],
                "fail_mc": float(np.mean(pair[:, 1] < 0)),
                "second_pick_moved_mc": float(np.mean(pair[:, 1] != picks["honest fleet"]["a"][:, 1])),
                **{f"{k}_exact": v for k, v in pick_costs(honest, exact["first"], exact["second"]).items()},
                "top_decile_share_mc": pick_costs(honest, counts, seconds)["top_decile_share"],
                "tv_to_policy_a_exact": float(0.5 * np.abs(share - share_a).sum()),
                "max_node_load_vs_policy_a_exact": float(np.max(share / share_a)),
                "second_pick_share_by_os_exact": os_second,
            }
        )

    log("small subnets")
    small = small_subnet_failures(
        honest,
        (4, 8, 16, 32, 64) if not args.quick else (4, 16),
        samples=100 if not args.quick else 20,
        jobs_each=10,
        rng=np.random.default_rng([args.seed, 2]),
    )
    log("ASN sweep")
    sweep = asn_sweep(honest, model, 0.05, args.sybil_weight, args.seed)
    elapsed = time.perf_counter() - started

    # ---- the tables
    os_share = {name: float(np.mean(honest.os == code)) for code, name in enumerate(OS_NAMES)}
    asn_counts = np.sort(np.bincount(honest.asn))[::-1]
    print(
        f"Honest fleet: {len(honest)} nodes, {len(np.unique(honest.owner))} owners "
        f"(largest {np.bincount(honest.owner).max()}), {len(np.unique(honest.block))} /24s, "
        f"{len(np.unique(honest.asn))} ASNs (top 1 / top 10 hold {asn_counts[0] / len(honest):.0%} / "
        f"{asn_counts[:10].sum() / len(honest):.0%}); " + ", ".join(f"{k} {v:.0%}" for k, v in os_share.items())
    )
    print(f"Sybil weights: {args.sybil_weight}; {jobs} jobs; seed {args.seed}")
    for adversary in adversaries:
        print(f"  {adversary.name}: {adversary.describe()}")
    print()
    print("P(both nodes of a job are the adversary's): Monte Carlo with select_nodes' rules [95% Wilson CI],")
    print("exact value under ideal hashing, and reduction factor vs policy (a) (MC [95% CI] and exact).")
    header = (
        f"{'adversary':<14}{'f':>5}{'sybils':>7} {'pol':<9}{'pairs':>6} {'P(collude) MC [95% CI]':<30}"
        f"{'exact':>9}  {'reduction MC [95% CI]':<24}{'exact':>9} {'2nd moved':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in collusion_rows:
        lead = f"{row['adversary']:<14}{row['fraction']:>5.0%}{row['sybils']:>7} " if row["policy"] == "a" else " " * 27
        low, high = row["p_mc_ci95"]
        ci = f"{fmt_p(row['p_mc'])} [{fmt_p(low)}, {fmt_p(high)}]"
        r_low, r_high = row["reduction_mc_ci95"]
        reduction = "" if row["policy"] == "a" else f"{fmt_x(row['reduction_mc'])} [{fmt_x(r_low)}, {fmt_x(r_high)}]"
        print(
            f"{lead}{row['policy'] + ' ' + POLICY_NAMES[row['policy']]:<9}{row['collusions']:>6} {ci:<30}"
            f"{fmt_p(row['p_exact']):>9}  {reduction:<24}{fmt_x(row['reduction_exact']) if row['policy'] != 'a' else '':>9}"
            f" {row['second_pick_moved']:>8.1%}"
        )
        if row["policy"] == "c":
            print()
    print("Cost on the honest fleet (no adversary):")
    header = (
        f"{'policy':<10}{'fail exact':>11}{'fail MC':>9}{'2nd moved':>10}{'top-decile share':>18}"
        f"{'(weight share)':>15}{'TV to w':>9}{'TV to (a)':>10}{'max load/(a)':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in cost_rows:
        print(
            f"{row['policy'] + ' ' + POLICY_NAMES[row['policy']]:<10}{fmt_p(row['fail_exact']):>11}"
            f"{row['fail_mc']:>9.2%}{row['second_pick_moved_mc']:>10.1%}"
            f"{row['top_decile_share_exact']:>10.1%} (MC {row['top_decile_share_mc']:.1%})"
            f"{row['top_decile_weight_share_exact']:>11.1%}{row['tv_to_weight_proportional_exact']:>11.3f}"
            f"{row['tv_to_policy_a_exact']:>10.3f}{row['max_node_load_vs_policy_a_exact']:>13.2f}"
        )
    print("  second picks by OS (exact): ")
    for row in cost_rows:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in row["second_pick_share_by_os_exact"].items())
        print(f"    {row['policy']}: {shares}")
    print()
    print("Small subnets drawn from the honest fleet: P(fewer than 2 nodes qualify), and fewer than 3 (adjudicator)")
    header = f"{'nodes':>6}  {'policy':<10}{'k=2 exact':>10}{'k=2 MC':>9}{'k=3 MC':>9}"
    print(header)
    print("-" * len(header))
    for row in small:
        print(
            f"{row['nodes']:>6}  {row['policy'] + ' ' + POLICY_NAMES[row['policy']]:<10}"
            f"{row['fail_k2_exact']:>10.1%}{row['fail_k2_mc']:>9.1%}{row['fail_k3_mc']:>9.1%}"
        )
    print()
    print("Exact reduction factors at f = 5 % as the adversary spreads over more ASNs (4 /24s per ASN):")
    print(f"{'ASNs':>6}  {'linux/nvidia: (a)/(b)':>22}{'(a)/(c)':>9}  {'spoofed mix: (a)/(b)':>21}{'(a)/(c)':>9}")
    for row in sweep:
        one, spoof = row["one_fingerprint"], row["spoofed"]
        print(
            f"{row['asns']:>6}  {fmt_x(one['a_over_b']):>22}{fmt_x(one['a_over_c']):>9}"
            f"  {fmt_x(spoof['a_over_b']):>21}{fmt_x(spoof['a_over_c']):>9}"
        )
    print()
    print(
        f"select_nodes equivalence: {equivalence['jobs_x_policies_checked']} job x policy picks re-run, "
        f"{equivalence['mismatches']} mismatches; {equivalence['fallback_jobs']} job x policy picks needed the "
        f"full ranking. Monte Carlo {mc_s:.1f}s, total {elapsed:.1f}s."
    )

    result = {
        "config": {
            "jobs": jobs,
            "honest": len(honest),
            "fractions": fractions,
            "sybil_weight": args.sybil_weight,
            "asn_zipf": args.asn_zipf,
            "seed": args.seed,
            "adversaries": {a.name: a.describe() for a in adversaries},
            "policies": {p: list(v) for p, v in POLICIES.items()},
        },
        "fleet": {
            "owners": len(np.unique(honest.owner)),
            "blocks": len(np.unique(honest.block)),
            "asns": len(np.unique(honest.asn)),
            "top_asn_share": float(asn_counts[0] / len(honest)),
            "top10_asn_share": float(asn_counts[:10].sum() / len(honest)),
            "os_share": os_share,
        },
        "collusion": collusion_rows,
        "cost_honest_fleet": cost_rows,
        "small_subnets": small,
        "asn_sweep_f5": sweep,
        "equivalence": equivalence,
        "seconds": {"monte_carlo": round(mc_s, 1), "total": round(elapsed, 1)},
    }
    print(json.dumps(_plain(result), allow_nan=False))
    if equivalence["mismatches"]:
        raise SystemExit("the vectorized picks differ from select_nodes")
    return result


def _plain(value: Any) -> Any:
    """Strict JSON: numpy scalars as numbers, an infinite factor as "inf", undefined as null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


if __name__ == "__main__":
    main()

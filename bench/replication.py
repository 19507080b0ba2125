"""Adaptive replication vs plain 2-of-2: node executions per settled user job and the
false-accept rate of each, on the same simulated population (issue 5, "beyond the paper").

Population (100 nodes, so each earns trust within the run): honest nodes always return the right answer; a share of "sleepers" behave until
they are trusted (adaptive_min_jobs agreed jobs) and then forge with probability `cheat`
(the strongest attack on adaptive replication: earn trust, then exploit solo jobs). Both
policies run the same honeypot rate and the same strike/ban rules (bim_core.scoring's
reputation update, 3 active strikes = ban). Forgers collude: two forgers on one job agree.

Policies: (a) every job on two nodes, a third on a mismatch (2-of-3); (b) adaptive: a
trusted node (enough agreed jobs, reputation >= 0.8, no strike) runs alone with probability
1 - p, otherwise (a). The baseline in the same run is (a).

    .venv/bin/python bench/replication.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bim_core.scoring import ReputationPolicy, reputation_after_job  # noqa: E402

POLICY = ReputationPolicy()


@dataclass(eq=False)
class SimNode:
    sleeper: bool
    agreed: int = 0
    reputation: float = POLICY.initial
    strikes: int = 0
    banned: bool = False

    def forges(self, rng: random.Random, cheat: float, trust_after: int) -> bool:
        return self.sleeper and self.agreed >= trust_after and rng.random() < cheat

    def outcome(self, won: bool) -> None:
        self.reputation = reputation_after_job(self.reputation, 1.0 if won else 0.0, jobs_done=self.agreed, policy=POLICY)
        if won:
            self.agreed += 1
        else:
            self.strikes += 1
            self.banned = self.strikes >= POLICY.strikes_to_ban


@dataclass
class Tally:
    user_jobs: int = 0
    executions: int = 0
    false_accepts: int = 0
    solo_jobs: int = 0
    banned_sleepers: int = 0
    by_honeypot: int = field(default=0)


def simulate(*, adaptive: bool, nodes: int, sleepers: float, jobs: int, p: float, honeypot: float, cheat: float, trust_after: int, seed: int) -> Tally:
    rng = random.Random(seed)
    pool = [SimNode(sleeper=i < int(nodes * sleepers)) for i in range(nodes)]
    tally = Tally()

    def pick(k: int, avoid: list[SimNode]) -> list[SimNode]:
        chosen: list[SimNode] = []
        while len(chosen) < k:
            node = pool[rng.randrange(len(pool))]
            if not node.banned and node not in avoid and node not in chosen:
                chosen.append(node)
        return chosen

    def trusted(node: SimNode) -> bool:
        return node.agreed >= trust_after and node.reputation >= 0.8 and node.strikes == 0

    while tally.user_jobs < jobs:
        if rng.random() < honeypot:  # the registry knows the answer: every forger is caught
            for node in pick(2, []):
                tally.executions += 1
                forged = node.forges(rng, cheat, trust_after)
                node.outcome(not forged)
                tally.by_honeypot += forged
            continue
        tally.user_jobs += 1
        first = pick(1, [])[0]
        if adaptive and trusted(first) and rng.random() >= p:
            tally.solo_jobs += 1
            tally.executions += 1
            tally.false_accepts += first.forges(rng, cheat, trust_after)  # unchecked: accepted as is
            continue
        a, b = first, pick(1, [first])[0]
        forged_a, forged_b = a.forges(rng, cheat, trust_after), b.forges(rng, cheat, trust_after)
        tally.executions += 2
        if forged_a == forged_b:
            tally.false_accepts += forged_a  # agreeing forgers are accepted
            a.outcome(True), b.outcome(True)
            continue
        c = pick(1, [a, b])[0]  # mismatch: a tie-breaker decides
        tally.executions += 1
        forged_c = c.forges(rng, cheat, trust_after)
        majority_forged = forged_c
        tally.false_accepts += majority_forged
        for node, forged in ((a, forged_a), (b, forged_b), (c, forged_c)):
            node.outcome(forged == majority_forged)
    tally.banned_sleepers = sum(n.banned for n in pool if n.sleeper)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--p", type=float, default=0.10, help="check probability of a trusted node's job")
    parser.add_argument("--honeypot", type=float, default=0.05)
    args = parser.parse_args()
    jobs = 50_000 if args.quick else 400_000
    rows = []
    for sleepers in (0.0, 0.01, 0.05):
        for cheat in (0.1, 1.0):
            common = dict(nodes=100, sleepers=sleepers, jobs=jobs, p=args.p, honeypot=args.honeypot, cheat=cheat, trust_after=200, seed=7)
            pair, adaptive = simulate(adaptive=False, **common), simulate(adaptive=True, **common)
            row = {
                "sleepers": sleepers,
                "cheat": cheat,
                "pair_executions_per_job": round(pair.executions / pair.user_jobs, 3),
                "adaptive_executions_per_job": round(adaptive.executions / adaptive.user_jobs, 3),
                "redundancy_ratio": round(adaptive.executions / pair.executions, 3),
                "pair_false_accept_rate": pair.false_accepts / pair.user_jobs,
                "adaptive_false_accept_rate": adaptive.false_accepts / adaptive.user_jobs,
                "adaptive_solo_share": round(adaptive.solo_jobs / adaptive.user_jobs, 3),
                "sleepers_banned_pair": pair.banned_sleepers,
                "sleepers_banned_adaptive": adaptive.banned_sleepers,
            }
            rows.append(row)
            print(
                f"sleepers {sleepers:5.0%} cheat {cheat:4.0%}  executions/job pair {row['pair_executions_per_job']:.3f}"
                f" adaptive {row['adaptive_executions_per_job']:.3f}  false accepts pair {row['pair_false_accept_rate']:.2e}"
                f" adaptive {row['adaptive_false_accept_rate']:.2e}  solo {row['adaptive_solo_share']:.0%}",
                file=sys.stderr,
            )
    print(json.dumps({"benchmark": "replication", "jobs": jobs, "p": args.p, "honeypot_rate": args.honeypot, "rows": rows}))


if __name__ == "__main__":
    main()

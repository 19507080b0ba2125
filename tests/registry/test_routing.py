"""Weighted rendezvous hashing: stable picks, distinct owners, exclusions, weights that
show up as win shares, and minimal disruption when the candidate set changes. Pure: no
database, fixed keys, so every number here is deterministic."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from bim_core.selection import Candidate, hash64, rendezvous_scores, select_nodes, uniform_hashes

JOB_KEYS = [f"job-{i}" for i in range(20_000)]
MASK64 = (1 << 64) - 1
SPLITMIX_1 = 0xBF58476D1CE4E5B9
SPLITMIX_2 = 0x94D049BB133111EB


def candidates(count: int, *, owners: int | None = None, weight: float = 1.0) -> list[Candidate]:
    """`count` nodes spread round-robin over `owners` owners (one owner each by default)."""
    owners = owners or count
    return [Candidate(node_id=f"node-{i}", owner_id=f"owner-{i % owners}", weight=weight) for i in range(count)]


def ids(picks: list[Candidate]) -> list[str]:
    return [c.node_id for c in picks]


def winners(pool: list[Candidate], keys: list[str]) -> dict[str, str]:
    return {key: select_nodes(key, pool, 1)[0].node_id for key in keys}


def _unxorshift(y: int, shift: int) -> int:
    x = y
    for _ in range(64 // shift + 1):
        x = y ^ (x >> shift)
    return x & MASK64


def node_hash_mixing_to(job_key: str, mixed: int) -> int:
    """The node hash whose splitmix64 mix with `job_key` is `mixed` (the finalizer is a
    bijection, so each step can be undone)."""
    x = _unxorshift(mixed, 31)
    x = (x * pow(SPLITMIX_2, -1, 1 << 64)) & MASK64
    x = _unxorshift(x, 27)
    x = (x * pow(SPLITMIX_1, -1, 1 << 64)) & MASK64
    x = _unxorshift(x, 30)
    return x ^ hash64(job_key)


# ---------------------------------------------------------------- determinism


def test_the_same_job_key_picks_the_same_nodes_whatever_the_candidate_order():
    pool = candidates(12)
    first = select_nodes("job-42", pool, 3)
    shuffled = pool[:]
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert ids(select_nodes("job-42", shuffled, 3)) == ids(first)
    assert len(first) == 3


def test_different_job_keys_spread_over_the_nodes():
    pool = candidates(8)
    assert len({select_nodes(key, pool, 1)[0].node_id for key in JOB_KEYS[:200]}) == 8


def test_picks_come_in_rank_order_of_their_scores():
    pool = candidates(10)
    node_hashes = np.array([hash64(c.node_id) for c in pool], dtype=np.uint64)
    scores = rendezvous_scores("job-7", node_hashes, np.ones(len(pool)))
    expected = [pool[i].node_id for i in np.argsort(-scores)[:4]]
    assert ids(select_nodes("job-7", pool, 4)) == expected


# ---------------------------------------------------------------- who may be picked


def test_it_never_picks_two_nodes_of_one_owner():
    pool = candidates(30, owners=4)
    for key in JOB_KEYS[:300]:
        picks = select_nodes(key, pool, 4)
        assert len(picks) == 4
        assert len({c.owner_id for c in picks}) == 4


def test_it_returns_fewer_than_k_when_too_few_owners_qualify():
    pool = candidates(6, owners=2)
    picks = select_nodes("job-1", pool, 3)
    assert len(picks) == 2
    assert {c.owner_id for c in picks} == {"owner-0", "owner-1"}


@pytest.mark.parametrize("k", [0, -1])
def test_it_picks_nothing_for_a_non_positive_k(k):
    assert select_nodes("job-1", candidates(4), k) == []


def test_it_picks_nothing_from_an_empty_pool():
    assert select_nodes("job-1", [], 2) == []


def test_excluded_nodes_are_never_picked_but_their_owners_other_nodes_are():
    pool = candidates(10, owners=5)  # node-i and node-(i+5) share owner-i
    excluded = {"node-0", "node-1", "node-2"}
    seen = set()
    for key in JOB_KEYS[:500]:
        picks = select_nodes(key, pool, 2, exclude_node_ids=excluded)
        assert not excluded & set(ids(picks))
        seen.update(ids(picks))
    assert {"node-5", "node-6", "node-7"} <= seen


def test_excluded_owners_are_never_picked():
    pool = candidates(12, owners=4)
    for key in JOB_KEYS[:500]:
        picks = select_nodes(key, pool, 2, exclude_owner_ids=["owner-1", "owner-3"])
        assert {c.owner_id for c in picks} == {"owner-0", "owner-2"}


def test_excluding_every_owner_leaves_nothing():
    assert select_nodes("job-1", candidates(4), 2, exclude_owner_ids=[f"owner-{i}" for i in range(4)]) == []


@pytest.mark.parametrize("bad_weight", [0.0, -1.0])
def test_a_node_without_positive_weight_is_never_picked(bad_weight):
    pool = [*candidates(3), Candidate(node_id="dead", owner_id="owner-dead", weight=bad_weight)]
    for key in JOB_KEYS[:500]:
        assert "dead" not in ids(select_nodes(key, pool, 4))
    assert select_nodes("job-1", [pool[-1]], 1) == []


def test_distinct_ip_blocks_are_enforced_when_asked():
    # Six owners behind two /24 blocks: distinct owners alone would allow four picks.
    pool = [
        Candidate(node_id=f"node-{i}", owner_id=f"owner-{i}", weight=1.0, ip_block=f"10.0.{i % 2}.0/24")
        for i in range(6)
    ]
    assert len(select_nodes("job-1", pool, 4)) == 4
    for key in JOB_KEYS[:300]:
        picks = select_nodes(key, pool, 4, distinct=("owner_id", "ip_block"))
        assert len(picks) == 2
        assert {c.ip_block for c in picks} == {"10.0.0.0/24", "10.0.1.0/24"}


# ---------------------------------------------------------------- the hash


@pytest.mark.parametrize(
    "axis",
    ["many_jobs_one_node", "one_job_many_nodes", "one_job_consecutive_node_hashes"],
)
def test_uniform_hashes_look_uniform_on_the_open_unit_interval(axis):
    n = 20_000
    if axis == "many_jobs_one_node":
        node_hash = np.array([hash64("node-0")], dtype=np.uint64)
        h = np.concatenate([uniform_hashes(key, node_hash) for key in JOB_KEYS[:n]])
    elif axis == "one_job_many_nodes":
        node_hashes = np.random.default_rng(1234).integers(0, 2**64, size=n, dtype=np.uint64)
        h = uniform_hashes("job-0", node_hashes)
    else:
        h = uniform_hashes("job-0", np.arange(n, dtype=np.uint64))

    assert h.shape == (n,)
    assert np.all((h > 0) & (h < 1))
    # Kolmogorov-Smirnov distance to U(0, 1); 1.95/sqrt(n) is the 0.1 % critical value.
    x = np.sort(h)
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    ks = max(np.max(ecdf_hi - x), np.max(x - ecdf_lo))
    assert ks < 1.95 / np.sqrt(n)
    # Chi-square over 50 equal bins; 85.4 is the 0.1 % critical value for 49 degrees of freedom.
    counts = np.bincount((x * 50).astype(int), minlength=50)
    expected = n / 50
    assert ((counts - expected) ** 2 / expected).sum() < 85.4


def test_uniform_hashes_stay_inside_the_open_interval_at_both_extremes():
    """The two node hashes whose mix with the job is 0 and 2**64 - 1: the smallest and
    largest h the function can produce must still lie strictly inside (0, 1), so that
    ln(h) is finite and non-zero and no node's score is infinite."""
    key = "job-0"
    node_hashes = np.array([node_hash_mixing_to(key, 0), node_hash_mixing_to(key, MASK64)], dtype=np.uint64)
    h = uniform_hashes(key, node_hashes)
    assert 0 < h[0] < 1e-15
    assert 1 - 1e-15 < h[1] < 1, f"largest hash is {h[1]!r}"
    assert np.all(np.isfinite(rendezvous_scores(key, node_hashes, np.ones(2))))


# ---------------------------------------------------------------- weights and disruption


def test_weights_set_win_shares_in_proportion():
    weights = [1.0, 2.0, 3.0, 4.0]
    pool = [Candidate(node_id=f"node-{i}", owner_id=f"owner-{i}", weight=w) for i, w in enumerate(weights)]
    wins = Counter(winners(pool, JOB_KEYS).values())
    for i, w in enumerate(weights):
        share = wins[f"node-{i}"] / len(JOB_KEYS)
        # Binomial sd is at most 0.0035 at n = 20,000: 0.015 is over four of them.
        assert share == pytest.approx(w / sum(weights), abs=0.015), (i, share)


def test_doubling_one_nodes_weight_only_moves_jobs_towards_it():
    pool = candidates(5)
    before = winners(pool, JOB_KEYS[:5000])
    heavier = [Candidate(c.node_id, c.owner_id, 2.0 if c.node_id == "node-3" else 1.0) for c in pool]
    after = winners(heavier, JOB_KEYS[:5000])
    moved = [key for key in before if before[key] != after[key]]
    assert moved
    assert all(after[key] == "node-3" for key in moved)
    share = Counter(after.values())["node-3"] / 5000
    assert share == pytest.approx(2 / 6, abs=0.02)


def test_removing_a_node_moves_only_the_jobs_it_had_won():
    pool = candidates(10)
    before = winners(pool, JOB_KEYS[:5000])
    after = winners([c for c in pool if c.node_id != "node-4"], JOB_KEYS[:5000])

    moved = {key for key in before if before[key] != after[key]}
    assert moved == {key for key, node in before.items() if node == "node-4"}
    assert len(moved) == pytest.approx(500, abs=100)


def test_adding_a_node_only_takes_jobs_for_itself():
    pool = candidates(10)
    before = winners(pool, JOB_KEYS[:5000])
    after = winners([*pool, Candidate(node_id="newcomer", owner_id="owner-new", weight=1.0)], JOB_KEYS[:5000])

    moved = {key for key in before if before[key] != after[key]}
    assert moved and all(after[key] == "newcomer" for key in moved)
    assert len(moved) == pytest.approx(5000 / 11, abs=100)

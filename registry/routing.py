"""Node selection: weighted rendezvous (highest-random-weight) hashing.

Pure module (numpy, no Django). Each candidate scores -w / ln(h) with h = hash(job, node)
uniform in (0, 1): the best-scoring node wins with probability proportional to its weight,
the same job key always picks the same nodes while the candidate set is unchanged, and a
node joining or leaving moves only the jobs it wins or loses. Hashing is vectorized: a
node's 64-bit hash is computed once, mixed with the job's hash by splitmix64 in numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class Candidate:
    """A node as routing sees it. `asn` holds the IP block when the ASN is unknown, so an
    ASN rule still separates what it can."""

    node_id: str
    owner_id: str
    weight: float
    ip_block: str = ""
    asn: str = ""
    os: str = ""
    gpu_family: str = ""


# The attributes a subnet's diversity policy may require to differ between a job's nodes.
DIVERSITY_ATTRIBUTES = ("owner_id", "ip_block", "asn", "os", "gpu_family")


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def uniform_hashes(job_key: str, node_hashes: np.ndarray) -> np.ndarray:
    """h(job, node) in the open interval (0, 1), one per node hash."""
    x = node_hashes ^ np.uint64(hash64(job_key))
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    x = x ^ (x >> np.uint64(31))
    # 52 bits + 0.5 is exact in a float64 (53-bit mantissa), so h never rounds to 0 or 1.
    return ((x >> np.uint64(12)).astype(np.float64) + 0.5) / float(1 << 52)


def rendezvous_scores(job_key: str, node_hashes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return -weights / np.log(uniform_hashes(job_key, node_hashes))


def select_nodes(
    job_key: str,
    candidates: Sequence[Candidate],
    k: int,
    *,
    exclude_node_ids: Iterable[str] = (),
    exclude_owner_ids: Iterable[str] = (),
    distinct: Sequence[str] = ("owner_id",),
) -> list[Candidate]:
    """Up to `k` candidates in rank order, no two sharing any attribute named in `distinct`
    (and none sharing an excluded node or owner). Fewer than `k` when too few qualify."""
    excluded_nodes = set(exclude_node_ids)
    taken: dict[str, set[str]] = {attr: set() for attr in distinct}
    taken.setdefault("owner_id", set()).update(exclude_owner_ids)
    pool = [c for c in candidates if c.node_id not in excluded_nodes and c.weight > 0]
    if not pool or k <= 0:
        return []
    node_hashes = np.fromiter((hash64(c.node_id) for c in pool), dtype=np.uint64, count=len(pool))
    weights = np.fromiter((c.weight for c in pool), dtype=np.float64, count=len(pool))
    order = np.argsort(-rendezvous_scores(job_key, node_hashes, weights), kind="stable")
    chosen: list[Candidate] = []
    for index in order:
        candidate = pool[int(index)]
        if any(getattr(candidate, attr) in values for attr, values in taken.items()):
            continue
        chosen.append(candidate)
        for attr, values in taken.items():
            values.add(getattr(candidate, attr))
        if len(chosen) == k:
            break
    return chosen

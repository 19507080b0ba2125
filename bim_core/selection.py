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
    # Has a record of verified jobs (the registry's NODE_VOUCHED_JOBS); two nodes without
    # one are never a job's only checkers while a vouched node is routable.
    vouched: bool = True
    # Operated by the registry (an operator's flag, never the node's word): the only nodes a
    # trusted subnet's jobs may go to (`trusted_only`).
    trusted: bool = False
    # Said at registration it has no WebRTC (the node's word): a peer-to-peer job, whose
    # input comes over a data channel, goes to such a node only when no other can take it.
    webrtc: bool = True


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


class NodeIndex:
    """Candidates as arrays, built once and queried per job: per-node hashes are computed
    at build time, and each selection is one vectorized scoring pass plus a partial sort."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.candidates = [c for c in candidates if c.weight > 0]
        count = len(self.candidates)
        self.node_hashes = np.fromiter((hash64(c.node_id) for c in self.candidates), dtype=np.uint64, count=count)
        self.weights = np.fromiter((c.weight for c in self.candidates), dtype=np.float64, count=count)
        self.position = {c.node_id: i for i, c in enumerate(self.candidates)}
        self.untrusted = np.fromiter((not c.trusted for c in self.candidates), dtype=bool, count=count)
        self.without_webrtc = [c.node_id for c in self.candidates if not c.webrtc]

    def __len__(self) -> int:
        return len(self.candidates)

    def select(
        self,
        job_key: str,
        k: int,
        *,
        exclude_node_ids: Iterable[str] = (),
        exclude_owner_ids: Iterable[str] = (),
        distinct: Sequence[str] = ("owner_id",),
        avoid: Sequence[Candidate] = (),
        trusted_only: bool = False,
    ) -> list[Candidate]:
        """Up to `k` candidates in rank order, no two sharing any attribute named in
        `distinct` (owners always differ) with each other or with the `avoid` nodes (a
        job's remaining nodes), none excluded, and only trusted ones with `trusted_only`
        (a trusted subnet's job). Fewer when too few qualify."""
        if not self.candidates or k <= 0:
            return []
        scores = rendezvous_scores(job_key, self.node_hashes, self.weights)
        if trusted_only:
            # Scored out, not skipped: the trusted nodes' ranks are the ones they would
            # have anyway, so a job's choice among them is as stable as any other.
            scores[self.untrusted] = -np.inf
        for node_id in exclude_node_ids:
            if (i := self.position.get(node_id)) is not None:
                scores[i] = -np.inf
        taken: dict[str, set[str]] = {attr: {getattr(c, attr) for c in avoid} for attr in distinct}
        taken.setdefault("owner_id", set()).update(exclude_owner_ids)
        taken["owner_id"].update(c.owner_id for c in avoid)
        # The winners almost always sit among the best few dozen scores: rank those first
        # and fall back to ranking everything only when diversity rules reject too many.
        head = min(len(scores), max(64, 32 * k))
        for limit in (head, len(scores)):
            chosen = self._greedy(scores, limit, k, {a: set(v) for a, v in taken.items()})
            if len(chosen) == k or limit == len(scores):
                return chosen
        return chosen

    def _greedy(self, scores: np.ndarray, limit: int, k: int, taken: dict[str, set[str]]) -> list[Candidate]:
        if limit < len(scores):
            top = np.argpartition(-scores, limit - 1)[:limit]
            order = top[np.lexsort((top, -scores[top]))]
        else:
            order = np.lexsort((np.arange(len(scores)), -scores))
        chosen: list[Candidate] = []
        for index in order:
            if scores[index] == -np.inf:
                break
            candidate = self.candidates[int(index)]
            # An empty attribute is a value like any other: a node that reports no OS or GPU
            # family must not slip past the rule that constrains those who do.
            if any(getattr(candidate, attr) in values for attr, values in taken.items()):
                continue
            chosen.append(candidate)
            for attr, values in taken.items():
                values.add(getattr(candidate, attr))
            if len(chosen) == k:
                break
        return chosen


def select_nodes(
    job_key: str,
    candidates: Sequence[Candidate],
    k: int,
    *,
    exclude_node_ids: Iterable[str] = (),
    exclude_owner_ids: Iterable[str] = (),
    distinct: Sequence[str] = ("owner_id",),
    trusted_only: bool = False,
) -> list[Candidate]:
    """One-off selection over a list of candidates (see NodeIndex.select)."""
    return NodeIndex(candidates).select(
        job_key,
        k,
        exclude_node_ids=exclude_node_ids,
        exclude_owner_ids=exclude_owner_ids,
        distinct=distinct,
        trusted_only=trusted_only,
    )

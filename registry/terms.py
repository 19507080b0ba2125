"""A job's economic terms, fixed at submit: what its settlement pays by.

The contract (Appendix A) fixes what nodes compute and how results are compared (model,
tolerances); `Job.terms` fixes the money (prices, payout split, escrow rule, solo price).
An operator's change of a subnet's terms therefore applies to jobs submitted after it,
never to one already held.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from subnets.models import Subnet


@dataclass(frozen=True)
class JobTerms:
    price_per_call_micro: int
    price_per_item_micro: int
    split_node_a_bp: int
    split_node_b_bp: int
    split_registry_bp: int
    escrow_share_bp: int
    escrow_required_micro: int
    solo_price_bp: int
    # Absent from terms recorded before relay surcharges existed: none.
    relay_surcharge_micro_per_mb: int = 0
    relay_reserve_mb: int = 0

    @classmethod
    def of_subnet(cls, subnet: Subnet) -> JobTerms:
        return cls(**{name: getattr(subnet, name) for name in cls.__dataclass_fields__})

    @classmethod
    def of_job(cls, job: Any) -> JobTerms:
        """The terms the job was submitted under (a job from before they were recorded: its
        subnet's current ones)."""
        if not job.terms:
            return cls.of_subnet(job.subnet)
        return cls(**{name: int(job.terms[name]) for name in cls.__dataclass_fields__ if name in job.terms})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def split_bp(self) -> tuple[int, int, int]:
        return (self.split_node_a_bp, self.split_node_b_bp, self.split_registry_bp)

    def price_for(self, units: int) -> int:
        return self.price_per_call_micro + self.price_per_item_micro * units

    @property
    def relay_reserve_micro(self) -> int:
        """What a peer-to-peer job's hold adds for relaying: the most its surcharge can be."""
        return self.relay_surcharge_micro_per_mb * self.relay_reserve_mb

    def relay_surcharge(self, relayed_bytes: int) -> int:
        """The surcharge for `relayed_bytes` (rounded up to the micro-credit), never more
        than the hold reserved for it."""
        owed = -(-relayed_bytes * self.relay_surcharge_micro_per_mb // 1_000_000)
        return min(owed, self.relay_reserve_micro)

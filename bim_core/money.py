"""Money: integer micro-credits everywhere (the ledger, prices, receipts), and the payout
split, rounding-safe so its parts always add up to the whole."""

from __future__ import annotations

from dataclasses import dataclass

MICRO = 1_000_000  # micro-credits in one credit


@dataclass(frozen=True)
class Split:
    node_a: int
    node_b: int
    registry: int


def split_amount(total: int, split_bp: tuple[int, int, int]) -> Split:
    """Nodes get their floor share; the registry gets its share plus the rounding remainder,
    so the parts always add up to `total` exactly."""
    a_bp, b_bp, r_bp = split_bp
    if a_bp + b_bp + r_bp != 10_000 or min(split_bp) < 0:
        raise ValueError(f"split {split_bp} does not sum to 10000 basis points")
    node_a = total * a_bp // 10_000
    node_b = total * b_bp // 10_000
    return Split(node_a=node_a, node_b=node_b, registry=total - node_a - node_b)

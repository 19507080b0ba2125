"""Money: integer micro-credits everywhere (the ledger, prices, receipts), and the payout
split, rounding-safe so its parts always add up to the whole."""

from __future__ import annotations

from dataclasses import dataclass

MICRO = 1_000_000  # micro-credits in one credit


def micro_to_text(amount: int) -> str:
    """Micro-credits as credits for people: exact, trailing zeros dropped ("1.5", "0.000125")."""
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), MICRO)
    return f"{sign}{whole}" + (f".{fraction:06d}".rstrip("0") if fraction else "")


def credits_to_micro(text: str) -> int:
    """Credits as a person types them ("2", "0.5") to micro-credits; ValueError when it
    is not a non-negative amount with at most six decimals."""
    whole, _, fraction = text.strip().partition(".")
    if not whole.isdigit() and not (whole == "" and fraction) or (fraction and not fraction.isdigit()) or len(fraction) > 6:
        raise ValueError(f"{text!r} is not an amount of credits with at most 6 decimals")
    return int(whole or 0) * MICRO + int(fraction.ljust(6, "0") or 0)


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

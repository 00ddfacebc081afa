"""EfficientNet's compound scaling, the "giant formula": d = 1.2^phi, w = 1.1^phi, r = 1.15^phi.

With alpha x beta^2 x gamma^2 ~= 2, each unit of phi doubles FLOPs (phi < 0 shrinks: the inverse
formula the TinyNet paper compares against).
"""

from __future__ import annotations

import math

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases (Tan & Le 2019, Sec. 3.3)


def giant(phi: float) -> tuple[float, float, float]:
    """(r, d, w) multipliers for a compound coefficient phi, any real value."""
    return GAMMA ** phi, ALPHA ** phi, BETA ** phi


def flops_ratio(phi: float) -> float:
    """The FLOPs ratio to the base that the formula intends: (alpha beta^2 gamma^2)^phi."""
    return (ALPHA * BETA ** 2 * GAMMA ** 2) ** phi


def phi_for_ratio(ratio: float) -> float:
    """The compound coefficient whose intended FLOPs ratio is `ratio` (the inverse direction)."""
    if ratio <= 0:
        raise ValueError(f"FLOPs ratio must be positive, got {ratio}")
    return math.log(ratio) / math.log(ALPHA * BETA ** 2 * GAMMA ** 2)

"""Solving width for a MACs target on the real, built model.

The closed form w = sqrt(c / (r^2 d)) ignores channel rounding (multiples of 8, never 10 % below),
the one-block floor per stage and the fixed stem/head, so it misses small models by up to 2x.
Here MACs are counted exactly (by arithmetic on the family's plan, or on a shape-only "meta" model
for a family without plan arithmetic) and width is found by bisection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from ..errors import RubikError
from ..models import FAMILIES, ModelSpec, build
from ..profile import count

WIDTH_RANGE = (0.05, 4.0)
MIN_RESOLUTION = 32


class InfeasibleBudget(RubikError):
    """A budget no model of this family and formula can meet; the message gives the feasible range."""


def macs_of(spec: ModelSpec, num_classes: int = 1000) -> int:
    """Exact MACs of the model a spec describes (arithmetic on its plan where the family has one)."""
    family = FAMILIES[spec.family]
    if family.macs is not None:
        return family.macs(family.plan_of(spec), spec.resolution, num_classes)
    with torch.device("meta"):
        model = build(spec, num_classes=num_classes)
    return count(model, spec.resolution)[0]


def solve_width(spec: ModelSpec, target_macs: float, tolerance: float = 1e-3, num_classes: int = 1000,
                cost: Callable[[ModelSpec], int] | None = None) -> list[tuple[ModelSpec, int]]:
    """The two widths around the target: the widest model at or below it and the narrowest above.

    MACs grow in steps with width (all stages round to multiples of 8 together), so bisection
    brackets the step that crosses the target. Raises InfeasibleBudget when even the extreme
    widths cannot reach it. MACs count a `num_classes`-way classifier (the head is part of the budget), or
    are `cost(spec)`: the MACs of whatever is built around the model (a detector around its backbone).
    """
    cost = cost or partial(macs_of, num_classes=num_classes)
    cache: dict[float, int] = {}

    def at(w: float) -> int:
        if w not in cache:
            cache[w] = cost(replace(spec, width=w))
        return cache[w]

    lo, hi = WIDTH_RANGE
    if at(lo) > target_macs:
        raise InfeasibleBudget(f"{target_macs / 1e6:.1f} M MACs is below the narrowest model at resolution "
                               f"{spec.resolution} and depth {spec.depth:.3f} ({at(lo) / 1e6:.1f} M MACs)")
    if at(hi) < target_macs:
        raise InfeasibleBudget(f"{target_macs / 1e6:.1f} M MACs is above the widest model at resolution "
                               f"{spec.resolution} and depth {spec.depth:.3f} ({at(hi) / 1e6:.1f} M MACs)")
    while hi - lo > tolerance:
        mid = (lo * hi) ** 0.5  # geometric: width matters relatively
        if at(mid) <= target_macs:
            lo = mid
        else:
            hi = mid
    return [(replace(spec, width=w), at(w)) for w in (lo, hi)]  # unrounded: a step may sit at the 4th digit


def solve(spec: ModelSpec, target_macs: float, max_error: float = 0.01, max_resolution_change: float = 0.06,
          num_classes: int = 1000, cost: Callable[[ModelSpec], int] | None = None, resolution_step: int = 1,
          max_depth_change: float = 0.0) -> tuple[ModelSpec, int]:
    """Width for the target; where channel steps leave it more than `max_error` off, resolution too.

    MACs move in steps with width (the first stage going from 8 to 16 channels adds 13 % to a
    TinyNet-C-sized model) and with resolution (strided feature maps round up, so 192 -> 193 px
    adds a row and column to the last stages: 17 %). Resolutions nearest the formula's are tried
    in turn, each with its own width, until one lands within `max_error`; resolutions stay multiples of
    `resolution_step` away from the formula's (at least one step either side; none with
    max_resolution_change=0). Where coarse steps leave
    no resolution within it (a detector's 32 px), depths within `max_depth_change` of the formula's are
    tried next (each adds or drops a block somewhere). `cost`: as `solve_width`.
    """
    bracket = solve_width(spec, target_macs, num_classes=num_classes, cost=cost)
    best_spec, best = min(bracket, key=lambda sm: abs(sm[1] - target_macs))
    for candidate in _neighbours(spec, max_resolution_change, resolution_step, max_depth_change):
        if abs(best / target_macs - 1) <= max_error:
            break
        try:
            bracket = solve_width(candidate, target_macs, num_classes=num_classes, cost=cost)
        except InfeasibleBudget:
            continue
        cand_spec, cand = min(bracket, key=lambda sm: abs(sm[1] - target_macs))
        if abs(cand - target_macs) < abs(best - target_macs):
            best_spec, best = cand_spec, cand
    return best_spec, best


DEPTH_STEP = 0.02  # relative: the grid of depths `solve` tries around the formula's


def _neighbours(spec: ModelSpec, max_resolution_change: float, resolution_step: int, max_depth_change: float):
    """The specs `solve` tries after the formula's, nearest first: other resolutions, then other depths; depths
    first where one resolution step is more than `max_resolution_change` (a detector's 32 px at 96 px is a third
    of r, a few blocks are a few % of d)."""
    limit = max(1, round(spec.resolution * max_resolution_change / resolution_step)) if max_resolution_change else 0
    resolutions = [replace(spec, resolution=spec.resolution + offset) for offset in
                   sorted(range(-limit * resolution_step, limit * resolution_step + 1, resolution_step), key=abs)[1:]
                   if spec.resolution + offset >= MIN_RESOLUTION]
    steps = round(max_depth_change / DEPTH_STEP)
    depths = [replace(spec, depth=spec.depth * (1 + k * DEPTH_STEP))
              for k in sorted(range(-steps, steps + 1), key=abs)[1:]]
    coarse = resolution_step > spec.resolution * max_resolution_change
    yield from (depths + resolutions) if coarse else (resolutions + depths)

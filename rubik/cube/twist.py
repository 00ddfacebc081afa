"""Twisting a base model to a budget: the tiny formula (default) or the giant formula.

tiny:  r, d = GP fit of the Pareto front at c;  w solved on the built model so MACs = c x base.
giant: phi from c (each unit of phi doubles FLOPs); r, d from phi;  w solved the same way
       (the literal w = 1.1^phi overshoots small budgets by up to 2x, see rubik.models.registry).
A latency budget is met by measuring candidates: bisection on c of the measured latency.
MACs are the model's own, or those of whatever a layer above builds around it (`Twister(cost=...)`:
a detector around its backbone, rubik.detect.twist), so the whole of that meets the budget.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import RubikError
from ..models import FAMILIES, ModelSpec, get_spec
from .formula import Prediction, TinyFormula
from .giant import giant, phi_for_ratio
from .solve import MIN_RESOLUTION, WIDTH_RANGE, InfeasibleBudget, macs_of, solve

METHODS = ("tiny", "giant")
LATENCY_TOLERANCE = 0.05  # a latency twist stops searching at a model this close under the budget
log = logging.getLogger("rubik.twist")  # each timed candidate, at debug level


@dataclass(frozen=True)
class Budget:
    kind: str  # "macs" | "ratio" | "latency"
    value: float  # MACs, a ratio to the base, or milliseconds

    def __str__(self) -> str:
        return {"macs": f"{self.value / 1e6:g} M MACs", "ratio": f"{self.value:g} x base MACs",
                "latency": f"{self.value:g} ms"}[self.kind]


def parse_macs(text: str) -> float:
    """'100M', '1.2G', '35e6', '24000k' -> MACs."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMgG]?)\s*(?:MACs?|FLOPs?)?\s*", text)
    if not m:
        raise RubikError(f"cannot read MACs budget {text!r}; write it like 100M, 1.2G or 35e6")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]


def parse_latency(text: str) -> float:
    """'4ms', '4', '0.004s', '800us' -> milliseconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*", text)
    if not m:
        raise RubikError(f"cannot read latency budget {text!r}; write it like 4ms, 800us or 0.004s")
    return float(m.group(1)) * {None: 1, "ms": 1, "s": 1e3, "us": 1e-3}[m.group(2)]


@dataclass
class TwistResult:
    spec: ModelSpec
    base: ModelSpec
    method: str
    ratio: float  # c: target MACs / base MACs
    target_macs: float
    macs: int
    base_macs: int
    prediction: Prediction | None = None  # the GP's r, d and their standard deviations (tiny)
    latency_ms: float | None = None
    phi: float | None = None  # giant

    @property
    def error(self) -> float:
        return self.macs / self.target_macs - 1

    def __str__(self) -> str:
        s, b = self.spec, self.base
        ms = "" if self.latency_ms is None else f", {self.latency_ms:.2f} ms"
        return (f"{s.name}: {s.resolution} px, r={s.resolution / b.resolution:.3f} d={s.depth / b.depth:.3f} "
                f"w={s.width / b.width:.3f}, {self.macs / 1e6:.1f} M MACs ({100 * self.error:+.2f} % of the "
                f"target){ms}")

    def extrapolated(self, formula: TinyFormula) -> bool:
        """True when c lies below half the formula's smallest fitted point: a guess, not a fit."""
        return self.method == "tiny" and self.ratio < 0.5 * formula.c_range[0]

    def to_dict(self) -> dict:
        twist = {"method": self.method, "base": self.base.name, "ratio": self.ratio,
                 "target_macs": self.target_macs, "macs": self.macs, "base_macs": self.base_macs,
                 "resolution_multiplier": self.spec.resolution / self.base.resolution,
                 "depth_multiplier": self.spec.depth / self.base.depth,
                 "width_multiplier": self.spec.width / self.base.width}
        if self.prediction is not None:
            p = self.prediction
            twist["gp"] = {"r": p.r, "r_std": p.r_std, "d": p.d, "d_std": p.d_std}
        if self.phi is not None:
            twist["phi"] = self.phi
        if self.latency_ms is not None:
            twist["latency_ms"] = self.latency_ms
        return {"model": self.spec.to_dict(), "twist": twist}


class Twister:
    """Twists one base model with one formula; caches the base's MACs and the formula's fit.

    `cost(spec)`: the MACs that must meet the budget (default: the model's, as a 1000-way classifier); ratios
    are to the base's cost. `resolution_step`: twisted resolutions are multiples of it; `max_depth_change`: how far
    (relative) `solve` may move the formula's depth where coarse resolution steps miss the budget. `label`: the
    base's name in messages.
    """

    def __init__(self, base: str | ModelSpec = "efficientnet_b0", method: str = "tiny",
                 formula: TinyFormula | str | None = None, cost: Callable[[ModelSpec], int] | None = None,
                 resolution_step: int = 1, max_depth_change: float = 0.0, label: str | None = None):
        if method not in METHODS:
            raise RubikError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.base = get_spec(base)
        self.family = FAMILIES[self.base.family]
        if not self.family.twistable:
            twistable = sorted(n for n, f in FAMILIES.items() if f.twistable)
            raise RubikError(f"{self.base.name} ({self.base.family}) has no cube to twist; bases of the families "
                             f"{', '.join(twistable)} can be twisted (rubik models lists them)")
        self.method = method
        if isinstance(formula, TinyFormula):
            self.formula = formula
        else:  # the family's own formula unless the user gives one
            self.formula = TinyFormula.load(formula) if formula else TinyFormula.builtin(self.family.formula)
        self.cost = cost or macs_of
        self.resolution_step, self.max_depth_change = resolution_step, max_depth_change
        self.label = label or self.base.name
        self.base_macs = self.cost(self.base)
        self._feasible: tuple[float, float] | None = None

    def twist_rules(self):
        """The rules twisted models are built with: the base's, with the tiny formula's where the family takes them."""
        if self.method == "giant":
            return self.base.rules
        return self.family.twist_rules(self.base.rules, self.formula.rules)

    def _start(self, c: float, resolution: int | None = None) -> tuple[ModelSpec, Prediction | None, float | None]:
        """The formula's (r, d) at c, before width is solved; `resolution` pins the input size instead of r."""
        if self.method == "tiny":
            p = self.formula.predict(c)
            r, d, pred, phi = p.r, p.d, p, None
        else:
            phi = phi_for_ratio(c)
            r, d, _ = giant(phi)
            pred = None
        step = self.resolution_step
        resolution = resolution or max(MIN_RESOLUTION, step * round(self.base.resolution * r / step))
        spec = replace(self.base, resolution=resolution, depth=self.base.depth * d, rules=self.twist_rules())
        return spec, pred, phi

    def _smallest_macs(self, c: float) -> int:
        spec, _, _ = self._start(c)
        return self.cost(replace(spec, width=WIDTH_RANGE[0]))

    def feasible_range(self) -> tuple[float, float]:
        """(smallest, largest) MACs this base and formula can be twisted to (found once: 40 costs counted)."""
        if self._feasible is None:
            self._feasible = self._find_range()
        return self._feasible

    def _find_range(self) -> tuple[float, float]:
        lo, hi = 1e-4, 1.0  # bisection on ln c for the smallest c whose narrowest model fits under c x base
        if self._smallest_macs(hi) > self.base_macs:
            return self.base_macs, self.base_macs
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            if self._smallest_macs(mid) <= mid * self.base_macs:
                hi = mid
            else:
                lo = mid
        upper = self.base_macs * (1.0 if self.method == "tiny" else 8.0)
        return hi * self.base_macs, upper

    def _range_error(self, what: str, hint: str = "") -> RubikError:
        lo, hi = self.feasible_range()
        return RubikError(f"{what} is outside what {self.method} twisting of {self.label} can build{hint}; "
                          f"feasible: {lo / 1e6:.1f} M .. {hi / 1e6:.1f} M MACs "
                          f"(ratio {lo / self.base_macs:.3f} .. {hi / self.base_macs:.3f})")

    def to_macs(self, target_macs: float, name: str | None = None, resolution: int | None = None) -> TwistResult:
        """The formula's model for the MACs budget; `resolution` pins its input size (depth and width solved)."""
        c = target_macs / self.base_macs
        if c <= 0 or (self.method == "tiny" and c > 1.0 + 1e-9):
            hint = "" if c <= 0 else " (the tiny formula shrinks a base; --method giant grows one)"
            raise self._range_error(f"{target_macs / 1e6:.1f} M MACs", hint)
        spec, pred, phi = self._start(c, resolution)
        try:
            spec, macs = solve(spec, target_macs, cost=self.cost, resolution_step=self.resolution_step,
                               max_depth_change=self.max_depth_change,
                               max_resolution_change=0.0 if resolution else 0.06)
        except InfeasibleBudget:
            raise self._range_error(f"{target_macs / 1e6:.1f} M MACs") from None
        name = name or f"{self.base.name}_{self.method}_{target_macs / 1e6:.0f}m"
        return TwistResult(replace(spec, name=name), self.base, self.method, c, target_macs, macs,
                           self.base_macs, pred, phi=phi)

    def to_ratio(self, ratio: float, name: str | None = None) -> TwistResult:
        return self.to_macs(ratio * self.base_macs, name)

    def to_latency(self, target_ms: float, measure: Callable[[ModelSpec], float], name: str | None = None,
                   iterations: int = 7) -> TwistResult:
        """The model whose measured latency is closest under the budget.

        Latency grows with c but not strictly (it depends on kernels, not only MACs), so this is
        a bisection on ln c of measured latencies; each step builds and times a real model.
        """
        lo_macs, hi_macs = self.feasible_range()
        lo, hi = lo_macs / self.base_macs * 1.01, min(1.0, hi_macs / self.base_macs)
        smallest = _timed(self.to_ratio(lo), measure)
        if smallest.latency_ms > target_ms:
            raise RubikError(f"{target_ms:g} ms is below the fastest model twisted from {self.label} on this "
                             f"machine ({smallest.latency_ms:.2f} ms at {smallest.macs / 1e6:.1f} M MACs)")
        largest = _timed(self.to_ratio(hi), measure)
        top = 1.0 if self.method == "tiny" else 8.0

        def short(result: TwistResult) -> bool:
            return result.latency_ms < target_ms * (1 - LATENCY_TOLERANCE)

        over = None
        if largest.latency_ms <= target_ms:
            best = largest
        else:
            best, over, lo = self._bisect(self.to_ratio, lo, hi, smallest, largest, target_ms, measure, iterations)
            if short(best):
                # The formula's input size can flip between neighbouring c, and a 32 px step can be 20 % of the
                # latency: the largest model at `best`'s input size within the budget (more depth and width).
                same = over.spec.resolution == best.spec.resolution
                best = self._bisect(self._at_resolution(best.spec.resolution), best.ratio,
                                    over.ratio if same else top, best, over, target_ms, measure, iterations)[0]
        # Still short: a narrower, shallower model at a larger input size: the one `over` has, or, where every
        # model the formula makes is within the budget (a Lite detector's is at c = 1), the sizes above in turn.
        above, climbs = best.spec.resolution, 0
        while short(best) and climbs < 3:
            climbs += 1
            if over is not None and over.spec.resolution > above:
                above, hi = over.spec.resolution, over.ratio
            elif over is None and self.resolution_step > 1:
                above += self.resolution_step
                try:
                    over, hi = _timed(self._at_resolution(above)(top), measure), top
                except RubikError:
                    break
                if over.latency_ms <= target_ms:  # even the largest at this size is within: one size up
                    best, over = max(best, over, key=lambda r: r.latency_ms), None
                    continue
            else:
                break
            best, over, _ = self._bisect(self._at_resolution(above), lo_macs / self.base_macs, hi, best, over,
                                         target_ms, measure, iterations, too_small_when_infeasible=True)
        if name:
            best.spec = replace(best.spec, name=name)
        return best

    def _at_resolution(self, resolution: int) -> Callable[[float], TwistResult]:
        return lambda ratio: self.to_macs(ratio * self.base_macs, resolution=resolution)

    @staticmethod
    def _bisect(make: Callable[[float], TwistResult], lo: float, hi: float, best: TwistResult, over: TwistResult | None,
                target_ms: float, measure: Callable[[ModelSpec], float], iterations: int,
                too_small_when_infeasible: bool = False):
        """Bisection on ln c in (lo, hi) of `make(c)`'s measured latency, keeping the model closest under the budget
        (starting from `best`) and stopping within LATENCY_TOLERANCE under it: (best, the last model over, the
        last c under). `make` may fail where a pinned resolution has no width for c's MACs: c is too large for it
        (a small input) or, with `too_small_when_infeasible`, too small (a large input)."""
        for _ in range(iterations):
            if best.latency_ms >= target_ms * (1 - LATENCY_TOLERANCE):
                break
            mid = math.sqrt(lo * hi)
            try:
                candidate = make(mid)
            except RubikError:
                lo, hi = (mid, hi) if too_small_when_infeasible else (lo, mid)
                continue
            _timed(candidate, measure)
            if candidate.latency_ms <= target_ms:
                lo = mid
                if candidate.latency_ms > best.latency_ms:
                    best = candidate
            else:
                over, hi = candidate, mid
        return best, over, lo


def _timed(result: TwistResult, measure: Callable[[ModelSpec], float]) -> TwistResult:
    result.latency_ms = measure(result.spec)
    log.debug(f"c={result.ratio:.4f} {result}")
    return result


def budget_of(flops: str | float | None = None, ratio: float | None = None,
              latency: str | float | None = None) -> Budget:
    """Exactly one budget: MACs ("100M" or a number), a ratio to the base's MACs, or a latency ("4ms" or ms)."""
    given = [b for b in (flops, ratio, latency) if b is not None]
    if len(given) != 1:
        raise RubikError("give exactly one budget: flops (--flops 100M), ratio (--ratio 0.25) or latency "
                         "(--latency 4ms)")
    if flops is not None:
        return Budget("macs", parse_macs(flops) if isinstance(flops, str) else float(flops))
    if ratio is not None:
        return Budget("ratio", float(ratio))
    return Budget("latency", parse_latency(latency) if isinstance(latency, str) else float(latency))


def twist(base: str | ModelSpec = "efficientnet_b0", budget: Budget | None = None, method: str = "tiny",
          formula: str | TinyFormula | None = None, measure: Callable[[ModelSpec], float] | None = None,
          name: str | None = None, base_resolution: int = 0) -> tuple[Twister, TwistResult]:
    """One-call twisting: `twist("efficientnet_b0", Budget("ratio", 0.25))` -> (the twister, its result).
    `base_resolution` (0: the base's own) is the base's input size for the user's data: r scales from it."""
    if budget is None:
        raise RubikError("give a budget: MACs (--flops 100M), a ratio (--ratio 0.25) or a latency (--latency 4ms)")
    if base_resolution:
        base = replace(get_spec(base), resolution=base_resolution)
    t = Twister(base, method, formula)
    return t, meet(t, budget, measure, name)


def meet(twister, budget: Budget, measure: Callable | None = None, name: str | None = None):
    """`twister`'s result for `budget` (a Twister, or any twister with to_macs, to_ratio and to_latency)."""
    if budget.kind == "macs":
        return twister.to_macs(budget.value, name)
    if budget.kind == "ratio":
        return twister.to_ratio(budget.value, name)
    if measure is None:
        raise RubikError("a latency budget needs a runtime to measure candidates with")
    return twister.to_latency(budget.value, measure, name)

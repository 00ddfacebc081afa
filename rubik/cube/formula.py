"""The tiny formula's data and its Gaussian-process fit: r(c) and d(c) from Pareto-front points.

A formula file (JSON) lists Pareto-front models as FLOPs ratio c with the resolution, depth and
width multipliers that reached it. The default file holds what the TinyNet paper publishes; the
`rubik search` experiment writes new ones.

Kernel, per dimension, on x = ln c:  C x RBF + DotProduct + White.
- ln c, because budgets span more than a decade and the paper's points are evenly spread in it;
- RBF for the smooth bend of the front (resolution saturates near the base, falls fast below 0.1);
- DotProduct (a linear trend in ln c), so that below the smallest point the curve keeps following
  the front's trend instead of drifting back to the data mean as a lone RBF does;
- White noise, because published multipliers are hand-rounded (0.54, 0.695, ...).
RBF length scales below 1 (in ln c) are not allowed: with five or six points they would thread
every point and swing between them (leave-one-out errors over 20 %).

A point with `"fit": false` is kept for reference but not fitted. The default file marks the base
model so: EfficientNet-B0 is where twisting starts, not a point on the tiny front (TinyNet-A, at
c = 0.9, is deeper than B0), and pulling the curves through both bends them by 7-9 % at the TinyNets.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RubikError

FORMAT = "rubik-tiny-formula"
DEFAULT_FORMULA = "tinynet_paper.json"


class FormulaError(RubikError):
    """A formula file that is missing, malformed, or has too few points to fit."""


@dataclass(frozen=True)
class Point:
    c: float
    r: float
    d: float
    w: float
    name: str = ""
    top1: float | None = None
    fit: bool = True


@dataclass(frozen=True)
class Prediction:
    c: float
    r: float
    d: float
    r_std: float
    d_std: float


@dataclass
class TinyFormula:
    points: list[Point]
    base: str = "efficientnet_b0"
    rules: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    path: str = "<memory>"

    def __post_init__(self):
        n = len(self.fitted)
        if n < 3:
            raise FormulaError(f"formula {self.path} has {n} points to fit; the fit needs at least 3")
        self._gps = None

    @property
    def fitted(self) -> list[Point]:
        return [p for p in self.points if p.fit]

    # --- reading and writing -------------------------------------------------------------------
    @classmethod
    def builtin(cls, name: str = DEFAULT_FORMULA) -> TinyFormula:
        """A formula shipped in rubik/cube/formulas/ (a family names its own in `Family.formula`)."""
        try:
            text = resources.files("rubik.cube").joinpath("formulas", name).read_text()
        except OSError:
            raise FormulaError(f"no built-in formula {name!r}") from None
        return cls._parse(text, f"built-in {name}")

    @classmethod
    def load(cls, path: str | Path | None = None) -> TinyFormula:
        if path is None:
            return cls.builtin(DEFAULT_FORMULA)
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise FormulaError(f"cannot read formula file {where}: {e.strerror}") from None
        return cls._parse(text, where)

    @classmethod
    def _parse(cls, text: str, where: str) -> TinyFormula:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormulaError(f"formula file {where} is not valid JSON ({e})") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data: Any, where: str = "<dict>") -> TinyFormula:
        def bad(field_name: str, why: str) -> FormulaError:
            return FormulaError(f"formula file {where}: field '{field_name}' {why}")

        if not isinstance(data, dict):
            raise FormulaError(f"formula file {where} must hold a JSON object")
        if data.get("format", FORMAT) != FORMAT:
            raise bad("format", f"must be {FORMAT!r}, got {data.get('format')!r}")
        if not isinstance(data.get("points"), list):
            raise bad("points", "is missing or not a list")
        points = []
        for i, p in enumerate(data["points"]):
            if not isinstance(p, dict):
                raise bad(f"points[{i}]", "must be an object with c, r, d, w")
            for key in ("c", "r", "d", "w"):
                value = p.get(key)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                    raise bad(f"points[{i}].{key}", f"must be a positive number, got {value!r}")
            if p["c"] > 4:
                raise bad(f"points[{i}].c", f"is a FLOPs ratio to the base (0 < c <= 1), got {p['c']}")
            if not isinstance(p.get("fit", True), bool):
                raise bad(f"points[{i}].fit", f"must be true or false, got {p['fit']!r}")
            points.append(Point(float(p["c"]), float(p["r"]), float(p["d"]), float(p["w"]),
                                str(p.get("name", "")), p.get("top1"), p.get("fit", True)))
        rules = data.get("rules", {})
        if not isinstance(rules, dict):
            raise bad("rules", "must be an object (e.g. {\"depth_rounding\": \"round\"})")
        return cls(points, str(data.get("base", "efficientnet_b0")), rules, str(data.get("source", "")), where)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "base": self.base, "source": self.source, "rules": self.rules,
                "points": [{k: v for k, v in vars(p).items() if v not in (None, "") and not (k == "fit" and v)}
                           for p in self.points]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def without(self, name: str) -> TinyFormula:
        """The same formula with one named point left out (for leave-one-out checks)."""
        return TinyFormula([p for p in self.points if p.name != name], self.base, self.rules, self.source,
                           f"{self.path} without {name}")

    # --- the fit -------------------------------------------------------------------------------
    @property
    def c_range(self) -> tuple[float, float]:
        cs = [p.c for p in self.fitted]
        return min(cs), max(cs)

    def _fit(self):
        if self._gps is None:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.gaussian_process import GaussianProcessRegressor
            from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel

            points = self.fitted
            x = np.log([[p.c] for p in points])
            self._gps = {}
            for dim in ("r", "d"):
                kernel = (ConstantKernel(0.1, (1e-3, 10.0)) * RBF(2.0, (1.0, 10.0))
                          + DotProduct(1.0, (1e-5, 10.0)) + WhiteKernel(1e-3, (1e-4, 3e-2)))
                gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=4, random_state=0)
                with warnings.catch_warnings():
                    # The bounds are deliberate (see the module doc); a fit resting on one is expected.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    self._gps[dim] = gp.fit(x, np.array([getattr(p, dim) for p in points]))
        return self._gps

    def predict(self, c: float | np.ndarray) -> Prediction | list[Prediction]:
        """Resolution and depth multipliers (with the GP's standard deviation) for FLOPs ratio c."""
        scalar = np.isscalar(c)
        cs = np.atleast_1d(np.asarray(c, dtype=float))
        if np.any(cs <= 0):
            raise FormulaError(f"FLOPs ratio must be positive, got {c}")
        x = np.log(cs).reshape(-1, 1)
        gps = self._fit()
        r, r_std = gps["r"].predict(x, return_std=True)
        d, d_std = gps["d"].predict(x, return_std=True)
        # Multipliers must stay positive even far below the data: floor them where the trend runs out.
        out = [Prediction(float(ci), max(float(ri), 0.05), max(float(di), 0.05), float(rs), float(ds))
               for ci, ri, di, rs, ds in zip(cs, r, d, r_std, d_std, strict=True)]
        return out[0] if scalar else out

    def kernels(self) -> dict[str, str]:
        """The fitted kernels, for reports."""
        return {dim: str(gp.kernel_) for dim, gp in self._fit().items()}


def closed_form_width(c: float, r: float, d: float) -> float:
    """FLOPs ~ r^2 d w^2: the width that would hit c exactly with no channel rounding."""
    return math.sqrt(c / (r * r * d))

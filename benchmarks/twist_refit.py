"""Refit check of the tiny formula: twist EfficientNet-B0 to TinyNet-A..E's budgets and compare.

Also the leave-one-out check (fit without TinyNet-C, twist to c = 0.25).
Run: .venv/bin/python benchmarks/twist_refit.py   (a few seconds; no data needed)
"""

import numpy as np

from rubik.cube.formula import TinyFormula, closed_form_width
from rubik.cube.twist import Twister
from rubik.models import get_spec

TINYNETS = [("a", 0.9), ("b", 0.5), ("c", 0.25), ("d", 0.13), ("e", 0.06)]


def main() -> None:
    twister = Twister("efficientnet_b0")
    print("MACs = multiply-accumulates (the papers' FLOPs); r, d, w are multipliers of EfficientNet-B0")
    print("| TinyNet | c | twisted: input | r | d | w | MACs M (vs target) | published: input | r | d | w |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for letter, c in TINYNETS:
        result, tiny = twister.to_ratio(c), get_spec(f"tinynet_{letter}")
        s = result.spec
        print(f"| {letter.upper()} | {c} | {s.resolution} | {s.resolution / 224:.3f} | {s.depth:.3f} | {s.width:.3f} | "
              f"{result.macs / 1e6:.1f} ({100 * result.error:+.2f} %) | {tiny.resolution} | "
              f"{tiny.resolution / 224:.3f} | {tiny.depth} | {tiny.width} |")
    formula = TinyFormula.load().without("tinynet_c")
    p = formula.predict(0.25)
    print(f"\nleave-one-out (fit without TinyNet-C) at c = 0.25: r = {p.r:.3f} ({100 * (p.r / 0.821 - 1):+.1f} % vs "
          f"0.821), d = {p.d:.3f} ({100 * (p.d / 0.85 - 1):+.1f} % vs 0.85)")
    worst = max(closed_form_width(c, r.prediction.r, r.prediction.d) / r.spec.width - 1
                for r in (twister.to_ratio(float(c)) for c in np.geomspace(0.05, 1, 25)))
    print(f"closed-form width sqrt(c / r^2 d) vs the solved width, c in [0.05, 1]: up to {100 * worst:+.0f} %")
    lo, hi = twister.feasible_range()
    print(f"feasible MACs budgets for efficientnet_b0 (tiny): {lo / 1e6:.1f} M .. {hi / 1e6:.1f} M")
    print("fitted kernels:", twister.formula.kernels())


if __name__ == "__main__":
    main()

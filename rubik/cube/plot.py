"""The tiny formula's curves r(c), d(c), w(c) with the GP's band and the data (TinyNet paper, Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .formula import TinyFormula, closed_form_width
from .twist import Twister, TwistResult


def plot_curves(twister: Twister, path: str | Path, result: TwistResult | None = None, points: int = 24,
                reference: TinyFormula | None = None) -> Path:
    """The formula's r(c), d(c), w(c); `reference` (e.g. the paper's TinyNets) is drawn beside it for comparison.

    Multipliers are relative to each formula's own base, so a study at 32 px compares with the paper's 224 px.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formula = twister.formula
    c_lo = min(formula.c_range[0], result.ratio if result else 1.0) * 0.7
    cs = np.geomspace(c_lo, 1.0, 200)
    preds = formula.predict(cs)
    solved_c = np.geomspace(max(c_lo, twister.feasible_range()[0] / twister.base_macs * 1.05), 1.0, points)
    solved = [twister.to_ratio(float(c)) for c in solved_c]

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for ax, dim, label in zip(axes[:2], ("r", "d"), ("resolution r", "depth d"), strict=True):
        mean = np.array([getattr(p, dim) for p in preds])
        std = np.array([getattr(p, f"{dim}_std") for p in preds])
        ax.fill_between(cs, mean - 2 * std, mean + 2 * std, color="C0", alpha=0.2, label="GP mean ± 2σ")
        ax.plot(cs, mean, color="C0", label="GP mean")
        ax.set_ylabel(f"{label} (x {twister.base.name})")
    w_closed = [closed_form_width(p.c, p.r, p.d) for p in preds]
    axes[2].plot(cs, w_closed, "--", color="C0", label="sqrt(c / r²d), no rounding")
    axes[2].plot(solved_c, [s.spec.width / twister.base.width for s in solved], ".-", color="C2",
                 label="solved on the built model")
    axes[2].set_ylabel(f"width w (x {twister.base.name})")
    if reference is not None:
        draw_reference(axes, reference, c_lo)
    for ax, dim in zip(axes, ("r", "d", "w"), strict=True):
        fitted = [p for p in formula.points if p.fit]
        ref = [p for p in formula.points if not p.fit]
        ax.scatter([p.c for p in fitted], [getattr(p, dim) for p in fitted], color="k", zorder=3, label="formula data")
        if ref:
            ax.scatter([p.c for p in ref], [getattr(p, dim) for p in ref], facecolors="none", edgecolors="k",
                       zorder=3, label="base (not fitted)")
        for p in formula.points:
            if p.name:
                ax.annotate(p.name.replace("tinynet_", "").replace("efficientnet_", ""), (p.c, getattr(p, dim)),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        if result is not None:
            value = {"r": result.spec.resolution / twister.base.resolution,
                     "d": result.spec.depth / twister.base.depth,
                     "w": result.spec.width / twister.base.width}[dim]
            ax.scatter([result.ratio], [value], marker="*", s=180, color="C3", zorder=4, label=result.spec.name)
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs ratio c (MACs / base MACs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Tiny formula for {twister.base.name} ({formula.path})", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_reference(axes, reference: TinyFormula, c_lo: float) -> None:
    """Another formula's r(c), d(c) and implied w(c) (dotted, with its data) on the three axes."""
    cs = np.geomspace(min(c_lo, reference.c_range[0]), 1.0, 200)
    preds = reference.predict(cs)
    for ax, dim in zip(axes, ("r", "d", "w"), strict=True):
        curve = [closed_form_width(p.c, p.r, p.d) if dim == "w" else getattr(p, dim) for p in preds]
        ax.plot(cs, curve, ":", color="C1", label=f"GP mean of {reference.path}")
        data = reference.fitted
        ax.scatter([p.c for p in data], [getattr(p, dim) for p in data], marker="s", color="C1", zorder=3,
                   label=f"data of {reference.path}")

"""A study's views as PNGs (matplotlib, Agg): the TinyNet paper's Fig. 2, Fig. 1 and Fig. 3.

fig2_c{c}.png   top-1 against r, d and w at one budget (one file per budget)
fig1_front.png  top-1 against MACs for every trial, the Pareto front, and the tiny-formula and
                inverse-giant reference models where the study trained them (--references)
fig3_curves.png r(c), d(c), w(c) of a fitted formula (rubik.cube.plot.plot_curves), beside the
                paper's formula the base's family twists with (TinyNets for EfficientNet-B0)
"""

from __future__ import annotations

from pathlib import Path

from ..train.plot import pyplot, save_figure
from .front import paper_formula, rows
from .study import base_spec, settings_of

MARKERS = {"sobol": ("o", "C0", "sampled"), "tiny": ("*", "C3", "tiny formula"), "giant": ("^", "C2", "inverse giant")}


def plot_budget(table: list[dict], c: float, base_name: str, path: Path) -> Path:
    """Fig. 2: at one budget, accuracy against each multiplier (w is what the budget left)."""
    done = [r for r in table if r["state"] == "COMPLETE" and r["c"] == c]
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 4), constrained_layout=True, sharey=True)
    for ax, key, label in zip(axes, ("r", "d", "w"), ("resolution r", "depth d", "width w (solved)"), strict=True):
        for kind, (marker, color, name) in MARKERS.items():
            pts = [r for r in done if r["kind"] == kind]
            if pts:
                ax.scatter([r[key] for r in pts], [r["top1"] for r in pts], marker=marker, color=color,
                           s=90 if kind != "sobol" else 30, label=name, zorder=3 if kind != "sobol" else 2)
        ax.set_xlabel(f"{label} (x {base_name})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation top-1 %")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"c = {c:g}: {len(done)} completed trials", fontsize=10)
    return save_figure(fig, path)


def plot_front(table: list[dict], path: Path, title: str) -> Path:
    """Fig. 1: accuracy against MACs, the non-dominated trials joined, references marked."""
    done = [r for r in table if r["state"] == "COMPLETE"]
    fig, ax = pyplot().subplots(figsize=(7, 5), constrained_layout=True)
    for kind, (marker, color, name) in MARKERS.items():
        pts = [r for r in done if r["kind"] == kind]
        if pts:
            ax.scatter([r["macs_m"] for r in pts], [r["top1"] for r in pts], marker=marker, color=color,
                       s=120 if kind != "sobol" else 25, alpha=1.0 if kind != "sobol" else 0.5, label=name,
                       zorder=3 if kind != "sobol" else 2)
    front = sorted((r for r in done if r["front"]), key=lambda r: r["macs_m"])
    if front:
        ax.plot([r["macs_m"] for r in front], [r["top1"] for r in front], "-", color="k", lw=1, label="Pareto front")
    if not any(r["kind"] in ("tiny", "giant") for r in done):
        title += "\n(no reference models: run the study with --references to mark them)"
    ax.set_xscale("log")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("validation top-1 %")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_study(study, out: str | Path, formula: str | None = None) -> list[Path]:
    """Every view the study supports; returns the PNGs written."""
    from ..errors import RubikError

    settings = settings_of(study)
    table = rows(study)
    if not any(r["state"] == "COMPLETE" for r in table):
        raise RubikError(f"study {study.study_name!r} has no completed trials to plot yet; run it first")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_spec(settings)
    budgets = [c for c in settings.budgets if any(r["state"] == "COMPLETE" and r["c"] == c for r in table)]
    written = [plot_budget(table, c, base.name, out / f"fig2_c{c:g}.png") for c in budgets]
    written.append(plot_front(table, out / "fig1_front.png",
                              f"{study.study_name}: {base.name} at {base.resolution} px, {settings.epochs} epochs"))
    if formula:
        from ..cube.plot import plot_curves
        from ..cube.twist import Twister

        # beside the paper's formula: does the study's front bend the same way?
        written.append(plot_curves(Twister(base, "tiny", formula), out / "fig3_curves.png",
                                   reference=paper_formula(settings)))
    return written

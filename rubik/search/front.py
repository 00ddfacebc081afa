"""A study's results: trial rows, the accuracy-MACs Pareto front, and a tiny formula fitted on it.

The front is Optuna's: the study has two objectives (top-1 up, MACs down), and `study.best_trials`
are the non-dominated COMPLETE trials. A formula point per budget is that budget's most accurate
trial; it is fitted only when it is on the front (a budget whose best model another, cheaper budget
beats says more about the short schedule's noise than about the cube).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import RubikError
from .study import base_spec, formula_rules_twister, settings_of


def _complete(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def front_numbers(study) -> set[int]:
    return {t.number for t in study.best_trials} if _complete(study) else set()


def rows(study) -> list[dict[str, Any]]:
    """One plain dict per trial, in trial order (failed and waiting ones included)."""
    front = front_numbers(study)
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        out.append({"number": t.number, "state": t.state.name, "kind": a.get("kind"), "plan_index": a.get("plan_index"),
                    "c": t.params.get("c"), "r": a.get("r_actual", t.params.get("r")), "d": t.params.get("d"),
                    "w": a.get("w"), "resolution": a.get("resolution"),
                    "macs_m": a["macs"] / 1e6 if "macs" in a else None, "macs_ratio": a.get("macs_ratio"),
                    "top1": a.get("top1") if t.state.name == "COMPLETE" else None,
                    "latency_ms": a.get("latency_ms"), "train_seconds": a.get("train_seconds"),
                    "fail_reason": a.get("fail_reason"), "retry_of": t.system_attrs.get("failed_trial"),
                    "front": t.number in front})
    return out


def summary(study) -> str:
    from collections import Counter

    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    planned = int(study.user_attrs.get("trials", 0))
    done = {t.user_attrs.get("plan_index") for t in _complete(study) if t.user_attrs.get("kind", "sobol") == "sobol"}
    return (f"study {study.study_name}: {len(done)} of {planned} planned trials complete; "
            f"{states.get('COMPLETE', 0)} complete, {states.get('FAIL', 0)} failed (recorded), "
            f"{states.get('WAITING', 0)} waiting, {states.get('RUNNING', 0)} running; "
            f"Pareto front: {len(front_numbers(study))} trial(s)")


def progress(study) -> dict[str, Any]:
    """Where a study stands: planned trials done / running / failed / left, each budget's best, the front."""
    from collections import Counter

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    planned = int(study.user_attrs.get("trials", 0))
    try:
        settings = settings_of(study)
        budgets, planned = settings.budgets, planned + (2 * len(settings.budgets) if settings.references else 0)
    except RubikError:
        budgets = []
    done = {t.user_attrs.get("plan_index") for t in trials if t.state.name == "COMPLETE"}
    pending = {t.user_attrs.get("plan_index") for t in trials if t.state.name in ("WAITING", "RUNNING")}
    # A planned trial whose every attempt failed (diverged, infeasible, or out of retries) is given up.
    given_up = {t.user_attrs.get("plan_index") for t in trials if t.state.name == "FAIL"} - done - pending
    best: dict[float, Any] = {}
    for t in _complete(study):
        c = t.params.get("c")
        if c not in best or t.user_attrs["top1"] > best[c].user_attrs["top1"]:
            best[c] = t

    def brief(t) -> dict[str, Any]:
        a = t.user_attrs
        return {"trial": t.number, "kind": a.get("kind"), "top1": a.get("top1"), "macs_m": a.get("macs", 0) / 1e6,
                "r": a.get("r_actual"), "d": t.params.get("d"), "w": a.get("w"), "resolution": a.get("resolution")}

    front = sorted((t for t in study.best_trials), key=lambda t: t.user_attrs.get("macs", 0)) if best else []
    return {"study": study.study_name, "planned": planned, "done": len(done), "running": states.get("RUNNING", 0),
            "waiting": states.get("WAITING", 0), "failed": states.get("FAIL", 0), "given_up": len(given_up),
            "left": max(0, planned - len(done) - len(given_up)),
            "workers": sorted({t.user_attrs["worker"] for t in trials
                               if t.state.name == "RUNNING" and "worker" in t.user_attrs}),
            "best": {f"{c:g}": brief(best[c]) if c in best else None for c in (budgets or sorted(best, reverse=True))},
            "front": [brief(t) for t in front]}


def progress_lines(study) -> list[str]:
    p = progress(study)
    pct = 100 * p["done"] / p["planned"] if p["planned"] else 0.0
    workers = f" on {', '.join(p['workers'])}" if p["workers"] else ""
    lines = [f"progress: {p['done']} of {p['planned']} planned trials done ({pct:.0f} %); {p['running']} running"
             f"{workers}; {p['failed']} failed (recorded; {p['given_up']} given up, the rest retried); "
             f"{p['left']} left ({p['waiting']} waiting)"]

    def describe(b: dict[str, Any]) -> str:
        return (f"trial {b['trial']} ({b['kind']}) top-1 {b['top1']:.2f}% at {b['macs_m']:.2f}M MACs, "
                f"r {b['r']:.3f} d {b['d']:.3f} w {b['w']:.3f}, {b['resolution']} px")

    lines.append("best per budget:")
    for c, b in p["best"].items():
        lines.append(f"  c={c:<6} " + (describe(b) if b else "no completed trial yet"))
    lines.append(f"Pareto front (top-1 up, MACs down): {len(p['front'])} trial(s)")
    lines += [f"  {describe(b)}" for b in p["front"]]
    return lines


def _public_url(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)  # no passwords in a file that gets shared


def fit_formula(study, include_dominated: bool = False, storage_url: str = ""):
    """A TinyFormula from the study's front (per budget, the most accurate trial) and its provenance."""
    from ..cube.formula import Point, TinyFormula

    settings = settings_of(study)
    complete = _complete(study)
    if not complete:
        counts = summary(study)
        raise RubikError(f"study {study.study_name!r} has no completed trials to fit ({counts}); "
                         f"run or resume it with `rubik search run --study {study.study_name} ...` first")
    front = front_numbers(study)
    best: dict[float, Any] = {}
    for t in complete:
        c = t.params["c"]
        if c not in best or t.user_attrs["top1"] > best[c].user_attrs["top1"]:
            best[c] = t
    points = [Point(1.0, 1.0, 1.0, 1.0, settings.base, None, False)]  # the base: where twisting starts
    for _, t in sorted(best.items(), reverse=True):
        a = t.user_attrs
        points.append(Point(round(a["macs_ratio"], 5), round(a["r_actual"], 4), round(t.params["d"], 4),
                            round(a["w"], 4), f"trial_{t.number}", round(a["top1"], 3),
                            include_dominated or t.number in front))
    fitted = sum(p.fit for p in points)
    if fitted < 3:
        dominated = len(best) - (fitted if include_dominated else sum(t.number in front for t in best.values()))
        raise RubikError(f"study {study.study_name!r} has {len(complete)} completed trials over {len(best)} budget(s), "
                         f"giving {fitted} point(s) to fit ({dominated} budget best(s) dominated); the GP needs 3: "
                         + ("run a study with 3 or more budgets (--budget 0.5 0.25 0.125)" if len(best) < 3
                            else "add trials (a budget's best counts when no other budget's trial beats it)")
                         + ("" if include_dominated else " or pass --include-dominated"))
    base = base_spec(settings)
    source = (f"rubik search study {study.study_name!r}: base {settings.base} at {base.resolution} px, data "
              f"{settings.data}, {settings.epochs} epochs ({settings.recipe} recipe), seed {settings.seed}, "
              f"{len(complete)} completed trials; each point is a budget's most accurate trial, fitted when it is on "
              "the accuracy-MACs Pareto front. r is relative to the base resolution of the study.")
    formula = TinyFormula(points, settings.base, dict(formula_rules_twister(settings).formula.rules), source,
                          f"study {study.study_name}")
    provenance = {"study": study.study_name, "storage": _public_url(storage_url), "settings": settings.to_dict(),
                  "completed_trials": len(complete), "front_trials": sorted(front)}
    return formula, provenance


def paper_formula(settings):
    """The built-in formula the study base's family twists with (the TinyNet paper's for EfficientNet-B0)."""
    from ..cube.formula import TinyFormula
    from ..models.registry import FAMILIES

    return TinyFormula.builtin(FAMILIES[base_spec(settings).family].formula)


def beside_paper(formula, settings) -> tuple[str, list[dict[str, float]]]:
    """Each fitted point next to what the paper's formula gives at its c. Both sets of multipliers are
    relative to their own base, so a study at 32 px compares with the paper's 224 px."""
    from ..cube.formula import closed_form_width

    paper = paper_formula(settings)
    table = []
    for p in formula.fitted:
        ref = paper.predict(p.c)
        table.append({"c": p.c, "r": p.r, "r_paper": ref.r, "d": p.d, "d_paper": ref.d, "w": p.w,
                      "w_paper": closed_form_width(p.c, ref.r, ref.d)})
    return paper.path, table


def save_formula(formula, provenance: dict[str, Any], path) -> None:
    """The formula file: TinyFormula's fields plus the study's provenance (which TinyFormula.load ignores)."""
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps({**formula.to_dict(), "provenance": provenance}, indent=2) + "\n")

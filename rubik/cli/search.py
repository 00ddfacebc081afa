"""`rubik search run | fit | plot | show`. Heavy imports stay inside the commands.

`rubik search --base ... --study NAME` (options first, no subcommand) means `rubik search run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _storage(args: argparse.Namespace, heartbeat: int = 10):
    from ..search.study import open_storage

    return open_storage(args.storage, heartbeat)


def cmd_run(args: argparse.Namespace) -> None:
    from ..api import search
    from ..errors import RubikError

    if not args.study:
        raise RubikError("give a subcommand (run, fit, plot, show) or run a study with --study NAME "
                         "(rerun the same command to resume it); see rubik search --help")
    options = {k: getattr(args, k) for k in ("base", "base_resolution", "budget", "trials", "epochs", "r_range",
                                             "d_range", "references", "seed", "recipe", "batch_size", "lr", "latency",
                                             "out", "workers", "threads", "heartbeat", "storage", "storage_wait")}
    result = search(args.study, data=args.data, set=args.set or [], log=lambda line: print(line, flush=True),
                    **options)
    print(f"this worker completed {result['completed']} trial(s); {result['summary']}")


def cmd_fit(args: argparse.Namespace) -> None:
    from ..cube.formula import TinyFormula
    from ..search.front import beside_paper, fit_formula, save_formula
    from ..search.study import load_study, settings_of

    storage = _storage(args)
    study = load_study(args.study, storage)
    formula, provenance = fit_formula(study, include_dominated=args.include_dominated, storage_url=storage.url)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_formula(formula, provenance, out)
    check = TinyFormula.load(out)  # what `rubik twist --formula` will read
    print(f"formula with {len(check.fitted)} fitted point(s) written to {out} (use: rubik twist --formula {out})")
    for p in check.points:
        if p.top1 is None:
            continue  # the base, kept for reference
        mark = "" if p.fit else "  (not fitted: dominated)"
        print(f"  {p.name:<10} c={p.c:<8g} r={p.r:.3f} d={p.d:.3f} w={p.w:.3f} top-1 {p.top1:.2f}%{mark}")
    for c in (min(p.c for p in check.fitted), max(p.c for p in check.fitted)):
        pred = check.predict(c)
        print(f"  GP at c={c:g}: r {pred.r:.3f} ± {2 * pred.r_std:.3f}, d {pred.d:.3f} ± {2 * pred.d_std:.3f}")
    paper, table = beside_paper(check, settings_of(study))
    print(f"fitted points beside the paper's formula ({paper}) at the same c, each relative to its own base:")
    for row in table:
        print(f"  c={row['c']:<8g} r {row['r']:.3f} (paper {row['r_paper']:.3f})  d {row['d']:.3f} "
              f"(paper {row['d_paper']:.3f})  w {row['w']:.3f} (paper {row['w_paper']:.3f})")


def cmd_plot(args: argparse.Namespace) -> None:
    from ..search.plots import plot_study
    from ..search.study import load_study

    study = load_study(args.study, _storage(args))
    out = Path(args.out) if args.out else Path("runs") / "search" / args.study / "plots"
    for path in plot_study(study, out, args.formula):
        print(path)


def cmd_show(args: argparse.Namespace) -> None:
    from ..search.front import progress, progress_lines, rows
    from ..search.study import load_study

    study = load_study(args.study, _storage(args))
    table = rows(study)
    if args.json:
        print(json.dumps({"progress": progress(study), "trials": table}, indent=2))
        return
    fmt = "{:>5} {:<8} {:<6} {:>6} {:>6} {:>6} {:>5} {:>8} {:>8} {:>6}  {}"
    print(fmt.format("trial", "state", "kind", "c", "r", "d", "w", "px", "MACs M", "top-1", "note"))
    def num(r, key, spec="{:.3f}"):
        return "-" if r.get(key) is None else spec.format(r[key])

    for r in table:
        print(fmt.format(r["number"], r["state"], r.get("kind", ""), num(r, "c", "{:g}"), num(r, "r"), num(r, "d"),
                         num(r, "w"), num(r, "resolution", "{}"), num(r, "macs_m", "{:.2f}"), num(r, "top1", "{:.2f}"),
                         ("front " if r.get("front") else "") + (r.get("fail_reason") or "")))
    print("\n".join(progress_lines(study)))


def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///runs/search/studies.db); "
                                     "postgresql://... shares a study between machines")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", help="study name (required); rerunning the same command resumes it")
    _add_storage(p)
    p.add_argument("--base", default="efficientnet_b0", help="model to shrink (default efficientnet_b0)")
    p.add_argument("--base-resolution", dest="base_resolution", type=int, default=0,
                   help="the base's input size for this study (default: the base's own, e.g. 224)")
    p.add_argument("--data", default="digits", help="an ImageFolder tree, or 'digits' (default)")
    p.add_argument("--budget", type=float, nargs="+", default=[0.5],
                   help="MACs ratio(s) c to the base; several give a multi-budget study (e.g. 0.5 0.25 0.125)")
    p.add_argument("--trials", type=int, default=50, help="planned trials (across budgets); raise it to add more")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per trial (a fixed short schedule)")
    p.add_argument("--r-range", dest="r_range", type=float, nargs=2, default=[0.4, 1.0], metavar=("LO", "HI"),
                   help="resolution multipliers sampled (default 0.4 1.0)")
    p.add_argument("--d-range", dest="d_range", type=float, nargs=2, default=[0.4, 1.4], metavar=("LO", "HI"),
                   help="depth multipliers sampled (default 0.4 1.4)")
    p.add_argument("--references", action="store_true",
                   help="also train the tiny-formula and inverse-giant models at each budget (2 trials per budget "
                        "beyond --trials), marked in the front plot")
    p.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    p.add_argument("--recipe", default="small", help="training recipe (default small)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any training option, e.g. ema_decay=0")
    p.add_argument("--latency", action="store_true", help="also measure each model's CPU latency (batch 1, 1 thread)")
    p.add_argument("--out", help="trial run directories (default runs/search/STUDY)")
    p.add_argument("--workers", type=int, help="DataLoader workers per trial")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between heartbeats; a trial silent for 4 of them is failed and retried (default 10)")
    p.add_argument("--storage-wait", dest="storage_wait", type=float, default=120,
                   help="seconds to keep retrying a database that stopped answering (a restart) before this worker "
                        "exits; rerunning the same command resumes (default 120)")


def register(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="search (resolution, depth, width) on real data; fit a tiny formula",
                            description="The Model Rubik's Cube search. `rubik search --study NAME ...` is "
                                        "`rubik search run`.")
    ssub = search.add_subparsers(dest="search_command", metavar="{run,fit,plot,show}")
    _add_run_options(search)  # `rubik search --study NAME ...` (no subcommand) is `run`
    search.set_defaults(func=cmd_run)

    p = ssub.add_parser("run", help="run (or resume, or join) a study: sampled (r, d), w solved, each trained")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = ssub.add_parser("fit", help="refit the tiny formula's GP on a study's Pareto front; write a formula file")
    p.add_argument("study")
    p.add_argument("-o", "--out", required=True, help="formula JSON to write (for rubik twist --formula)")
    p.add_argument("--include-dominated", action="store_true",
                   help="fit every budget's best trial, even one another budget beats")
    _add_storage(p)
    p.set_defaults(func=cmd_fit)

    p = ssub.add_parser("plot", help="PNGs: accuracy vs r, d, w per budget (Fig. 2), the front (Fig. 1), curves")
    p.add_argument("study")
    p.add_argument("--out", help="folder for the PNGs (default runs/search/STUDY/plots)")
    p.add_argument("--formula", help="a fitted formula file to draw its curves (Fig. 3)")
    _add_storage(p)
    p.set_defaults(func=cmd_plot)

    p = ssub.add_parser("show", help="a study's trials and progress: done / running / failed / left, each budget's "
                                     "best, the Pareto front")
    p.add_argument("study")
    p.add_argument("--json", action="store_true")
    _add_storage(p)
    p.set_defaults(func=cmd_show)


"""Tiny formula vs inverse giant formula vs width-only shrinking on CIFAR-10, paired by seed, with intervals.

The TinyNet paper's claim (Table 2 / Fig. 1): at the same MACs, shrinking a base with the tiny formula
beats the inverse EfficientNet (giant) formula and beats shrinking width alone. This script trains the
three models at each budget on the full CIFAR-10 training set, several seeds each, and reports test
top-1 on the full test set with 95 % t-intervals over seeds and the paired differences.

    base     efficientnet_b0 at 32 px (CIFAR's own size: shrinking r drops real pixels, as below 224 px on
             ImageNet; --base-resolution 64 upsamples instead)
    budgets  c = 0.5 and 0.25 of the base's MACs, counted with the 10-class head the models are trained with
    models   tiny   r, d = the tiny formula's GP at c (rubik/cube/formulas/tinynet_paper.json)
             giant  r, d = 1.15^phi, 1.2^phi with 2^phi = c (the inverse giant formula)
             width  r = d = 1
             each with the width solved (and r moved by at most 6 %) so that its MACs are within 1 % of
             c x base: the three models of a budget have equal MACs
    schedule the `small` recipe (AdamW, lr 2e-3 per 64 images scaled to the batch, cosine after a warm-up
             of 10 % of the steps), --epochs (default 1.5; fractions allowed), batch 128, crops (0.6, 1) +
             flips, no EMA; a seed fixes
             the initial weights, the batch order and the augmentation, so seed s is the same draw for all
             three models (the pairing); accuracy is the test top-1 after the last step (no best-epoch picking)
    data     the in-memory path (decoded once into a uint8 cache, batches augmented as tensors)

Results go to OUT/results.jsonl, one line per finished (method, budget, seed) with the schedule's key;
a rerun skips what is done and resumes an interrupted run from its last checkpoint, so the comparison
can be run in pieces, across sessions, or on several machines sharing OUT (one --worker each).

    .venv/bin/python benchmarks/cube_cifar10.py --epochs 0.05 --seeds 0        # a smoke run, minutes
    .venv/bin/python benchmarks/cube_cifar10.py          # 5 seeds x 2 budgets x 3 models, 1.5 epochs: ~1.8 h
    .venv/bin/python benchmarks/cube_cifar10.py --report                        # the tables from results.jsonl
    .venv/bin/python benchmarks/cube_cifar10.py --device cuda --epochs 30 --seeds 0 1 2 3 4 5 6 7 --jobs 4

Power: a paired difference is resolved when its 95 % interval excludes zero; the table prints the
interval's half-width (the smallest difference this many seeds can resolve at the observed spread) and
the difference that would be detected with 80 % power.

The data comes from ../shared/datasets/cifar10-jpg.tar.gz, extracted under /tmp (never the repo).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
METHODS = ("tiny", "giant", "width")
LABELS = {"tiny": "tiny formula", "giant": "inverse giant", "width": "width only"}
NUM_CLASSES = 10
WARMUP = 0.1  # fraction of the schedule spent warming up the learning rate


def cifar_root(where: Path) -> Path:
    """The extracted ImageFolder tree, extracting the shared tarball into `where` the first time."""
    root = where / "cifar10"
    if not (root / "train").is_dir():
        if not TARBALL.is_file():
            sys.exit(f"CIFAR-10 not found: extract cifar10-jpg.tar.gz so that {root}/train exists")
        print(f"extracting {TARBALL} into {where} ...", flush=True)
        where.mkdir(parents=True, exist_ok=True)
        with tarfile.open(TARBALL) as tar:
            tar.extractall(where, filter="data")
    return root


def subset(root: Path, out: Path, train_per_class: int, test_per_class: int) -> Path:
    """The whole tree (0, 0), or a class-balanced subset as symlinks: out/train/CLASS/*.jpg, out/test/..."""
    if not train_per_class and not test_per_class:
        return root
    tree = out / f"cifar10-{train_per_class}-{test_per_class}"
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            images = sorted(class_dir.glob("*.jpg"))[:n or None]
            dest = tree / split / class_dir.name
            if dest.is_dir() and len(list(dest.iterdir())) == len(images):
                continue
            dest.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                link = dest / f"{i:05d}.jpg"
                if not link.exists():
                    link.symlink_to(image)
    return tree


# ---- the models ---------------------------------------------------------------------------------------------


def _macs(spec) -> int:
    from rubik.cube.solve import macs_of

    return macs_of(spec, num_classes=NUM_CLASSES)


def _solve_width(spec, target: float) -> tuple[object, int]:
    """The width whose 10-class MACs are nearest `target` ((None, 0) when no width reaches it)."""
    from rubik.cube.solve import InfeasibleBudget, solve_width

    try:
        bracket = solve_width(spec, target, num_classes=NUM_CLASSES)
    except InfeasibleBudget:
        return None, 0
    return min(bracket, key=lambda sm: abs(sm[1] - target))


def _solve(spec, target: float, max_resolution_change: float) -> tuple[object, int]:
    """rubik.cube.solve.solve's search, but strict: within 1 % or exit (the caller then looks further)."""
    best, best_macs = _solve_width(spec, target)
    limit = round(spec.resolution * max_resolution_change)
    for offset in sorted(range(-limit, limit + 1), key=abs)[1:]:
        if best is not None and abs(best_macs / target - 1) <= 0.01:
            break
        cand, cand_macs = _solve_width(replace(spec, resolution=spec.resolution + offset), target)
        if cand is not None and (best is None or abs(cand_macs - target) < abs(best_macs - target)):
            best, best_macs = cand, cand_macs
    if best is None or abs(best_macs / target - 1) > 0.01:
        sys.exit(f"no {spec.name} within 1 % of {target / 1e6:.2f} M MACs near {spec.resolution} px")
    return best, best_macs


def models(base_name: str, base_resolution: int, ratio: float) -> tuple[object, int, dict]:
    """{method: (spec, macs)} at c = ratio of the base's 10-class MACs, all within 1 % of it."""
    from rubik.cube.giant import giant, phi_for_ratio
    from rubik.cube.twist import Twister
    from rubik.models import get_spec

    base = replace(get_spec(base_name), resolution=base_resolution)
    base_macs = _macs(base)
    target = ratio * base_macs
    tiny = Twister(base, "tiny")
    p = tiny.formula.predict(ratio)
    r_giant, d_giant, _ = giant(phi_for_ratio(ratio))
    starts = {"tiny": (p.r, p.d, tiny.twist_rules(), 0.06), "giant": (r_giant, d_giant, base.rules, 0.06),
              "width": (1.0, 1.0, base.rules, 0.0)}
    out = {}
    for method, (r, d, rules, move) in starts.items():
        spec = replace(base, name=f"{method}_c{ratio:g}", resolution=max(16, round(base_resolution * r)),
                       depth=base.depth * d, rules=rules)
        try:
            out[method] = _solve(spec, target, move)
        except SystemExit:  # channel steps of 5 % at this size: look further from the formula's resolution
            out[method] = _solve(spec, target, 2.5 * move)
            print(f"note: {method} at c = {ratio:g} moved to {out[method][0].resolution} px (formula: "
                  f"{spec.resolution} px) to land within 1 % of the budget")
    return base, base_macs, out


# ---- statistics ---------------------------------------------------------------------------------------------


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample sd, half-width of the 95 % t-interval); half-width nan with one value."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = statistics.stdev(values)
    return mean, sd, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def detectable(sd: float, n: int, power: float = 0.8) -> float:
    """The true paired difference a two-sided 5 % t-test on n seeds detects with `power` at this sd."""
    from scipy import stats

    if n < 2 or not math.isfinite(sd):
        return float("nan")
    return (stats.t.ppf(0.975, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n)


def report(rows: list[dict], key: dict) -> None:
    print(f"\n# CIFAR-10 ({key['train']} train / {key['test']} test images), {key['base']} base at "
          f"{key['base_resolution']} px, {key['epochs']:g} epochs, batch {key['batch_size']}, device {key['device']}")
    print("| c | model | input px | d | w | MACs M | seeds | test top-1 % mean | 95 % CI | sd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by = {(r["budget"], r["method"]): {} for r in rows}
    for r in rows:
        by[(r["budget"], r["method"])][r["seed"]] = r
    budgets = sorted({b for b, _ in by}, reverse=True)
    for b in budgets:
        for m in METHODS:
            runs = by.get((b, m))
            if not runs:
                continue
            one = next(iter(runs.values()))
            mean, sd, half = t_interval([r["top1"] for r in runs.values()])
            print(f"| {b:g} | {LABELS[m]} | {one['resolution']} | {one['depth_mult']:.3f} | {one['width']:.3f} | "
                  f"{one['macs'] / 1e6:.3f} | {len(runs)} | {mean:.2f} | ± {half:.2f} | {sd:.2f} |")
    print("\n| c | difference | pairs | mean (points) | 95 % CI | sd | resolved | 80 % power at |")
    print("|---|---|---|---|---|---|---|---|")
    for b in budgets:
        for other in ("giant", "width"):
            a, o = by.get((b, "tiny"), {}), by.get((b, other), {})
            seeds = sorted(set(a) & set(o))
            if not seeds:
                continue
            diffs = [a[s]["top1"] - o[s]["top1"] for s in seeds]
            mean, sd, half = t_interval(diffs)
            if not math.isfinite(half):
                verdict = "one pair"
            elif mean - half > 0:
                verdict = "yes: tiny better"
            elif mean + half < 0:
                verdict = f"yes: {other} better"
            else:
                verdict = "no"
            print(f"| {b:g} | tiny - {other} | {len(seeds)} | {mean:+.2f} | [{mean - half:+.2f}, "
                  f"{mean + half:+.2f}] | {sd:.2f} | {verdict} | {detectable(sd, len(seeds)):.2f} |")
    times = [r["seconds"] for r in rows]
    print(f"\n{len(rows)} runs, {sum(times) / 3600:.2f} h of training in all ({statistics.fmean(times) / 60:.1f} min "
          "per run); the CI half-width of a difference is the smallest one these seeds resolve at its spread")


# ---- the runs -----------------------------------------------------------------------------------------------


def read_results(path: Path, key_hash: str) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash mid-write
        if row.get("key") == key_hash:
            out.append(row)
    return out


def train_one(args, key_hash: str, data: Path, method: str, budget: float, seed: int, spec, macs: int,
              base) -> dict:
    from rubik.tasks import make_task
    from rubik.train.recipes import build_config
    from rubik.train.trainer import train

    run_dir = args.out / "runs" / key_hash / f"{method}-c{budget:g}-s{seed}"
    n_epochs = max(1, math.ceil(args.epochs))
    values = dict(model=spec.to_dict(), data=str(data), epochs=n_epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=seed, ema_decay=0.0, device=args.device, hflip=0.5, crop_scale=[0.6, 1.0], crop_pct=1.0,
                  log_every=0, data_path=args.data_path, num_workers=args.workers,
                  warmup_epochs=WARMUP * n_epochs)  # of the steps actually taken, also for fractions
    if args.epochs != n_epochs:  # a fraction: the same number of steps spread over whole epochs
        full = args.train_images // args.batch_size
        values["steps_per_epoch"] = max(1, round(args.epochs * full / n_epochs))
    config = build_config(cli_values=values)
    resume = (run_dir / "config.yaml").is_file()
    t = time.perf_counter()
    train(config, run_dir, make_task(config), resume=resume, progress=False)
    seconds = time.perf_counter() - t
    with open(run_dir / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    return {"key": key_hash, "method": method, "budget": budget, "seed": seed, "top1": float(last["val_top1"]),
            "seconds": seconds, "images_per_s": float(last["images_per_s"]), "macs": macs,
            "resolution": spec.resolution, "depth_mult": spec.depth / base.depth, "width": spec.width / base.width,
            "resumed": resume}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="an extracted cifar10/ folder (default: extract into /tmp)")
    p.add_argument("--out", type=Path, default=Path("/tmp/rubik-cube-cifar10"))
    p.add_argument("--base", default="efficientnet_b0")
    p.add_argument("--base-resolution", type=int, default=32)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25], help="MACs ratios c to the base")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=float, default=1.5, help="passes over the training set (fractions allowed)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="per 64 images (scaled linearly to the batch)")
    p.add_argument("--train-per-class", type=int, default=0, help="0: all 5,000")
    p.add_argument("--test-per-class", type=int, default=0, help="0: all 1,000")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data-path", default="memory", choices=["memory", "files"])
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (the files path only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per job (0: cores / jobs)")
    p.add_argument("--jobs", type=int, default=0,
                   help="runs trained at once, one process each (0: 2 on a CPU with 2+ cores, else 1)")
    p.add_argument("--worker", type=int, nargs=2, metavar=("I", "N"), help="take every N-th pending run from I")
    p.add_argument("--only", nargs="+", choices=METHODS, help="train only these models")
    p.add_argument("--report", action="store_true", help="print the tables from results.jsonl and exit")
    args = p.parse_args()

    root = args.data or cifar_root(Path("/tmp"))
    data = subset(root, args.out, args.train_per_class, args.test_per_class)
    args.train_images = sum(1 for _ in (data / "train").rglob("*.jpg"))
    test_images = sum(1 for _ in (data / "test").rglob("*.jpg"))
    key = {"base": args.base, "base_resolution": args.base_resolution, "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": args.lr, "train": args.train_images, "test": test_images,
           "device": "cuda" if args.device.startswith("cuda") else "cpu", "recipe": "small-crop0.6-noema-warmup0.1-v2"}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    results_path = args.out / "results.jsonl"
    if args.report:
        rows = read_results(results_path, key_hash)
        if not rows:
            sys.exit(f"no results for this schedule (key {key_hash}) in {results_path}")
        report(rows, key)
        return

    import torch

    jobs = args.jobs or (2 if args.device == "cpu" and (os.cpu_count() or 1) >= 2 else 1)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // jobs))
    plan = {b: models(args.base, args.base_resolution, b) for b in args.budgets}
    methods = args.only or list(METHODS)
    todo = [(s, b, m) for s in args.seeds for b in args.budgets for m in methods]  # seed-major: pairs finish together
    done = {(r["seed"], r["budget"], r["method"]) for r in read_results(results_path, key_hash)}
    pending = [t for t in todo if t not in done]
    if args.worker:  # the runs the parent gave this job (or, started by hand, every N-th pending one)
        i, n = args.worker
        given = os.environ.get("CUBE_RUNS")
        pending = [tuple(t) for t in json.loads(given)] if given else pending[i::n]
    elif jobs > 1 and pending:  # one process per job, each taking every jobs-th pending run
        print(f"{len(pending)} runs pending, {jobs} jobs", flush=True)
        if args.data_path == "memory":  # decode once here, not in every job at the same time
            from rubik.train.data import open_data
            from rubik.train.memory_data import default_cache_dir, memory_splits

            memory_splits(open_data(str(data), args.base_resolution), str(data), args.base_resolution, 1.0,
                          default_cache_dir())
        procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--jobs", str(jobs), "--worker", str(i),
                                   str(jobs)], env={**os.environ, "CUBE_RUNS": json.dumps(pending[i::jobs])})
                 for i in range(jobs)]
        codes = [pr.wait() for pr in procs]
        if any(codes):
            sys.exit(f"a job failed (exit codes {codes}); rerun the same command to continue")
        pending = []
    if not args.worker:
        for b, (base, base_macs, ms) in plan.items():
            print(f"c = {b:g} of {base.name} at {base.resolution} px ({base_macs / 1e6:.2f} M MACs, 10 classes): "
                  + "; ".join(f"{m} {s.resolution} px d {s.depth / base.depth:.3f} w {s.width / base.width:.3f} "
                              f"{mac / 1e6:.3f} M" for m, (s, mac) in ms.items()), flush=True)
        print(f"data {data}: {args.train_images} train / {test_images} test images; {args.epochs:g} epochs, "
              f"batch {args.batch_size}; {len(done)} of {len(todo)} runs done (key {key_hash}); "
              f"torch threads {torch.get_num_threads()}", flush=True)
    t_all = time.perf_counter()
    for k, (seed, budget, method) in enumerate(pending):
        base, _, ms = plan[budget]
        spec, macs = ms[method]
        row = train_one(args, key_hash, data, method, budget, seed, spec, macs, base)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(results_path, "a") as f:  # one short line in one write: safe beside other jobs' appends
            f.write(json.dumps(row) + "\n")
        elapsed = time.perf_counter() - t_all
        eta = elapsed / (k + 1) * (len(pending) - k - 1)
        print(f"  {LABELS[method]} c={budget:g} seed {seed}: test top-1 {row['top1']:.2f}% in {row['seconds']:.0f} s "
              f"({row['images_per_s']:.0f} img/s); {k + 1}/{len(pending)} done, about {eta / 60:.0f} min left",
              flush=True)
    if not args.worker:
        rows = read_results(results_path, key_hash)
        if rows:
            report(rows, key)


if __name__ == "__main__":
    main()

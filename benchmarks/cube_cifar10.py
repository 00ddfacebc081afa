"""Tiny formula vs inverse giant formula vs width-only shrinking, trained on CIFAR-10 at CPU scale.

The TinyNet paper's claim (Table 2 / Fig. 1): at the same FLOPs, shrinking a base with the tiny
formula (keep resolution and depth, cut width) beats the inverse EfficientNet formula and beats
shrinking width alone. This script checks the ordering on CIFAR-10 with a fixed short schedule:

    base     efficientnet_b0 at a base resolution of 64 px (CIFAR's 32 px images upsampled)
    budget   c = 0.25 x the base's MACs (the same c for all three models; MACs within 1 %)
    models   tiny   = Twister(base, "tiny").to_ratio(c)    (GP fit of the paper's TinyNet points)
             giant  = Twister(base, "giant").to_ratio(c)   (r, d from phi; w solved for the budget)
             width  = r = d = 1, w solved for the budget
    data     300 train images per class (3,000), test on 200 per class of the test split (2,000)
    schedule the `small` recipe (AdamW lr 2e-3, cosine, 1 warm-up epoch), 4 epochs, batch 64, no EMA,
             one torch thread, seeds 0 1 2; accuracy is the test top-1 after the last epoch (no best-epoch
             picking)

    .venv/bin/python benchmarks/cube_cifar10.py                 # defaults: 28 min on 2 shared cores

Last run (2 CPU cores shared with other jobs, load 5-9; 27.9 min):
    tiny formula   r 0.812 d 0.864 w 0.396  52 px  8.32 M MACs  18.40 ± 1.47 %
    inverse giant  r 0.766 d 0.679 w 0.465  49 px  8.35 M MACs  21.53 ± 1.75 %
    width only     r 1     d 1     w 0.437  64 px  8.29 M MACs  21.63 ± 1.17 %
The paper's ordering (tiny > giant, tiny > width) does not hold here: all three are barely above
chance (10 %) after 4 epochs on 3,000 images, and the gaps are about two standard deviations of
three seeds. This schedule is too short to rank the models; a longer one (--train-per-class 1000
--epochs 30) is what the comparison needs: about 12 h for 9 runs at the ~60 img/s seen here.
    .venv/bin/python benchmarks/cube_cifar10.py --epochs 2 --train-per-class 100 --seeds 0   # a smoke run

The data comes from ../shared/datasets/cifar10-jpg.tar.gz, extracted under /tmp (never the repo).
Runs go to /tmp/rubik-cube-cifar10/ (or --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARBALL = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


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
    """A class-balanced subset as a tree of symlinks: out/train/CLASS/*.jpg and out/test/CLASS/*.jpg."""
    tree = out / f"cifar10-{train_per_class}-{test_per_class}"
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            dest = tree / split / class_dir.name
            if dest.is_dir() and len(list(dest.iterdir())) == n:
                continue
            dest.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(sorted(class_dir.glob("*.jpg"))[:n]):
                link = dest / f"{i:05d}.jpg"
                if not link.exists():
                    link.symlink_to(image)
    return tree


def models(base_name: str, base_resolution: int, ratio: float):
    from rubik.cube.solve import macs_of, solve
    from rubik.cube.twist import Twister
    from rubik.models import get_spec

    base = replace(get_spec(base_name), resolution=base_resolution)
    tiny = Twister(base, "tiny").to_ratio(ratio, name="tiny")
    giant = Twister(base, "giant").to_ratio(ratio, name="giant")
    base_macs = macs_of(base)
    width_spec, width_macs = solve(replace(base, name="width_only"), ratio * base_macs,
                                   max_resolution_change=0.0)
    rows = [("tiny formula", tiny.spec, tiny.macs), ("inverse giant", giant.spec, giant.macs),
            ("width only", width_spec, width_macs)]
    return base, base_macs, rows


def final_top1(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv") as f:
        return float(list(csv.DictReader(f))[-1]["val_top1"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="an extracted cifar10/ folder (default: extract into /tmp)")
    p.add_argument("--out", type=Path, default=Path("/tmp/rubik-cube-cifar10"))
    p.add_argument("--base", default="efficientnet_b0")
    p.add_argument("--base-resolution", type=int, default=64)
    p.add_argument("--budget", type=float, default=0.25, help="MACs ratio c to the base")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (JPEG decoding)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: no spin-waiting on shared cores)")
    p.add_argument("--only", nargs="+", help="run only these models (tiny, giant, width)")
    args = p.parse_args()

    import torch

    from rubik.train.recipes import build_config
    from rubik.train.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.data or cifar_root(Path("/tmp"))
    data = subset(root, args.out, args.train_per_class, args.test_per_class)
    base, base_macs, rows = models(args.base, args.base_resolution, args.budget)
    if args.only:
        rows = [r for r in rows if r[0].split()[0].replace("inverse", "giant") in args.only]
    print(f"base {base.name} at {base.resolution} px: {base_macs / 1e6:.1f} M MACs; budget c={args.budget} "
          f"({args.budget * base_macs / 1e6:.1f} M MACs)")
    print(f"data {data}: {args.train_per_class} train / {args.test_per_class} test images per class; "
          f"{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr}, seeds {args.seeds}; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    results = []
    t_all = time.perf_counter()
    for label, spec, macs in rows:
        accs, times = [], []
        for seed in args.seeds:
            run_dir = args.out / "runs" / f"{spec.name}-seed{seed}"
            done = run_dir / "metrics.csv"
            if done.is_file() and (run_dir / "bench.json").is_file():  # finished earlier: reuse, do not retrain
                info = json.loads((run_dir / "bench.json").read_text())
                accs.append(info["top1"])
                times.append(info["seconds"])
                continue
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            config = build_config(cli_values=dict(
                model=spec.to_dict(), data=str(data), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                seed=seed, ema_decay=0.0, num_workers=args.workers, device="cpu", hflip=0.5,
                crop_scale=[0.6, 1.0], crop_pct=1.0, log_every=0))
            t = time.perf_counter()
            train(config, run_dir, progress=False)
            seconds = time.perf_counter() - t
            top1 = final_top1(run_dir)
            (run_dir / "bench.json").write_text(json.dumps({"top1": top1, "seconds": seconds}))
            accs.append(top1)
            times.append(seconds)
            print(f"  {label} seed {seed}: test top-1 {top1:.2f}% in {seconds:.0f} s", flush=True)
        results.append((label, spec, macs, accs, times))

    print()
    print(f"# CIFAR-10 subset, {args.base} base at {base.resolution} px, c = {args.budget}, {args.epochs} epochs, "
          f"{len(args.seeds)} seeds; total {(time.perf_counter() - t_all) / 60:.1f} min")
    fmt = "| {:<14} | {:>5} | {:>5} | {:>5} | {:>8} | {:>7} | {:>16} | {:>10} |"
    print(fmt.format("model", "r", "d", "w", "input px", "MACs M", "test top-1 %", "time / run"))
    print("|" + "|".join("-" * (n + 2) for n in (14, 5, 5, 5, 8, 7, 16, 10)) + "|")
    for label, spec, macs, accs, times in results:
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(fmt.format(label, f"{spec.resolution / base.resolution:.3f}", f"{spec.depth / base.depth:.3f}",
                         f"{spec.width / base.width:.3f}", spec.resolution, f"{macs / 1e6:.2f}",
                         f"{statistics.mean(accs):.2f} ± {spread:.2f}", f"{statistics.mean(times):.0f} s"))
    print("mean ± sample standard deviation over seeds; seeds: "
          + "; ".join(f"{label} " + ", ".join(f"{a:.2f}" for a in accs) for label, _, _, accs, _ in results))


if __name__ == "__main__":
    main()

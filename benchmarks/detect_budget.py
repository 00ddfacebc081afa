"""Detectors to a budget: each rubik family twisted to torchvision's MobileNetV3 SSDLite's int8 latency and to
its MACs, all trained on the same data and recipe with two seeds; the equal-latency and equal-MACs tables.

1. The reference, torchvision's `ssdlite_mobilenet_v3_large` at `--resolution`, is measured on this machine:
   batch 1, one thread, int8 file on ONNX Runtime and on ExecuTorch (XNNPACK), as `rubik export --int8` writes
   them; MACs of backbone + extra layers + head for the data's classes.
2. Each family's base detector at `--resolution` is twisted (`rubik.twist`, tiny formula on its backbone) to the
   reference's int8 latency on `--runtime` (`latency_of`: every candidate's file timed between two timings of the
   reference's, so a drift of the machine's speed cancels) and, separately, to its MACs.
3. Every detector is trained from scratch with the same recipe and schedule (`rubik train`, one process per run,
   `--jobs` at a time, one thread each), for each seed; COCO mAP@[.5:.95] on the held-out images. The default
   schedule is short (5 epochs of 1,500 images at batch 16), so it turns SSD's crop and zoom-out off.
4. Each run is exported to int8 ONNX (its mAP through rubik's runtime: what ships) and the first seed's also to
   int8 .pte; every file is timed alone (`rubik bench`), in three passes in alternating order (median).

Data (default): the generated CIFAR-10 boxes set of benchmarks/detect.py (CIFAR-10 objects pasted on blurred
CIFAR-10 backgrounds, COCO layout; needs ../shared/datasets/cifar10-jpg.tar.gz). `--data DIR` takes any COCO
folder instead (a real COCO: DIR/annotations/instances_{train,val}2017.json + images), and `--device cuda` trains
on a GPU; latency is always measured on this machine's CPU. Every step keeps its output in `--out`: a rerun of the
same command reuses finished twists, runs and files (a stopped training continues from its checkpoint).

    .venv/bin/python benchmarks/detect_budget.py --smoke     # minutes: checks that the script runs
    .venv/bin/python benchmarks/detect_budget.py             # the run of docs/benchmarks.md (see --help)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

REFERENCE = "ssdlite_mobilenet_v3_large"
FAMILIES = {"tinynet": "ssdlite_efficientnet_b0", "ghostnet": "ssdlite_ghostnet_130",
            "lite": "ssdlite:efficientnet_lite0"}
RUNTIME_BACKEND = {"onnxruntime": "ort-int8", "executorch": "et-int8"}


def say(line: str) -> None:
    print(line, flush=True)


def prepare_data(args) -> tuple[str, int]:
    """(the data folder, its number of object classes)."""
    from rubik.detect.data import open_detection_data

    if args.data:
        data = args.data
    else:
        from detect import CIFAR, make_dataset

        if not CIFAR.is_file():
            sys.exit(f"{CIFAR} is missing: the generated set needs the CIFAR-10 JPEG archive (or give --data DIR)")
        data = str(make_dataset(Path(args.out) / "data", args.canvas, args.train_images, args.val_images))
    return data, len(open_detection_data(data, split="val").classes)


def reference(args, num_classes: int) -> dict:
    """The reference's MACs and int8 latency on each runtime (median of `--repeats` measurements), kept in
    reference.json."""
    from rubik.detect.model import build_detector, detector_macs_params, get_detector_spec
    from rubik.detect.twist import detector_latency

    path = Path(args.out) / "reference.json"
    if path.is_file():
        return json.loads(path.read_text())
    spec = get_detector_spec(REFERENCE, args.resolution)
    ref = {"resolution": args.resolution, "num_classes": num_classes,
           "macs": detector_macs_params(build_detector(spec, num_classes))[0]}
    for runtime in RUNTIME_BACKEND:
        measure = detector_latency(runtime, num_classes, int8=True, runs=args.twist_runs)
        ref[f"{runtime}_ms"] = statistics.median(measure(spec) for _ in range(args.repeats))
        say(f"reference {REFERENCE} at {args.resolution} px: {runtime} int8 {ref[f'{runtime}_ms']:.2f} ms")
    path.write_text(json.dumps(ref, indent=2))
    return ref


def twists(args, ref: dict) -> dict[str, dict]:
    """{name: {"spec": JSON file, "family", "budget", "twist_s"}} of every family at the reference's latency on
    `--runtime` and at its MACs; each twist written once to specs/NAME.json."""
    import rubik

    folder = Path(args.out) / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for family in args.families:
        base = FAMILIES.get(family, family)
        # timed against the reference itself, so that a drift of the machine's speed during the twist cancels
        budgets = {"latency": {"latency_of": REFERENCE, "runtime": args.runtime, "int8": True},
                   "macs": {"flops": ref["macs"]}}
        for kind, budget in ((k, budgets[k]) for k in args.budgets):
            name = f"{family}_at_{kind}"
            path = folder / f"{name}.json"
            if not path.is_file():
                t = time.perf_counter()
                result = rubik.twist(base, **budget, base_resolution=args.resolution,
                                     num_classes=ref["num_classes"], name=name, out=path)
                against = f" (budget: {REFERENCE} measured at {result.budget})" if kind == "latency" else ""
                say(f"{name}: {result}{against} ({time.perf_counter() - t:.0f} s)")
                if kind == "latency":  # the twist's own measurements, beside its spec
                    path.with_suffix(".latency.json").write_text(json.dumps(
                        {"budget_ms": result.budget.value, "latency_ms": result.latency_ms}))
            made[name] = {"spec": str(path), "family": family, "budget": kind}
    return made


def train_all(args, data: str, models: dict[str, dict]) -> dict[str, Path]:
    """Train every (model, seed) not yet trained, `--jobs` processes at a time; {run name: run directory}."""
    from rubik.run import RunDir

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs, todo = {}, []
    for name, m in models.items():
        for seed in args.seeds:
            run = Path(args.out) / "runs" / f"{name}-seed{seed}"
            runs[f"{name}-seed{seed}"] = run
            if run.is_dir() and RunDir(run).epochs_done() >= args.epochs:
                continue
            cmd = [sys.executable, "-m", "rubik.cli", "train"]
            cmd += (["--resume", str(run)] if (run / "config.yaml").is_file() else
                    ["--model", m["spec"], "--data", data, "--out", str(run), "--seed", str(seed),
                     "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                     "--resolution", str(m["resolution"]), "--workers", str(args.workers), "--device", args.device]
                    + [a for kv in args.set for a in ("--set", kv)])
            todo.append((run, cmd))
    active: list[tuple[Path, subprocess.Popen, float]] = []
    while todo or active:
        while todo and len(active) < args.jobs:
            run, cmd = todo.pop(0)
            run.parent.mkdir(parents=True, exist_ok=True)
            log = open(run.parent / f"{run.name}.log", "a")
            active.append((run, subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT),
                           time.perf_counter()))
            say(f"training {run.name}")
        time.sleep(2)
        for item in [a for a in active if a[1].poll() is not None]:
            run, proc, start = item
            active.remove(item)
            if proc.returncode != 0:
                sys.exit(f"training {run.name} failed (exit {proc.returncode}); see {run.parent / run.name}.log")
            say(f"trained {run.name} in {time.perf_counter() - start:.0f} s")
    return runs


def export_all(args, data: str, runs: dict[str, Path]) -> dict[str, dict]:
    """{run: {"onnx": int8 file, "executorch": int8 .pte file (first seed only), "map": the int8 ONNX file's mAP}}."""
    import rubik
    from rubik.deploy.runtime import Detector
    from rubik.detect.data import open_detection_data
    from rubik.detect.evaluate import evaluate_file

    folder = Path(args.out) / "files"
    val = open_detection_data(data, split="val").val
    out = {}
    for run_name, run in runs.items():
        files = {"onnx": folder / f"{run_name}.int8.onnx"}
        if run_name.endswith(f"-seed{args.seeds[0]}"):
            files["executorch"] = folder / f"{run_name}.int8.pte"
        for fmt, path in files.items():
            if not path.is_file():
                rubik.export(run, path, format=fmt, int8=True, calib=data, calib_n=args.calib_n, max_drop=100)
        mapped = folder / f"{run_name}.int8.map.json"  # evaluating takes a while: kept beside the file
        if not mapped.is_file():
            mapped.write_text(json.dumps({"map": evaluate_file(Detector(files["onnx"], threads=1), val).map}))
        out[run_name] = {**{k: str(v) for k, v in files.items()}, **json.loads(mapped.read_text())}
    return out


def time_files(args, files: dict[str, dict]) -> dict[tuple[str, str], float]:
    """{(run, "onnxruntime"|"executorch"): ms}: each file timed in its own loop (warm caches, as while twisting;
    twelve models in one loop evict each other's weights and run up to 2x slower), `--passes` times in alternating
    order; the median of its passes' medians."""
    import rubik

    paths = [(run, runtime, f[key]) for run, f in files.items()
             for runtime, key in (("onnxruntime", "onnx"), ("executorch", "executorch")) if key in f]
    samples: dict[str, list[float]] = {Path(p).name: [] for _, _, p in paths}
    for i in range(args.passes):
        order = paths if i % 2 == 0 else paths[::-1]
        for row in rubik.bench([p for _, _, p in order], runs=args.runs):
            samples[Path(row.model).name].append(row.median_ms)
    return {(run, runtime): statistics.median(samples[Path(p).name]) for run, runtime, p in paths}


def table(title: str, names: list[str], results: dict[str, dict], ref: dict, runtime: str) -> list[str]:
    lines = [f"{title}", "", "| detector | input px | MACs M | params M | mAP seeds | mAP mean | int8 file mAP "
             f"mean | ORT int8 ms | ET int8 ms | {RUNTIME_BACKEND[runtime].split('-')[0].upper()} vs reference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base_ms = results[REFERENCE]["ms"][runtime]
    for name in names:
        r = results[name]
        ms = r["ms"]
        lines.append(f"| {r['label']} | {r['resolution']} | {r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.2f} | "
                     f"{' / '.join(f'{m:.1f}' for m in r['maps'])} | {statistics.mean(r['maps']):.1f} | "
                     f"{statistics.mean(r['file_maps']):.1f} | {ms['onnxruntime']:.2f} | {ms['executorch']:.2f} | "
                     f"{100 * (ms[runtime] / base_ms - 1):+.1f} % |")
    return lines


def summarise(args, models: dict[str, dict], runs: dict[str, Path], files: dict, ms: dict, ref: dict) -> list[str]:
    import rubik
    from rubik.detect.model import build_detector, detector_macs_params, get_detector_spec

    results = {}
    for name, m in models.items():
        det = build_detector(get_detector_spec(m["spec"], m["resolution"]), ref["num_classes"])
        macs, params = detector_macs_params(det)
        keys = [f"{name}-seed{s}" for s in args.seeds]
        results[name] = {**m, "macs": macs, "params": params,
                         "maps": [rubik.load_run(runs[k]).best["map"] for k in keys],
                         "file_maps": [files[k]["map"] for k in keys],
                         "ms": {rt: ms[(keys[0], rt)] for rt in RUNTIME_BACKEND}}
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    latency = [REFERENCE] + [n for n, m in models.items() if m.get("budget") == "latency"]
    macs = [REFERENCE] + [n for n, m in models.items() if m.get("budget") == "macs"]
    lines = []
    if len(latency) > 1:
        lines += table(f"At the reference's int8 latency on {args.runtime}", latency, results, ref,
                       args.runtime) + [""]
        for name in latency[1:]:  # each twist's own measurements: every candidate timed against the reference
            t = json.loads(Path(models[name]["spec"]).with_suffix(".latency.json").read_text())
            lines.append(f"- {name} while twisting: {t['latency_ms']:.2f} ms against the reference's "
                         f"{t['budget_ms']:.2f} ms ({100 * (t['latency_ms'] / t['budget_ms'] - 1):+.1f} %)")
        lines.append("")
        best = max(latency[1:], key=lambda n: statistics.mean(results[n]["maps"]))
        gap = statistics.mean(results[best]["maps"]) - statistics.mean(results[REFERENCE]["maps"])
        lines += [f"best rubik detector at the reference's latency: {results[best]['label']}, {gap:+.1f} mAP "
                  f"against {REFERENCE} (means of {len(args.seeds)} seeds)", ""]
    if len(macs) > 1:
        lines += table(f"At the reference's MACs ({ref['macs'] / 1e6:.1f} M)", macs, results, ref, args.runtime)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/detect-budget")
    p.add_argument("--data", help="a COCO folder (default: generate the CIFAR-10 boxes set into OUT/data)")
    p.add_argument("--canvas", type=int, default=192, help="generated set: canvas side (px)")
    p.add_argument("--train-images", type=int, default=1500, help="generated set: training canvases")
    p.add_argument("--val-images", type=int, default=300, help="generated set: held-out canvases")
    p.add_argument("--resolution", type=int, default=160, help="the reference's input size; the bases' before r")
    p.add_argument("--families", nargs="+", default=list(FAMILIES),
                   help=f"families to twist ({', '.join(FAMILIES)}) or any detector base")
    p.add_argument("--budgets", nargs="+", choices=["latency", "macs"], default=["latency", "macs"],
                   help="the tables to make: at the reference's latency, at its MACs")
    p.add_argument("--runtime", choices=list(RUNTIME_BACKEND), default="onnxruntime",
                   help="the runtime whose int8 latency the detectors are twisted to")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.008, help="learning rate per 64 images (rubik train --lr)")
    p.add_argument("--set", nargs="*", default=["crop_scale=[1.0,1.0]"], metavar="KEY=VALUE",
                   help="training options (rubik train --set); the default turns SSD's crop and zoom-out off: on a "
                        "three-epoch run (batch 16) they held MobileNetV3 SSDLite at 2.3 mAP against 10.8 without")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--jobs", type=int, default=2, help="trainings at a time (one thread each)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes per training")
    p.add_argument("--device", default="auto", help="training device: auto, cpu, cuda")
    p.add_argument("--repeats", type=int, default=3, help="measurements of the reference's latency (median)")
    p.add_argument("--twist-runs", type=int, default=50, help="timed rounds per latency measurement")
    p.add_argument("--runs", type=int, default=100, help="timed rounds per file in the final timing")
    p.add_argument("--passes", type=int, default=3, help="passes over all files in the final timing (median)")
    p.add_argument("--calib-n", type=int, default=128)
    p.add_argument("--smoke", action="store_true", help="tiny everything: checks that the script runs")
    args = p.parse_args()
    if args.smoke:
        args.canvas, args.train_images, args.val_images, args.resolution = 96, 48, 16, 96
        args.epochs, args.batch_size, args.runs, args.calib_n, args.twist_runs, args.repeats = 1, 8, 5, 8, 5, 1
        args.passes = 1
        args.out += "-smoke"
    start = time.perf_counter()
    data, num_classes = prepare_data(args)
    ref = reference(args, num_classes)
    models = {REFERENCE: {"spec": REFERENCE, "family": "torchvision", "budget": None}}
    models.update(twists(args, ref))
    for name, m in models.items():
        from rubik.detect.model import get_detector_spec

        m["resolution"] = args.resolution if name == REFERENCE else get_detector_spec(m["spec"]).resolution
        m["label"] = f"{REFERENCE} (torchvision)" if name == REFERENCE else name
    runs = train_all(args, data, models)
    files = export_all(args, data, runs)
    ms = time_files(args, files)
    lines = summarise(args, models, runs, files, ms, ref)
    header = (f"{data}: {num_classes} classes, {args.epochs} epochs from scratch, batch {args.batch_size}, recipe "
              f"small with lr {args.lr:g} per 64 images{''.join(', ' + kv for kv in args.set)}, seeds "
              f"{' '.join(map(str, args.seeds))}; latency batch 1, one thread, int8 files, median of "
              f"{args.runs} rounds, median of {args.passes} passes; MACs = multiply-accumulates (the papers' FLOPs) "
              f"of backbone + extra layers + head; mAP@[.5:.95] of the best checkpoint (PyTorch) and of the int8 "
              "ONNX file")
    (Path(args.out) / "tables.md").write_text("\n".join([header, ""] + lines) + "\n")
    say("\n" + header + "\n")
    say("\n".join(lines))
    say(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

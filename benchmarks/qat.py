"""Quantization-aware fine-tuning (`rubik train --qat`) against plain fine-tuning, from the same model.

A briefly trained model (small margins, the case where post-training int8 hurts) is fine-tuned twice
with the same schedule: once in float (the control: more training alone) and once with `--qat`. Each
run, and the starting model, is exported to ONNX fp32 and quantized as `rubik export --int8` does
(MinMax calibration on 256 training images, every layer but the stem in int8, and the automatic
boundary), then scored on the held-out test images. Defaults: tinynet_e on the embedded digits at
64 px, a 3-epoch base and 3-epoch fine-tunes at a tenth of the learning rate: about 3 min on 2 cores
(digits is easy: int8 there loses an image or none). The README's table is CIFAR-10 at 32 px, ~35 min:

    .venv/bin/python benchmarks/qat.py --data CIFAR10_DIR --resolution 32 --base-epochs 3 --epochs 2
    .venv/bin/python benchmarks/qat.py --model ghostnet_050 --base-epochs 4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rubik.classify.trained import load_classifier  # noqa: E402
from rubik.deploy.export import export_onnx  # noqa: E402
from rubik.deploy.images import open_images, sample  # noqa: E402
from rubik.deploy.quantize import check_int8, quantize_int8  # noqa: E402


def train(out: Path, *args: str) -> None:
    if (out / "best.safetensors").is_file():
        return
    cmd = [sys.executable, "-m", "rubik.cli", "train", "--out", str(out), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


def score(run: Path, data: str, work: Path) -> dict[str, float]:
    """fp32 and int8 top-1 (%) of a run on the test split."""
    model = load_classifier(str(run))
    fp32 = export_onnx(model, work / f"{run.name}.onnx")
    calib = open_images(data, "train")
    calib_images = calib.subset(sample(calib, 256, seed=0)).images
    held = open_images(data, "test")
    row = {}
    for boundary in ("all", "auto"):
        q = work / f"{run.name}.int8-{boundary}.onnx"
        quantize_int8(fp32, calib_images, q, calib_n=256, boundary=boundary, method="minmax", log=lambda s: None)
        check = check_int8(fp32, q, held, getattr(model, "classes", None))
        row["fp32"] = 100 * check.fp32_accuracy
        row[f"int8 {boundary}"] = 100 * check.int8_accuracy
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tinynet_e")
    p.add_argument("--data", default="digits", help="'digits' or an ImageFolder tree with train/ and test/ (or val/)")
    p.add_argument("--resolution", type=int, help="input size (default: the model's own; digits: 64)")
    p.add_argument("--base-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs, float and QAT alike")
    p.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate (the small recipe's is 2e-3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/rubik-bench-qat"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    rows: dict[str, list[dict[str, float]]] = {"base": [], "float fine-tune": [], "QAT fine-tune": []}
    for seed in args.seeds:
        common = ["--model", args.model, "--data", args.data, "--seed", str(seed), "--set", "warmup_epochs=0.5"]
        if args.resolution:
            common += ["--resolution", str(args.resolution)]
        base = args.work / f"{args.model}-base-s{seed}"
        train(base, *common, "--epochs", str(args.base_epochs))
        tune = [*common, "--init", str(base), "--epochs", str(args.epochs), "--lr", str(args.lr)]
        runs = {"base": base, "float fine-tune": args.work / f"{args.model}-float-s{seed}",
                "QAT fine-tune": args.work / f"{args.model}-qat-s{seed}"}
        train(runs["float fine-tune"], *tune)
        train(runs["QAT fine-tune"], *tune, "--qat")
        for name, run in runs.items():
            rows[name].append(score(run, args.data, args.work))
            print(f"seed {seed} {name}: {json.dumps({k: round(v, 2) for k, v in rows[name][-1].items()})}",
                  flush=True)

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in rows[name])

    print(f"\n{args.model} on {args.data}, top-1 % on the test split, mean of seeds {args.seeds}; "
          f"int8 = MinMax on 256 training images")
    print("| model | fp32 | int8 all | change | int8 auto | change |")
    print("|---|---|---|---|---|---|")
    for name in rows:
        f, a, b = mean(name, "fp32"), mean(name, "int8 all"), mean(name, "int8 auto")
        print(f"| {name} | {f:.2f} | {a:.2f} | {a - f:+.2f} | {b:.2f} | {b - f:+.2f} |")


if __name__ == "__main__":
    main()

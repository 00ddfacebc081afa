"""Which digits defaults: the demo's twisted model trained with a few variants of the `small` recipe.

The model is what `rubik demo` trains: EfficientNet-B0 at 64 px twisted to 0.25x its MACs (52 px
input). Each row trains it from scratch on the embedded digits and reports the test top-1 after the
last epoch (digits has no validation split, so that is the unbiased number), the best epoch's top-1,
the training seconds, and the saved best weights' top-1 in ONNX fp32 and int8 (`rubik export --int8
--calib digits`: calibrated on 256 training digits, boundary auto). About 6 minutes on 2 cores:

    .venv/bin/python benchmarks/digits_recipe.py
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

VARIANTS = {  # name -> (overrides of the digits defaults, epochs, classifier init)
    "crop (0.5, 1), warm-up 1, official head init": ({"crop_scale": [0.5, 1.0], "warmup_epochs": 1.0}, 15, "official"),
    "crop (0.8, 1), warm-up 3, official head init": ({}, 15, "official"),
    "crop (0.5, 1), warm-up 1": ({"crop_scale": [0.5, 1.0], "warmup_epochs": 1.0}, 15, "fan-in"),
    "defaults: crop (0.8, 1), warm-up 3 (the demo)": ({}, 15, "fan-in"),
}


def official_head_init(module) -> None:
    """The official code's classifier init, +-1/sqrt(classes), which rubik replaced by +-1/sqrt(features)."""
    import math

    import torch.nn as nn

    rubik_init(module)
    for m in module.modules():
        if isinstance(m, nn.Linear) and not m.weight.is_meta:
            bound = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)


import rubik.models.mbconv as mbconv  # noqa: E402

rubik_init = mbconv.init_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="run only the variants whose name contains this text")
    args = p.parse_args()

    from rubik.cli import main as rubik
    from rubik.cube.twist import Twister
    from rubik.deploy.images import open_images
    from rubik.deploy.quantize import check_int8
    from rubik.models import get_spec
    from rubik.sources import train_defaults
    from rubik.tasks import make_task
    from rubik.train import build_config, train

    base = replace(get_spec("efficientnet_b0"), resolution=64)
    spec = Twister(base).to_ratio(0.25).spec
    print(f"model: {spec.name} at {spec.resolution} px, d={spec.depth:.3f} w={spec.width:.3f}; "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch threads default")
    test = open_images("digits", "test")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rubik-digits-") as tmp:
        for i, (name, (overrides, epochs, head_init)) in enumerate(VARIANTS.items()):
            if args.only and args.only not in name:
                continue
            mbconv.init_weights = official_head_init if head_init == "official" else rubik_init
            run = Path(tmp) / f"run{i}"
            c = build_config(data_defaults=train_defaults("digits"), cli_values={
                "model": spec.to_dict(), "data": "digits", "resolution": spec.resolution, "epochs": epochs,
                "seed": args.seed, "log_every": 0, **overrides})
            train(c, run, make_task(c), progress=False)
            metrics = list(csv.DictReader(open(run / "metrics.csv")))
            last = metrics[-1]
            final = max(float(last["val_top1"]), float(last["ema_val_top1"]))
            best = max(max(float(r["val_top1"]), float(r["ema_val_top1"])) for r in metrics)
            seconds = sum(float(r["train_time_s"]) for r in metrics)
            # int8 of the run's best weights, checked on the 360 test digits
            assert rubik(["export", "--weights", str(run), "-o", str(run / "m.onnx"), "--int8", "--calib", "digits",
                          "--max-drop", "100"]) == 0
            check = check_int8(run / "m.fp32.onnx", run / "m.onnx", test, test.classes)
            rows.append((name, epochs, final, best, seconds, 100 * check.fp32_accuracy, 100 * check.int8_accuracy))
            print(f"  done: {name}", flush=True)
    print()
    fmt = "| {:<46} | {:>6} | {:>11} | {:>10} | {:>7} | {:>14} | {:>14} |"
    print(fmt.format("variant", "epochs", "final top-1", "best top-1", "train s", "best ONNX fp32", "best ONNX int8"))
    print(fmt.format(*["---"] * 7))
    for name, epochs, final, best, seconds, f32, i8 in rows:
        print(fmt.format(name, epochs, f"{final:.2f}", f"{best:.2f}", f"{seconds:.0f}", f"{f32:.2f}", f"{i8:.2f}"))
    print("top-1 in % on the 360 digits test images; final = the better of raw and EMA weights after the last "
          "epoch; the ONNX columns are the saved best weights")


if __name__ == "__main__":
    main()

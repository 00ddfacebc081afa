"""SSDLite on rubik backbones against torchvision's ssdlite320_mobilenet_v3_large, one run, same recipe.

Data ("CIFAR-10 boxes"): CIFAR-10 images (../shared/datasets/cifar10-jpg.tar.gz) pasted as objects, 1-4 per
canvas, at 25-60 % of the canvas side, onto a blurred, enlarged CIFAR-10 image of another class as the
background; written once in the COCO layout (DIR/annotations/instances_{train,val}.json + DIR/{train,val}/)
and read back by rubik's COCO reader. Objects of train come from CIFAR-10's train split, val from its test
split. 10 classes; ~5 % of canvases have no object. A synthetic set: the ranking, not the mAP, is the point.

For each detector, the same recipe (rubik's `small`: AdamW, cosine, EMA; SSD's augmentation) and
schedule, from scratch (no ImageNet weights can be downloaded here, so none for any model), then
COCO mAP@[.5:.95] / mAP@.5 on the held-out canvases (pycocotools), MACs and params of backbone + head,
and batch-1, one-thread ONNX Runtime latency of the exported fp32 and int8 files, all files timed
interleaved in one loop (the numbers are comparable to each other, on the machine that ran them).

    .venv/bin/python benchmarks/detect.py                # the full run (see --help for its size)
    .venv/bin/python benchmarks/detect.py --smoke        # minutes: tiny data, one epoch, tiny input
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
MODELS = ["ssdlite_mobilenet_v3_large", "ssdlite_ghostnet_100", "ssdlite_tinynet_d", "ssdlite_efficientnet_b_3"]


def read_cifar(path: Path, per_class: dict[str, int]) -> dict[str, dict[str, list[np.ndarray]]]:
    """{split: {class: [32x32x3 uint8]}}, the first `per_class[split]` images of each class, read from the tar."""
    from PIL import Image

    out: dict[str, dict[str, list[np.ndarray]]] = {s: {} for s in per_class}
    with tarfile.open(path) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 4 or parts[1] not in per_class:
                continue
            split, cls = parts[1], parts[2]
            bucket = out[split].setdefault(cls, [])
            if len(bucket) < per_class[split]:
                bucket.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")))
    return out


def make_dataset(root: Path, canvas: int, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Write the CIFAR-10 boxes set in the COCO layout (skipped when root already holds it)."""
    from PIL import Image, ImageFilter

    if (root / "annotations" / "instances_val.json").is_file():
        return root
    objects = read_cifar(CIFAR, {"train": max(200, n_train // 3), "test": max(50, n_val // 3)})
    classes = sorted(objects["train"])
    for split, src, n in (("train", "train", n_train), ("val", "test", n_val)):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        pool = objects[src]
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            bg_cls = classes[int(rng.integers(len(classes)))]
            bg = pool[bg_cls][int(rng.integers(len(pool[bg_cls])))]
            img = Image.fromarray(bg).resize((canvas, canvas), Image.Resampling.BILINEAR).filter(
                ImageFilter.GaussianBlur(canvas / 40))
            placed: list[tuple[int, int, int, int]] = []
            count = 0 if rng.random() < 0.05 else int(rng.integers(1, 5))
            for _ in range(count * 20):
                if len(placed) == count:
                    break
                side = int(rng.integers(int(canvas * 0.25), int(canvas * 0.6)))
                w = int(side * rng.uniform(0.8, 1.25))
                x, y = int(rng.integers(0, canvas - w)), int(rng.integers(0, canvas - side))
                if any(x < px + pw and px < x + w and y < py + ph and py < y + side for px, py, pw, ph in placed):
                    continue
                cls = int(rng.integers(len(classes)))
                obj = pool[classes[cls]][int(rng.integers(len(pool[classes[cls]])))]
                img.paste(Image.fromarray(obj).resize((w, side), Image.Resampling.BICUBIC), (x, y))
                placed.append((x, y, w, side))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls + 1,
                             "bbox": [x, y, w, side], "area": w * side, "iscrowd": 0})
            name = f"{i:06d}.jpg"
            img.save(root / split / name, quality=90)
            images.append({"id": i + 1, "file_name": name, "width": canvas, "height": canvas})
        (root / "annotations").mkdir(exist_ok=True)
        cats = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def train_one(model: str, data: Path, out: Path, args, seed: int = 0) -> dict:
    from rubik.detect.task import DetectionTask
    from rubik.run import RunDir
    from rubik.train.recipes import build_config
    from rubik.train.trainer import train

    cli = {"model": model, "data": str(data), "epochs": args.epochs, "batch_size": args.batch_size,
           "resolution": args.resolution, "num_workers": args.workers, "log_every": 0, "seed": seed,
           "device": args.device}
    if args.steps:
        cli["steps_per_epoch"] = args.steps
    config = build_config(data_defaults=DetectionTask.data_defaults(str(data)), yaml_values={}, cli_values=cli)
    if RunDir(out).epochs_done() >= args.epochs:
        print(f"{model}: reusing the finished run {out}", flush=True)
    else:
        t = time.perf_counter()  # a stopped run continues from its last checkpoint
        train(config, out, DetectionTask(config), resume=True, progress=False)
        print(f"{model}: trained in {time.perf_counter() - t:.0f} s", flush=True)
    return RunDir(out).best()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/detect-bench")
    p.add_argument("--models", nargs="+", default=MODELS, help="detector names or JSON detector spec files")
    p.add_argument("--canvas", type=int, default=256, help="canvas side of the generated images (px)")
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--resolution", type=int, default=256, help="detector input (every model the same)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps", type=int, default=0, help="steps per epoch (0: one pass)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", type=int, default=100, help="timed rounds per file")
    p.add_argument("--calib-n", type=int, default=128)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="a run per model and seed (MODEL-seedN)")
    p.add_argument("--smoke", action="store_true", help="tiny everything: checks that the script runs")
    args = p.parse_args()
    if args.smoke:
        args.canvas, args.train_images, args.val_images, args.resolution = 96, 48, 16, 96
        args.epochs, args.steps, args.batch_size, args.runs, args.calib_n = 1, 2, 8, 5, 8
        args.out = args.out + "-smoke"
    if not CIFAR.is_file():
        sys.exit(f"{CIFAR} is missing: this benchmark needs the CIFAR-10 JPEG archive in ../shared/datasets")

    import torch

    from rubik.deploy.quantize import quantize_int8
    from rubik.deploy.runtime import Detector
    from rubik.detect.data import open_detection_data
    from rubik.detect.evaluate import evaluate_file
    from rubik.detect.export import export_detector
    from rubik.detect.infer import load_detector
    from rubik.detect.model import detector_macs_params
    from rubik.timing import time_interleaved

    out = ROOT / args.out
    data = make_dataset(out / "data", args.canvas, args.train_images, args.val_images)
    calib_set, val_set = open_detection_data(str(data)).train, open_detection_data(str(data)).val
    calib = [np.asarray(calib_set.load_image(i)) for i in range(min(args.calib_n, len(calib_set)))]
    rows, runners = [], {}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runs = [(spec, seed) for spec in args.models for seed in args.seeds]
    for spec, seed in runs:
        model = Path(spec).stem if spec.endswith(".json") else spec  # a spec file's runs are named by its file
        model += f"-seed{seed}" if seed else ""
        best = train_one(spec, data, out / model, args, seed)
        det = load_detector(out / model)
        macs, params = detector_macs_params(det)
        fp32 = export_detector(det, out / f"{model}.fp32.onnx")  # a GhostNet in the Ghost layout (as rubik export)
        source = export_detector(det, out / f"{model}.int8-source.onnx", layout="int8")  # what --int8 quantizes
        int8 = out / f"{model}.int8.onnx"
        quantize_int8(source, calib, int8, calib_n=len(calib), log=lambda s: None)  # MinMax, timed boundary
        x = np.random.default_rng(0).random((1, 3, args.resolution, args.resolution), dtype=np.float32)
        row = {"model": model, "map": best["map"], "map50": best["map50"], "macs_m": macs / 1e6,
               "params_m": params / 1e6}
        for tag, path in (("fp32", fp32), ("int8", int8)):
            deployed = Detector(path, threads=1)
            runners[f"{model} {tag}"] = (lambda m=deployed.model, x=x: m.run_all(x))
            row[f"{tag}_map"] = evaluate_file(deployed, val_set).map  # the file, decoded by the runtime
        rows.append(row)
    times = time_interleaved(runners, runs=args.runs, warmup=5)
    for r in rows:
        r["fp32_ms"] = float(np.median(times[f"{r['model']} fp32"]))
        r["int8_ms"] = float(np.median(times[f"{r['model']} int8"]))
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nCIFAR-10 boxes, {args.train_images} train / {args.val_images} val canvases of {args.canvas} px, input "
          f"{args.resolution} px, {args.epochs} epochs from scratch, recipe small; latency batch 1, one thread, "
          f"ONNX Runtime, median of {args.runs} interleaved rounds")
    print("mAP: PyTorch (the run's best checkpoint); fp32 / int8 file mAP: the ONNX files through rubik's runtime")
    print("| detector | mAP@[.5:.95] | mAP@.5 | fp32 file mAP | int8 file mAP | MACs M | params M | ORT fp32 ms "
          "| ORT int8 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['map']:.1f} | {r['map50']:.1f} | {r['fp32_map']:.1f} | {r['int8_map']:.1f} | "
              f"{r['macs_m']:.0f} | {r['params_m']:.2f} | {r['fp32_ms']:.2f} | {r['int8_ms']:.2f} |")


if __name__ == "__main__":
    main()

"""`rubik train`, `eval`, `predict`, `cam` and `plot`: flags -> rubik.api -> printed lines."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

# Command-line flags that map one-to-one onto TrainConfig fields (flag dest == field name).
CONFIG_FLAGS = ("model", "data", "recipe", "epochs", "batch_size", "lr", "optimizer", "resolution", "weight_decay",
                "num_workers", "seed", "pretrained", "init", "freeze_epochs", "qat", "strict", "amp", "compile",
                "sync_bn", "accum_steps", "checkpoint_every", "keep_last", "randaugment", "device", "val_split",
                "ema_decay", "deterministic", "label_smoothing", "data_path")


def _options(args: argparse.Namespace) -> dict:
    options = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k, None) is not None}
    if args.no_channels_last:
        options["channels_last"] = False
    return options


def cmd_train(args: argparse.Namespace) -> None:
    from ..api import train, train_config

    options = _options(args)
    if args.print_config and not args.resume:
        import yaml

        c = train_config(config=args.config, set=args.set or [], **options)
        print(yaml.safe_dump(c.to_dict(), sort_keys=False), end="")
        return
    run = train(out=args.out, resume=args.resume, config=args.config, set=args.set or [], **options)
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(run.summary, indent=2))


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model on an image folder or the embedded digits",
                       description="Train a model. Options not listed here can be set with --set KEY=VALUE or "
                                   "a YAML file (--config); `--print-config` shows every option and its value.")
    p.add_argument("--model", help="a named model (rubik models) or a JSON model spec (default tinynet_e)")
    p.add_argument("--data", help="an ImageFolder tree (ROOT/train/CLASS/*.jpg + ROOT/val/..., or ROOT/CLASS/*.jpg) "
                                  "or 'digits' (the default: scikit-learn's handwritten digits, no download)")
    p.add_argument("--recipe", help="hyper-parameter preset: small (default), paper (TinyNet ImageNet), ghostnet")
    p.add_argument("--config", help="a YAML file of options, applied over the recipe")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any option, e.g. --set ema_decay=0.999")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATA)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="per process")
    p.add_argument("--lr", type=float, help="learning rate per lr_base_batch images (see --print-config)")
    p.add_argument("--optimizer", choices=["adamw", "sgd", "rmsprop_tf"])
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    p.add_argument("--ema-decay", dest="ema_decay", type=float, help="0 turns EMA off")
    p.add_argument("--resolution", type=int, help="input size (default: the model's own)")
    p.add_argument("--val-split", dest="val_split", type=float, help="held-out fraction when there is no val/ folder")
    p.add_argument("--randaugment", action="store_const", const=True)
    p.add_argument("--pretrained", action="store_const", const=True, help="start from the official ImageNet weights")
    p.add_argument("--init", metavar="RUN_DIR|FILE", help="start from these weights (a new head if classes differ)")
    p.add_argument("--freeze-epochs", dest="freeze_epochs", type=int, help="train only the head for N epochs")
    p.add_argument("--qat", action="store_const", const=True,
                   help="quantization-aware fine-tuning of --init weights for `rubik export --int8` (a few epochs, "
                        "low --lr)")
    p.add_argument("--strict", action="store_const", const=True, help="stop at a corrupt image instead of skipping it")
    p.add_argument("--workers", dest="num_workers", type=int, help="DataLoader worker processes")
    p.add_argument("--data-path", dest="data_path", choices=["auto", "memory", "files"],
                   help="memory: decode once into a uint8 cache and augment whole batches as tensors; files: "
                        "decode every image every epoch; auto (default): memory when the decoded set fits")
    p.add_argument("--seed", type=int)
    p.add_argument("--deterministic", action="store_const", const=True,
                   help="deterministic kernels: with --resume, bitwise the same result as an uninterrupted run")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], help="mixed precision (auto: bf16 on GPU, off on CPU)")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--no-channels-last", action="store_true", help="keep the NCHW memory layout")
    p.add_argument("--sync-bn", dest="sync_bn", action="store_const", const=True, help="SyncBatchNorm under torchrun")
    p.add_argument("--accum-steps", dest="accum_steps", type=int, help="gradient accumulation")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="also checkpoint every N steps")
    p.add_argument("--keep-last", dest="keep_last", type=int, help="checkpoints kept (default 2)")
    p.add_argument("--print-config", action="store_true", help="print the resolved options and exit")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.set_defaults(func=cmd_train)


# ---- evaluation and inference ---------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> None:
    from ..api import evaluate

    result = evaluate(args.weights, args.data, model=args.model, resolution=args.resolution,
                      batch_size=args.batch_size, workers=args.workers, strict=args.strict)
    report = result.as_dict()
    if result.confusion is not None:
        from ..train.plot import plot_confusion

        weights = Path(args.weights)
        out = Path(args.out) if args.out else (weights / "confusion.png" if weights.is_dir() else Path("confusion.png"))
        first = next(iter(result.metrics))
        plot_confusion(result.confusion, list(result.per_class), out,
                       title=f"{result.model}: top-1 {result.metrics[first]:.2f}%")
        report["confusion_png"] = str(out)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(_summary_line(result))
    width = max(len(c) for c in result.per_class)
    for name, score in result.per_class.items():
        text = "-" if math.isnan(score) else f"{score:6.2f}" + ("%" if result.per_class_label == "accuracy" else "")
        print(f"  {name:<{width}}  {'AP ' if result.per_class_label == 'AP' else ''}{text}")
    if "confusion_png" in report:
        print(f"confusion matrix: {report['confusion_png']}")


def _summary_line(result) -> str:
    m = result.metrics
    if "map" in m:
        return (f"{result.data}\n{result.images} images: mAP@[.5:.95] {m['map']:.2f}  mAP@.5 {m['map50']:.2f}  "
                "(COCO, pycocotools)")
    return f"{result.images} images: top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {result.loss:.4f}"


def cmd_predict(args: argparse.Namespace) -> None:
    from ..api import predict

    results = predict(args.weights, args.images, model=args.model, top_k=args.top_k, min_score=args.min_score,
                      out=args.out)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        if "boxes" in r:
            print(f"{r['image']}: {len(r['boxes'])} boxes with score >= {args.min_score} -> {r['out']}")
            for b in r["boxes"]:
                print(f"  {b['class']:<12} {b['score']:.2f}  {b['box']}")
        else:
            print(r["image"])
            for t in r["top"]:
                print(f"  {t['prob'] * 100:6.2f}%  {t['class']}")


def cmd_cam(args: argparse.Namespace) -> None:
    from ..api import cam

    r = cam(args.weights, args.image, model=args.model, target=args.target, out=args.out)
    print(f"class {r['class']} ({r['prob'] * 100:.1f}%): activation map saved to {r['out']}")


def cmd_plot(args: argparse.Namespace) -> None:
    from ..train.plot import plot_run

    out = plot_run(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"curves saved to {out}")


def register(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)

    p = sub.add_parser("eval", help="a trained model's metrics on held-out images: top-1/top-5, per-class accuracy "
                       "and a "
                       "confusion matrix, or a detector's COCO mAP and per-class AP")
    p.add_argument("--weights", required=True, help="a run directory (from rubik train) or a weights file")
    p.add_argument("--model", help="the architecture, for a bare weights file")
    p.add_argument("--data", help="ROOT with val/ or test/, ROOT/CLASS/*.jpg, 'digits', COCO or VOC (default: a "
                                  "run's own data)")
    p.add_argument("--resolution", type=int, help="input size (default: the one the model was trained at)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail on a corrupt image instead of skipping it")
    p.add_argument("--out", help="confusion matrix PNG (default RUN_DIR/confusion.png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of images, or a detector's boxes drawn on them")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--weights", required=True, help="a run directory or a weights file")
    p.add_argument("--model", help="the architecture, for a bare weights file")
    p.add_argument("--top-k", dest="top_k", type=int, default=5)
    p.add_argument("-o", "--out", help="detectors: where to save the image with its boxes drawn (one IMAGE; "
                                       "default IMAGE_boxes.png)")
    p.add_argument("--min-score", dest="min_score", type=float, default=0.3,
                   help="detectors: draw boxes from this score")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cam", help="save the class activation map of an image as an overlay PNG")
    p.add_argument("image")
    p.add_argument("--weights", required=True, help="a run directory or a weights file")
    p.add_argument("--model", help="the architecture, for a bare weights file")
    p.add_argument("--class", dest="target", help="class name to explain (default: the predicted one)")
    p.add_argument("--out", help="output PNG (default IMAGE_cam.png in the current folder)")
    p.set_defaults(func=cmd_cam)

    p = sub.add_parser("plot", help="draw a run's loss, accuracy and learning-rate curves as a PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output PNG (default RUN_DIR/curves.png)")
    p.set_defaults(func=cmd_plot)


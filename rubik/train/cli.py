"""`rubik train`, `eval`, `predict`, `cam` and `plot`. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import RubikError

# Command-line flags that map one-to-one onto TrainConfig fields (flag dest == field name).
CONFIG_FLAGS = ("model", "data", "recipe", "epochs", "batch_size", "lr", "optimizer", "resolution", "weight_decay",
                "num_workers", "seed", "pretrained", "init", "freeze_epochs", "qat", "strict", "amp", "compile",
                "sync_bn", "accum_steps", "checkpoint_every", "keep_last", "randaugment", "device", "val_split",
                "ema_decay", "deterministic", "label_smoothing", "data_path")


def _cli_values(args: argparse.Namespace) -> dict:
    from .recipes import parse_overrides

    values = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k, None) is not None}
    if args.no_channels_last:
        values["channels_last"] = False
    values.update(parse_overrides(args.set or []))
    return values


def _default_out(model: str | dict, data: str) -> Path:
    name = model.get("name", "model") if isinstance(model, dict) else Path(str(model)).stem
    base = Path("runs") / f"{name}-{Path(data).name or 'data'}"
    out, i = base, 2
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def _detection_run(weights: str, model: str | None) -> bool:
    """Whether `rubik eval/predict --weights W [--model M]` is about a detector: M's task, else the run's."""
    from ..tasks import task_for_weights

    return task_for_weights(weights, model).name == "detect"


def _new_config(args: argparse.Namespace, cli: dict):
    """A new run's config: the recipe, then the defaults its model's task brings for its data, the YAML file
    (--config) and the command line."""
    from ..tasks import task_for_model
    from .recipes import build_config, load_yaml

    yaml_values = load_yaml(args.config) if args.config else {}
    data = cli.get("data", yaml_values.get("data", "digits"))
    task = task_for_model(cli.get("model", yaml_values.get("model", "")))
    return build_config(data_defaults=task.data_defaults(data), yaml_values=yaml_values, cli_values=cli)


def cmd_train(args: argparse.Namespace) -> None:
    from ..tasks import make_task
    from .recipes import apply, load_yaml, validate
    from .trainer import CONFIG_FILE, read_config, save_config, train

    rank = int(os.environ.get("RANK", "0"))
    cli = _cli_values(args)
    if args.resume:
        run_dir = Path(args.resume)
        config = read_config(run_dir)
        if args.config or cli:
            config = apply(config, {**(load_yaml(args.config) if args.config else {}), **cli}, "command line")
            validate(config)
            if rank == 0:
                save_config(run_dir, config)
        summary = train(config, run_dir, make_task(config), resume=True)
    else:
        config = _new_config(args, cli)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return
        if args.out:
            run_dir = Path(args.out)
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RubikError("with several processes (torchrun), name the run directory with --out")
        else:
            run_dir = _default_out(config.model, config.data)
        if rank == 0 and (run_dir / CONFIG_FILE).exists():
            raise RubikError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                             "or choose another --out")
        summary = train(config, run_dir, make_task(config))
    if args.json and rank == 0:
        print(json.dumps(summary, indent=2))


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


def _load(weights: str, model: str | None):
    from ..classify.trained import load_classifier

    return load_classifier(weights, model)


def cmd_eval(args: argparse.Namespace) -> None:
    if _detection_run(args.weights, args.model):
        from ..detect.cli import cmd_eval as detect_eval

        return detect_eval(args)
    import torch
    from torch.utils.data import DataLoader

    from .data import DIGITS, DigitsImages, ImageFiles, Transformed, collate, eval_transform, worker_error
    from .evaluate import evaluate
    from .plot import plot_confusion

    net = _load(args.weights, args.model)
    spec = net.spec
    resolution = args.resolution or spec.resolution
    if args.data == DIGITS:
        base = DigitsImages("test", resolution)
        classes = base.classes
    else:
        root = Path(args.data)
        if not root.is_dir():
            raise RubikError(f"data folder {root} does not exist; pass ROOT (with val/ or test/) or ROOT/CLASS/*.jpg")
        from ..image_folder import folder_splits, scan_folder, split_folder

        # The images training validated on: val/ (or test/...), else the fraction the run held out.
        folder = split_folder(root, "eval")
        if folder != root:
            samples, classes = scan_folder(folder)
        else:
            splits = folder_splits(root, *net.holdout)
            samples, classes = splits.val, splits.classes
        if not samples:
            raise RubikError(f"no images found under {root}; expected ROOT/val/CLASS/IMAGE or ROOT/CLASS/IMAGE")
        base = ImageFiles(samples, classes, strict=args.strict)
    num_classes = net.classifier.out_features if hasattr(net.classifier, "out_features") else len(classes)
    if net.classes is not None and list(net.classes) != classes:
        raise RubikError(f"the data's classes {classes[:4]}... differ from the model's {net.classes[:4]}...; "
                         "evaluate on a folder with the same class folders the model was trained on")
    if len(classes) != num_classes:
        raise RubikError(f"the data has {len(classes)} classes but the model predicts {num_classes}")
    pre = spec.preprocess
    tf = eval_transform(resolution, pre.mean, pre.std, pre.crop_pct, pre.interpolation)
    loader = DataLoader(Transformed(base, tf), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate)
    try:
        result = evaluate(net, loader, num_classes, torch.device("cpu"))
    except RubikError as e:
        raise worker_error(e) from None
    out = Path(args.out) if args.out else (Path(args.weights) / "confusion.png" if Path(args.weights).is_dir()
                                           else Path("confusion.png"))
    plot_confusion(result.confusion, classes, out, title=f"{spec.name}: top-1 {result.top1:.2f}%")
    if args.json:
        print(json.dumps({"top1": result.top1, "top5": result.top5, "loss": result.loss, "images": result.count,
                          "per_class": dict(zip(classes, result.per_class, strict=True)),
                          "confusion_png": str(out)}, indent=2))
        return
    print(f"{result.count} images: top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  loss {result.loss:.4f}")
    width = max(len(c) for c in classes)
    for name, acc in zip(classes, result.per_class, strict=True):
        print(f"  {name:<{width}}  {acc:6.2f}%")
    print(f"confusion matrix: {out}")


def _images(paths: list[str], transform):
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as img:
                out.append(transform(img.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as e:
            raise RubikError(f"cannot read image {p} ({type(e).__name__}); give a JPEG/PNG file") from None
    return out


def cmd_predict(args: argparse.Namespace) -> None:
    if _detection_run(args.weights, args.model):
        from ..detect.cli import cmd_predict as detect_predict

        return detect_predict(args)
    import torch

    from .data import eval_transform

    net = _load(args.weights, args.model)
    spec = net.spec
    pre = spec.preprocess
    tf = eval_transform(spec.resolution, pre.mean, pre.std, pre.crop_pct, pre.interpolation)
    batch = torch.stack(_images(args.images, tf))
    with torch.no_grad():
        probs = net(batch).softmax(1)
    k = min(args.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    names = net.classes or [str(i) for i in range(probs.shape[1])]
    results = [{"image": path, "top": [{"class": names[i], "index": int(i), "prob": float(p)}
                                       for p, i in zip(top.values[n], top.indices[n], strict=True)]}
               for n, path in enumerate(args.images)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['prob'] * 100:6.2f}%  {t['class']}")


def cmd_cam(args: argparse.Namespace) -> None:
    from .cam import class_activation_map, save_overlay
    from .data import eval_transform

    net = _load(args.weights, args.model)
    spec = net.spec
    pre = spec.preprocess
    tf = eval_transform(spec.resolution, pre.mean, pre.std, pre.crop_pct, pre.interpolation)
    (image,) = _images([args.image], tf)
    if not hasattr(net, "forward_features"):
        raise RubikError(f"cam needs a model with forward_features/forward_head (MBConv or GhostNet), not {spec.name}")
    names = net.classes
    target = None
    if args.target is not None:
        if names and args.target in names:
            target = names.index(args.target)
        elif args.target.isdigit():
            target = int(args.target)
        else:
            raise RubikError(f"unknown class {args.target!r}; classes: {', '.join((names or [])[:10])}"
                             + (" ..." if names and len(names) > 10 else ""))
    cam, cls, prob = class_activation_map(net, image, target)
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}_cam.png")
    if out.resolve() == Path(args.image).resolve():
        raise RubikError(f"--out {out} is the input image; choose another file name")
    label = names[cls] if names else str(cls)
    save_overlay(image, cam, spec.preprocess.mean, spec.preprocess.std, out, title=f"{label} ({prob * 100:.1f}%)")
    print(f"class {label} ({prob * 100:.1f}%): activation map saved to {out}")


def cmd_plot(args: argparse.Namespace) -> None:
    from .plot import plot_run

    out = plot_run(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"curves saved to {out}")


def register(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)

    p = sub.add_parser("eval", help="top-1/top-5, per-class accuracy and a confusion matrix on a labelled folder")
    p.add_argument("--weights", required=True, help="a run directory (from rubik train) or a weights file")
    p.add_argument("--model", help="the architecture, for a bare weights file")
    p.add_argument("--data", required=True, help="ROOT with val/ or test/, ROOT/CLASS/*.jpg, or 'digits'")
    p.add_argument("--resolution", type=int, help="input size (default: the one the model was trained at)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail on a corrupt image instead of skipping it")
    p.add_argument("--out", help="confusion matrix PNG (default RUN_DIR/confusion.png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of images, with class names")
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


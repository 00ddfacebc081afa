"""A trained classifier at work: evaluate it on labelled images, predict the classes of image files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import RubikError
from ..image_folder import DEFAULT_HOLDOUT
from ..train.data import Transformed, collate, eval_transform, open_eval_split, worker_error
from ..train.evaluate import evaluate
from ..train.task import Evaluation


def model_transform(net: nn.Module, resolution: int | None = None):
    """The evaluation view of the model's spec (resize, centre crop, normalise) at `resolution` (default its own)."""
    pre = net.spec.preprocess
    return eval_transform(resolution or net.spec.resolution, pre.mean, pre.std, pre.crop_pct, pre.interpolation)


def read_images(paths: list[str | Path], transform=None) -> list[Any]:
    """RGB PIL images (or `transform`ed ones) of image files; a file that is no image stops with its name."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as img:
                rgb = img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise RubikError(f"cannot read image {p} ({type(e).__name__}); give a JPEG/PNG file") from None
        out.append(transform(rgb) if transform else rgb)
    return out


def evaluate_classifier(net: nn.Module, data: str, *, resolution: int | None = None, batch_size: int = 128,
                        workers: int = 0, strict: bool = False) -> Evaluation:
    """Top-1/top-5, loss, per-class accuracy and the confusion matrix on the images training validated on:
    the digits' test split, ROOT's val/ (or test/), else the fraction the run held out."""
    resolution = resolution or net.spec.resolution
    base = open_eval_split(data, resolution, getattr(net, "holdout", DEFAULT_HOLDOUT), strict)
    classes = list(base.classes)
    num_classes = getattr(net.classifier, "out_features", len(classes))
    if getattr(net, "classes", None) is not None and list(net.classes) != classes:
        raise RubikError(f"the data's classes {classes[:4]}... differ from the model's {net.classes[:4]}...; "
                         "evaluate on a folder with the same class folders the model was trained on")
    if len(classes) != num_classes:
        raise RubikError(f"the data has {len(classes)} classes but the model predicts {num_classes}")
    loader = DataLoader(Transformed(base, model_transform(net, resolution)), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate)
    try:
        result = evaluate(net, loader, num_classes, torch.device("cpu"))
    except RubikError as e:
        raise worker_error(e) from None
    return Evaluation({"top1": result.top1, "top5": result.top5}, result.count, result.loss,
                      dict(zip(classes, result.per_class, strict=True)), "accuracy", str(data), net.spec.name,
                      result.confusion)


@torch.no_grad()
def predict_classifier(net: nn.Module, images: list[str | Path], top_k: int = 5) -> list[dict[str, Any]]:
    """[{"image": path, "top": [{"class", "index", "prob"}, ...]}] for each image file, best first."""
    batch = torch.stack(read_images(images, model_transform(net)))
    probs = net.eval()(batch).softmax(1)
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    names = getattr(net, "classes", None) or [str(i) for i in range(probs.shape[1])]
    return [{"image": str(path), "top": [{"class": names[i], "index": int(i), "prob": float(p)}
                                         for p, i in zip(top.values[n], top.indices[n], strict=True)]}
            for n, path in enumerate(images)]


def class_activation(net: nn.Module, image: str | Path, target: str | None = None,
                     out: str | Path | None = None) -> dict[str, Any]:
    """Save the class activation map of `image` for class `target` (a name or index; default the predicted one)
    as an overlay PNG (default IMAGE_cam.png); {"class", "index", "prob", "out"}."""
    from ..train.cam import class_activation_map, save_overlay

    if not hasattr(net, "forward_features"):
        raise RubikError(f"cam needs a model with forward_features/forward_head (MBConv or GhostNet), not "
                         f"{net.spec.name}")
    (x,) = read_images([image], model_transform(net))
    names = getattr(net, "classes", None)
    index = None
    if target is not None:
        if names and target in names:
            index = names.index(target)
        elif str(target).isdigit():
            index = int(target)
        else:
            raise RubikError(f"unknown class {target!r}; classes: {', '.join((names or [])[:10])}"
                             + (" ..." if names and len(names) > 10 else ""))
    cam, cls, prob = class_activation_map(net, x, index)
    out = Path(out) if out else Path(f"{Path(image).stem}_cam.png")
    if out.resolve() == Path(image).resolve():
        raise RubikError(f"--out {out} is the input image; choose another file name")
    label = names[cls] if names else str(cls)
    pre = net.spec.preprocess
    save_overlay(x, cam, pre.mean, pre.std, out, title=f"{label} ({prob * 100:.1f}%)")
    return {"class": label, "index": int(cls), "prob": float(prob), "out": str(out)}

"""A trained detector at work: load it, find the boxes of images (and draw them), score it with COCO mAP."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import RubikError
from ..run import locate_weights
from ..train.task import Evaluation


def load_detector(weights: str | Path, model=None):
    """A trained detector in eval mode from a run directory (model.json + best.safetensors), or a file + --model."""
    from ..models.weights import WeightsError, load_weights, read_state_dict
    from .model import build_detector

    path, record = locate_weights(weights)
    if record is not None:
        if record.task != "detect":
            raise RubikError(f"{weights} is a run of task {record.task!r}, not a detector; load it with that "
                             "task's loader (a classifier: rubik.classify.trained.load_classifier)")
        state = read_state_dict(path)
        net = build_detector(model or record.model, record.num_classes, classes=record.classes)
    else:
        if model is None:
            raise WeightsError(f"weights file {path} does not say which detector it is for; name one (--model NAME)")
        state = read_state_dict(path)
        net = build_detector(model, _num_classes(state, path))
    load_weights(net, state, source=f"weights file {path}")
    return net.eval()


def _num_classes(state: dict, path: Path) -> int:
    """Object classes of SSDLite weights: the first head level predicts, per location, 4 box offsets and
    (classes + background) scores for each default box, so the box regressor's channels / 4 are the boxes
    per location the spec's anchor generator made, and the classifier's channels / boxes - 1 the classes."""
    from ..models.weights import WeightsError

    def head(name: str):
        return next((v for k, v in state.items() if k.endswith((f"{name}.module_list.0.1.weight",
                                                                f"{name}.module_list.0.1.0.weight"))), None)

    logits, boxes = head("classification_head"), head("regression_head")
    if logits is None or boxes is None:
        raise WeightsError(f"weights file {path} holds no SSDLite classification head; is it a detector's?")
    return logits.shape[0] // (boxes.shape[0] // 4) - 1


def _resize_input(image, resolution: int):
    """A PIL image -> the model's 1x3xRxR float input, as the evaluation transform and the deployed runtime do."""
    import torch

    from .data import eval_transform

    return eval_transform(resolution)(image).unsqueeze(0).to(torch.float32)


def detect_image(net, image, min_score: float = 0.0):
    """[(box x1 y1 x2 y2 in the image's pixels, score, label index 1..K)] of one PIL image."""
    import torch

    res = net.spec.resolution
    with torch.no_grad():
        out = net(_resize_input(image, res))[0]
    sx, sy = image.width / res, image.height / res
    scale = torch.tensor([sx, sy, sx, sy])
    keep = out["scores"] >= min_score
    return [(b.tolist(), float(s), int(lab)) for b, s, lab in
            zip(out["boxes"][keep] * scale, out["scores"][keep], out["labels"][keep], strict=True)]


def draw_boxes(image, detections, names: list[str], out: Path) -> Path:
    """Save `image` with each (box, score, label) drawn and captioned with its class name and score."""
    from PIL import ImageDraw

    from ..files import atomic_write

    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
    width = max(1, round(min(image.size) / 160))
    for box, score, label in sorted(detections, key=lambda d: d[1]):
        color = palette[(label - 1) % len(palette)]
        draw.rectangle(box, outline=color, width=width)
        text = f"{names[label - 1] if 0 < label <= len(names) else label} {score:.2f}"
        x, y = box[0], max(0, box[1] - 11)
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
        draw.text((x, y), text, fill=(0, 0, 0))
    atomic_write(out, lambda p: canvas.save(p, format="PNG"))
    return out


def predict_detector(net, images: list[str | Path], min_score: float = 0.3,
                     out: str | Path | None = None) -> list[dict[str, Any]]:
    """[{"image", "out", "boxes": [{"class", "score", "box"}]}] of image files, each saved with its boxes drawn
    (to `out` for one image, else IMAGE_boxes.png in the working folder)."""
    from ..classify.infer import read_images

    names = net.classes or [str(i + 1) for i in range(net.num_object_classes)]
    if out and len(images) > 1:
        raise RubikError("-o names one output image: give one IMAGE, or leave -o out (IMAGE_boxes.png each)")
    results = []
    for path, image in zip(images, read_images(images), strict=True):
        drawn = Path(out) if out else Path(f"{Path(path).stem}_boxes.png")
        if drawn.resolve() == Path(path).resolve():
            raise RubikError(f"-o {drawn} is the input image; choose another file name")
        dets = detect_image(net, image, min_score)
        draw_boxes(image, dets, names, drawn)
        results.append({"image": str(path), "out": str(drawn), "boxes": [
            {"class": names[lab - 1], "score": round(s, 4), "box": [round(v, 1) for v in b]} for b, s, lab in dets]})
    return results


def evaluate_on(net, data: str, *, resolution: int | None = None, batch_size: int = 32, workers: int = 0,
                strict: bool = False) -> Evaluation:
    """COCO mAP@[.5:.95], mAP@.5 and per-class AP (pycocotools) on the data's validation images."""
    import torch
    from torch.utils.data import DataLoader

    from ..train.data import Transformed, worker_error
    from .data import collate, eval_transform, open_detection_data
    from .evaluate import evaluate_detector

    if resolution:
        from dataclasses import replace

        net.spec = replace(net.spec, resolution=resolution)
        net.transform.fixed_size = (resolution, resolution)
    data_set = open_detection_data(data, strict=strict, classes=net.classes, split="val")
    if net.classes is not None and list(net.classes) != list(data_set.classes):
        raise RubikError(f"the data's classes {data_set.classes[:4]}... differ from the model's "
                         f"{net.classes[:4]}...; evaluate on data with the classes the model was trained on")
    loader = DataLoader(Transformed(data_set.val, eval_transform(net.spec.resolution)), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate)
    try:
        result = evaluate_detector(net, loader, data_set.val.samples, data_set.classes, torch.device("cpu"))
    except RubikError as e:
        raise worker_error(e) from None
    return Evaluation(result.metrics, result.count, math.nan, dict(zip(data_set.classes, result.per_class,
                                                                         strict=True)), "AP", data_set.description,
                      net.spec.name)

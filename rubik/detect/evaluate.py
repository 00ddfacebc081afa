"""COCO mAP with pycocotools (the standard numbers, not a re-implementation), summed across processes."""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..train.distributed import Dist, gather_object
from ..train.evaluate import eval_batches


@dataclass
class DetectionResult:
    map: float  # COCO mAP@[.5:.95], percent
    map50: float  # mAP@.5, percent
    count: int  # images
    per_class: list[float] = field(default_factory=list)  # AP@[.5:.95] per class, percent (NaN: no boxes)
    loss: float = math.nan  # not computed: SSD's loss needs the training-mode forward

    @property
    def metrics(self) -> dict[str, float]:
        """DetectionTask's metrics (the first ranks checkpoints)."""
        return {"map": self.map, "map50": self.map50}


def coco_ground_truth(samples, classes: list[str]) -> dict:
    """A COCO-format dict of the ground truth (boxes in original pixels) for pycocotools."""
    images, anns = [], []
    for s in samples:
        images.append({"id": int(s.image_id), "width": int(s.width), "height": int(s.height)})
        for (x1, y1, x2, y2), label in zip(s.boxes.tolist(), s.labels.tolist(), strict=True):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": int(s.image_id), "category_id": int(label),
                         "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_map(gt: dict, detections: list[dict]) -> DetectionResult:
    """mAP@[.5:.95], mAP@.5 and per-class AP from pycocotools' COCOeval.

    `detections`: dicts with image_id, category_id, bbox [x, y, w, h] and score (COCO's results format).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n_images = len(gt["images"])
    classes = len(gt["categories"])
    if not gt["annotations"]:
        return DetectionResult(math.nan, math.nan, n_images, [math.nan] * classes)
    if not detections:
        has = {a["category_id"] for a in gt["annotations"]}
        return DetectionResult(0.0, 0.0, n_images, [0.0 if i + 1 in has else math.nan for i in range(classes)])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [IoU thresholds, recall, classes, areas, max detections]
    per_class = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0, -1]
        per_class.append(100 * float(p[p > -1].mean()) if (p > -1).any() else math.nan)
    return DetectionResult(100 * float(ev.stats[0]), 100 * float(ev.stats[1]), n_images, per_class)


def to_coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    return [{"image_id": int(image_id), "category_id": int(lab), "bbox": [float(x1), float(y1), float(x2 - x1),
                                                                          float(y2 - y1)], "score": float(s)}
            for (x1, y1, x2, y2), s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True)]


@torch.no_grad()
def predict_loader(model: nn.Module, loader, device: torch.device, *, channels_last: bool = False,
                   amp_dtype: torch.dtype | None = None) -> list[dict]:
    """COCO-format detections for every image of the loader, boxes scaled back to each original image."""
    out = []
    for images, targets, results in eval_batches(model, loader, device, channels_last=channels_last,
                                                 amp_dtype=amp_dtype):
        in_h, in_w = images.shape[-2:]
        for r, t in zip(results, targets, strict=True):
            h, w = t["size"]
            scale = torch.tensor([w / in_w, h / in_h, w / in_w, h / in_h])
            boxes = r["boxes"].float().cpu() * scale
            out += to_coco_results(t["image_id"], boxes.numpy(), r["scores"].float().cpu().numpy(),
                                   r["labels"].cpu().numpy())
    return out


def evaluate_detector(model: nn.Module, loader, samples, classes: list[str], device: torch.device, *,
                      channels_last: bool = False, amp_dtype: torch.dtype | None = None,
                      dist_info: Dist | None = None) -> DetectionResult:
    """COCO mAP of `model` on a loader over `samples` (each process predicts its shard; all compute the same mAP)."""
    mine = predict_loader(model, loader, device, channels_last=channels_last, amp_dtype=amp_dtype)
    detections = [d for part in gather_object(mine, dist_info or Dist()) for d in part]
    return coco_map(coco_ground_truth(samples, classes), detections)


def evaluate_file(detector, images) -> DetectionResult:
    """COCO mAP of an exported detector (a `deploy.runtime.Detector`) on a detection dataset, image by image:
    what the deployed file finds, decoded and filtered by the runtime, scored as `evaluate_detector` scores."""
    detections = []
    for i, s in enumerate(images.samples):
        found = detector.detect(images.load_image(i))
        if found:
            detections += to_coco_results(s.image_id, np.array([d["box"] for d in found]),
                                          np.array([d["score"] for d in found]), np.array([d["label"] for d in found]))
    return coco_map(coco_ground_truth(images.samples, images.classes), detections)

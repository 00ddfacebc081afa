"""Detection as a task of rubik's trainer (rubik/train/trainer.py): the trainer keeps the loop, optimiser,
schedule, EMA, checkpoints, exact resume and torchrun; this object supplies what differs from
classification: the data, the model, the loss of a batch and the evaluation (COCO mAP)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import RubikError
from ..train.data import Transformed
from ..train.recipes import TrainConfig
from .data import EMBEDDED, collate, eval_transform, open_detection_data, train_transform
from .evaluate import DetectionResult, evaluate_detector
from .model import build_detector, get_detector_spec

# Data-set defaults for detection (below the YAML file and the command line, as DIGITS_DEFAULTS):
# SSD has its own losses (no label smoothing); torchvision's SSDLite recipe clips nothing and has no dropout.
DETECT_DEFAULTS: dict[str, Any] = {"label_smoothing": 0.0, "drop_rate": 0.0, "crop_pct": 1.0, "crop_scale": [0.3, 1.0],
                                   "color_jitter": 0.4, "hflip": 0.5}
# The embedded digits: no flips (a flipped 2 is no digit), and the set is generated in the main process.
EMBEDDED_DEFAULTS: dict[str, Any] = {**DETECT_DEFAULTS, "hflip": 0.0, "num_workers": 0, "resolution": 160}


def data_defaults(data: str) -> dict[str, Any]:
    return EMBEDDED_DEFAULTS if data == EMBEDDED or str(data).startswith(EMBEDDED + ":") else DETECT_DEFAULTS


class DetectionTask:
    """Plugs an SSDLite detector into `rubik.train.trainer.Trainer` (its `task=` argument)."""

    metric_keys = ("map", "map50")  # metrics.csv columns val_map, val_map50 (where classifiers have top1, top5)
    metric_labels = ("mAP", "mAP@.5")

    def __init__(self, c: TrainConfig):
        if c.qat:
            raise RubikError("--qat is for classifiers; export a detector with `rubik export --int8` instead")
        if c.freeze_epochs:
            raise RubikError("--freeze-epochs is for classifier heads; detectors train whole (set it to 0)")
        self.c = c
        self.spec = get_detector_spec(c.model, c.resolution or None)

    def setup(self, trainer) -> None:
        """Set the trainer's spec, data, num_classes and net (with initial weights)."""
        c = self.c
        trainer.spec = self.spec
        trainer.data = self.data = open_detection_data(c.data, c.val_split, c.seed, c.strict)
        trainer.num_classes = len(self.data.classes)
        backbone_weights = None
        whole = None
        if c.init:
            path = Path(c.init)
            path = path / "best.safetensors" if path.is_dir() else path
            whole, backbone_weights = self._classify_init(path)
        trainer.net = net = build_detector(self.spec, trainer.num_classes, pretrained=c.pretrained,
                                           backbone_weights=backbone_weights, classes=self.data.classes,
                                           drop_connect_rate=c.drop_connect_rate)
        if whole is not None:
            from ..models.weights import load_weights

            load_weights(net, whole, source=f"detector weights file {c.init}")
        log = logging.getLogger("rubik.train")  # the trainer's logger
        if c.pretrained or c.init:
            log.info(f"initial weights: {'backbone ImageNet (official)' if c.pretrained else c.init}")
        if self.data.dropped:
            log.info(f"{self.data.dropped} boxes dropped while reading the annotations (see the data line)")

    def _classify_init(self, path: Path):
        """--init takes a detector's weights (a run or file) or a backbone classifier's (ImageNet or a rubik run)."""
        from ..models.weights import read_state_dict

        state = read_state_dict(path)
        if any(k.startswith("backbone.") for k in state):
            return state, None
        return None, path

    def datasets(self, trainer):
        c = self.c
        res = self.spec.resolution
        # SSD's augmentation, from the config's generic fields: RandomIoUCrop with crop_scale as its
        # (min_scale, max_scale), paired with RandomZoomOut; photometric distortion when color_jitter > 0.
        crop = c.crop_scale[0] < 1.0
        train_tf = train_transform(res, hflip=c.hflip, photometric=c.color_jitter > 0, zoom_out=crop, iou_crop=crop,
                                   crop_scale=tuple(c.crop_scale))
        return (Transformed(self.data.train, train_tf), Transformed(self.data.val, eval_transform(res)), collate)

    def loss(self, model, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, int, int]:
        device = images.device
        tv_targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        losses = model(images, tv_targets)
        return losses["bbox_regression"] + losses["classification"], len(targets), 0

    def evaluate(self, module, loader, device, **kw) -> DetectionResult:
        return evaluate_detector(module, loader, self.data.val.samples, self.data.classes, device, **kw)

    def run_meta(self) -> dict[str, Any]:
        return {"task": "detect", "model": self.spec.to_dict()}


def resolved_spec(c: TrainConfig):
    spec = get_detector_spec(c.model)
    return replace(spec, resolution=c.resolution or spec.resolution)

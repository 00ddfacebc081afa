"""Detection as a task of rubik's trainer (rubik/train/task.py): an SSDLite detector trained on COCO, VOC or
the embedded digits set with SSD's losses, ranked by COCO mAP."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RubikError
from ..run import RunRecord, locate_weights
from ..train.data import Transformed
from ..train.recipes import TrainConfig
from ..train.task import Loaders, Task, file_loaders
from .data import collate, eval_transform, open_detection_data, train_transform
from .evaluate import DetectionResult, evaluate_detector
from .model import build_detector, get_detector_spec, is_detector

COCO_CLASSES = 80  # object classes of a detector made without a class count, as COCO's


class DetectionTask(Task):
    """SSDLite on a rubik backbone: SSD's box regression and classification losses; mAP ranks checkpoints."""

    name = "detect"
    metric_keys = ("map", "map50")  # metrics.csv columns val_map, val_map50 (where classifiers have top1, top5)
    metric_labels = ("mAP", "mAP@.5")

    def __init__(self, c: TrainConfig):
        if c.qat:
            raise RubikError("--qat is for classifiers; export a detector with `rubik export --int8` instead")
        if c.freeze_epochs:
            raise RubikError("--freeze-epochs is for classifier heads; detectors train whole (set it to 0)")
        super().__init__(c)
        self.spec = get_detector_spec(c.model, c.resolution or None)

    @classmethod
    def claims(cls, model: Any) -> bool:
        return is_detector(model)

    @classmethod
    def build_from_record(cls, record: RunRecord) -> nn.Module:
        return build_detector(record.model, record.num_classes, classes=record.classes)

    @classmethod
    def create(cls, model: Any, num_classes: int | None = None, pretrained: bool = False,
               weights: str | None = None) -> nn.Module:
        """`pretrained`: the backbone's official ImageNet weights (extra layers and head start fresh)."""
        if weights is not None:
            return cls.load(weights, model)
        return build_detector(model, COCO_CLASSES if num_classes is None else num_classes, pretrained=pretrained)

    @classmethod
    def load(cls, weights: Any, model: Any = None) -> nn.Module:
        from .infer import load_detector

        return load_detector(weights, model)

    @classmethod
    def evaluate_model(cls, net: nn.Module, data: str, **kw: Any):
        from .infer import evaluate_on

        return evaluate_on(net, data, **kw)

    @classmethod
    def predict(cls, net: nn.Module, images: list, min_score: float = 0.3, out: Any = None,
                **_: Any) -> list[dict[str, Any]]:
        from .infer import predict_detector

        return predict_detector(net, images, min_score, out)

    @classmethod
    def model_table(cls, pattern: str | None = None) -> list[dict[str, Any]]:
        import fnmatch

        from .model import DETECTORS, detector_macs_params

        rows = []
        for name in sorted(n for n in DETECTORS if fnmatch.fnmatch(n, pattern or "*")):
            with torch.device("meta"):  # shapes only, as the classifiers' rows
                det = build_detector(name, COCO_CLASSES)
                macs, params = detector_macs_params(det)
            backbone = det.spec.backbone
            rows.append({"name": name, "task": cls.name, "family": "ssdlite", "input": det.spec.resolution,
                         "params_m": params / 1e6, "macs_m": macs / 1e6, "paper_macs_m": None, "paper_params_m": None,
                         "paper_top1": None, "timm_top1": None,
                         "backbone": backbone.get("name") if isinstance(backbone, dict) else str(backbone),
                         "pretrained": False, "hub_id": None})
        return rows

    @classmethod
    def profile(cls, net: nn.Module, resolution: int | None = None, measure_latency: bool = True, threads: int = 1,
                runs: int = 50):
        """The cost of backbone + extra layers + head (what runs in the exported graph), split into those parts;
        resizing, box decoding and NMS are not counted."""
        from ..profile import Profile, count
        from .model import _Core, detector_parts

        res = net.spec.resolution
        if resolution and resolution != res:
            raise RubikError(f"a detector is profiled at its own input size ({res} px): drop --resolution, or "
                             "profile a spec with that resolution")
        parts = detector_parts(net, measure_latency, threads, runs)
        ms = sum(p.latency_ms for p in parts.values()) if measure_latency else None
        return Profile(res, sum(p.params for p in parts.values()), sum(p.macs for p in parts.values()),
                       count(_Core(net), res)[1], ms, parts)

    @classmethod
    def exporter(cls, net: nn.Module):
        from .export import DetectorExport

        return DetectorExport(net)

    def setup(self, trainer) -> None:
        c = self.c
        trainer.spec = self.spec
        trainer.data = self.data = open_detection_data(c.data, c.val_split, c.seed, c.strict)
        trainer.num_classes = len(self.data.classes)
        backbone_weights = None
        whole = None
        if c.init:
            path, _ = locate_weights(c.init)  # a run directory: its best weights
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

    def loaders(self, trainer) -> Loaders:
        c = self.c
        res = self.spec.resolution
        # SSD's augmentation, from the config's generic fields: RandomIoUCrop with crop_scale as its
        # (min_scale, max_scale), paired with RandomZoomOut; photometric distortion when color_jitter > 0.
        crop = c.crop_scale[0] < 1.0
        train_tf = train_transform(res, hflip=c.hflip, photometric=c.color_jitter > 0, zoom_out=crop, iou_crop=crop,
                                   crop_scale=tuple(c.crop_scale))
        val_set = Transformed(self.data.val, eval_transform(res))
        return file_loaders(trainer, Transformed(self.data.train, train_tf), val_set, collate,
                            "DetectionTask reads its own data")

    def loss(self, model: nn.Module, images: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, int, None]:
        device = images.device
        tv_targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        losses = model(images, tv_targets)
        return losses["bbox_regression"] + losses["classification"], len(targets), None

    def evaluate(self, module: nn.Module, loader, device: torch.device, **kw) -> DetectionResult:
        return evaluate_detector(module, loader, self.data.val.samples, self.data.classes, device, **kw)

"""Classification as a task of rubik's trainer (rubik/train/task.py): an image-classifier spec trained on an
ImageFolder tree or the embedded digits with cross-entropy, ranked by validation top-1."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import RubikError
from ..models.registry import build, get_spec
from ..models.spec import ModelSpec
from ..models.weights import download, load_weights, read_state_dict
from ..run import RunRecord, locate_weights
from ..train import distributed
from ..train.data import (
    EpochSampler,
    Transformed,
    collate,
    eval_transform,
    open_data,
    train_transform,
    worker_error,
)
from ..train.evaluate import EvalResult, evaluate
from ..train.memory_data import choose_data_path, memory_loaders
from ..train.recipes import TrainConfig
from ..train.task import Loaders, Task, file_loaders

HEAD_PREFIXES = ("classifier.", "fc.")  # the parameters --freeze-epochs keeps training
log = logging.getLogger("rubik.train")  # the trainer's logger


class ClassificationTask(Task):
    """Cross-entropy on class labels; top-1 ranks checkpoints. --pretrained/--init, --freeze-epochs and --qat
    fine-tune, and a data set that fits in memory is decoded once (train/memory_data.py)."""

    name = "classify"
    metric_keys = ("top1", "top5")
    metric_labels = ("top-1", "top-5")
    train_accuracy = True

    def __init__(self, c: TrainConfig):
        super().__init__(c)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)

    @classmethod
    def claims(cls, model: Any) -> bool:
        if isinstance(model, ModelSpec):
            return True
        try:
            get_spec(model)
        except RubikError:
            return False
        return True

    @classmethod
    def build_from_record(cls, record: RunRecord) -> nn.Module:
        net = build(get_spec(record.model), num_classes=record.num_classes)
        net.classes = record.classes
        return net

    @classmethod
    def create(cls, model: Any, num_classes: int | None = None, pretrained: bool = False,
               weights: str | None = None) -> nn.Module:
        from ..models.weights import create_model

        return create_model(model, num_classes=1000 if num_classes is None else num_classes, pretrained=pretrained,
                            weights=weights)

    @classmethod
    def load(cls, weights: Any, model: Any = None) -> nn.Module:
        from .trained import load_classifier

        return load_classifier(weights, model)

    @classmethod
    def evaluate_model(cls, net: nn.Module, data: str, **kw: Any):
        from .infer import evaluate_classifier

        return evaluate_classifier(net, data, **kw)

    @classmethod
    def predict(cls, net: nn.Module, images: list, top_k: int = 5, **_: Any) -> list[dict[str, Any]]:
        from .infer import predict_classifier

        return predict_classifier(net, images, top_k)

    @classmethod
    def model_table(cls, pattern: str | None = None) -> list[dict[str, Any]]:
        from ..models import MODELS, list_models, published
        from ..profile import count, count_params, deployed

        rows = []
        for name in list_models(pattern):
            spec = MODELS[name]
            with torch.device("meta"):  # shapes only: counting needs no memory and no arithmetic
                model = deployed(build(spec))  # GhostNetV3 folded, as published
            pub = published(spec)
            rows.append({"name": name, "task": cls.name, "family": spec.family, "input": spec.resolution,
                         "params_m": count_params(model) / 1e6, "macs_m": count(model, spec.resolution)[0] / 1e6,
                         "paper_macs_m": pub.macs_m, "paper_params_m": pub.params_m, "paper_top1": pub.top1,
                         "timm_top1": pub.timm_top1, "pretrained": bool(pub.hub_id), "hub_id": pub.hub_id})
        return rows

    @classmethod
    def exporter(cls, net: nn.Module):
        from .export import ClassifierExport

        return ClassifierExport(net)

    # ---- setup --------------------------------------------------------------------------------

    def setup(self, trainer) -> None:
        c = self.c
        spec = get_spec(c.model)
        pre = spec.preprocess
        self.spec = replace(spec, resolution=c.resolution or spec.resolution,
                            preprocess=replace(pre, crop_pct=c.crop_pct or pre.crop_pct,
                                               interpolation=c.interpolation or pre.interpolation))
        self.data = open_data(c.data, self.spec.resolution, c.val_split, c.seed, c.strict)
        net = build(self.spec, num_classes=len(self.data.classes), drop_rate=c.drop_rate,
                    drop_connect_rate=c.drop_connect_rate)
        self._load_initial_weights(net, spec)
        trainer.spec, trainer.data, trainer.num_classes, trainer.net = self.spec, self.data, len(self.data.classes), net

    def _load_initial_weights(self, net: nn.Module, spec: ModelSpec) -> None:
        c = self.c
        if not (c.pretrained or c.init):
            return
        if c.pretrained:
            path = download(spec)
        else:
            path, _ = locate_weights(c.init)  # a run directory: its best weights
        skipped = load_weights(net, read_state_dict(path), source=f"weights file {path}")
        note = f"; classifier replaced for {len(self.data.classes)} classes" if skipped else ""
        log.info(f"initial weights from {path}{note}")

    def prepare(self, trainer, resume: bool) -> None:
        """--qat: fake-quantize the net with input ranges measured on training images (read back on resume)."""
        if not self.c.qat:
            return
        from ..train.qat import RANGES_FILE, load_ranges, prepare_qat, save_ranges

        ranges = load_ranges(trainer.run_dir) if resume else None
        if ranges is None:
            ranges = self._measure_ranges(trainer, resume)
            if trainer.d.main:
                save_ranges(trainer.run_dir, ranges)
        quantized = prepare_qat(trainer.net, ranges)
        log.info(f"quantization-aware: int8 weights per channel, uint8 inputs of {quantized} layers "
                 f"(ranges in {trainer.run_dir / RANGES_FILE}); export with `rubik export --int8`")

    def _measure_ranges(self, trainer, resume: bool) -> dict[str, list[float]]:
        from ..train.qat import measure_ranges

        c = self.c
        if not (c.init or c.pretrained or resume):
            raise RubikError("--qat fine-tunes trained weights: add --init RUN_DIR|FILE (a finished run) "
                             "or --pretrained")
        n = min(c.qat_calib_images, len(self.data.train))
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(c.seed))[:n]
        pre = self.spec.preprocess
        tf = eval_transform(self.spec.resolution, pre.mean, pre.std, pre.crop_pct, pre.interpolation)
        loader = DataLoader(Transformed(self.data.train, tf), batch_size=min(c.batch_size, 64),
                            sampler=order.tolist(), collate_fn=collate)
        fmt = torch.channels_last if c.channels_last else torch.preserve_format
        try:
            return measure_ranges(trainer.net, (x.to(trainer.device, memory_format=fmt) for x, _, _ in loader
                                                if x.numel()))
        except RubikError as e:
            raise worker_error(e) from None

    def loaders(self, trainer) -> Loaders:
        c, d = self.c, trainer.d
        pre, res = self.spec.preprocess, self.spec.resolution
        path, why = choose_data_path(c.data_path, self.data, c.data, res, pre.crop_pct, c.data_memory_gb)
        if path == "memory":  # decoded once into a uint8 cache, batches augmented as tensors
            sampler, train, val = memory_loaders(
                c, res, pre.mean, pre.std, pre.crop_pct, pre.interpolation, self.data,
                lambda n: EpochSampler(n, c.seed, d.rank, d.world_size), trainer.device, d,
                lambda: distributed.barrier(d))
            return Loaders(sampler, train, val, path, why, 0)
        train_tf = train_transform(res, pre.mean, pre.std, scale=c.crop_scale, ratio=c.crop_ratio,
                                   interpolation=pre.interpolation, hflip=c.hflip, color_jitter=c.color_jitter,
                                   randaugment=c.randaugment, ra_ops=c.randaugment_ops,
                                   ra_magnitude=c.randaugment_magnitude)
        val_tf = eval_transform(res, pre.mean, pre.std, pre.crop_pct, pre.interpolation)
        return file_loaders(trainer, Transformed(self.data.train, train_tf), Transformed(self.data.val, val_tf),
                            collate, why)

    # ---- training and evaluation --------------------------------------------------------------

    def frozen(self, name: str, epoch: int) -> bool:
        """--freeze-epochs N: only the classifier trains for the first N epochs (a new head settles first)."""
        return epoch < self.c.freeze_epochs and not name.startswith(HEAD_PREFIXES)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
        targets = targets.to(images.device, non_blocking=True)
        logits = model(images)
        correct = (logits.detach().argmax(1) == targets).sum()
        return self.criterion(logits, targets), targets.numel(), correct

    def evaluate(self, module: nn.Module, loader, device: torch.device, **kw) -> EvalResult:
        return evaluate(module, loader, len(self.data.classes), device, **kw)

"""What the trainer asks of the thing it trains: the `Task` interface.

The trainer (trainer.py) owns what every model's training shares: the loop, optimiser, schedule, EMA,
checkpoints, exact resume and torchrun. A task owns what depends on what is learnt: the model and its initial
weights, the data and its loaders, the loss of a batch, the evaluation and its metrics (the first one ranks
checkpoints), and the run's record in model.json. `rubik.classify.task.ClassificationTask` and
`rubik.detect.task.DetectionTask` implement it; `rubik.tasks` finds the one a model or a run belongs to.
The trainer never asks which task it runs: a new task is a new subclass and a row of `rubik.tasks`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..run import RunRecord
from ..sources import loader_workers, train_defaults
from .data import EpochSampler, Shard
from .recipes import TrainConfig

if TYPE_CHECKING:
    from .trainer import Trainer


class Result(Protocol):
    """An evaluation: `metrics` holds every metric key of the task, in order, in percent."""

    metrics: dict[str, float]
    loss: float  # NaN where the task computes none


@dataclass
class Evaluation:
    """A trained model scored on a data set (`rubik eval`, `Run.evaluate`): the task's metrics, in percent."""

    metrics: dict[str, float]  # the task's metric keys, in order ("top1", "top5" or "map", "map50")
    images: int
    loss: float  # NaN where the task computes none
    per_class: dict[str, float]  # class name -> the per-class score (NaN: no images or boxes of it)
    per_class_label: str  # what per_class holds: "accuracy", "AP"
    data: str  # what was scored
    model: str = ""  # the model's name
    confusion: Any = None  # a classifier's [true, predicted] counts

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the metrics, the loss where there is one, the images and the per-class scores."""
        loss = {} if math.isnan(self.loss) else {"loss": self.loss}
        per_class = "per_class" if self.per_class_label == "accuracy" else f"per_class_{self.per_class_label.lower()}"
        return {**self.metrics, **loss, "images": self.images, per_class: self.per_class, "data": self.data}


@dataclass
class Loaders:
    """How a task's data reaches the trainer."""

    train_sampler: EpochSampler  # the trainer sets its epoch and start (exact resume); per_rank sizes an epoch
    train: Any  # iterable of (images, targets, skipped paths) batches
    val: Any  # the same, for evaluation
    path: str  # "memory" or "files", for the log
    why: str  # why that path, for the log
    workers: int  # loader worker processes, for the log


def file_loaders(trainer: Trainer, train_set: Dataset, val_set: Dataset, collate_fn, why: str) -> Loaders:
    """DataLoaders over map-style datasets whose items are keyed by (index, seed): the seeded resumable sampler
    for training, every process's shard of the validation set."""
    c, d = trainer.c, trainer.d
    sampler = EpochSampler(len(train_set), c.seed, d.rank, d.world_size)
    workers = loader_workers(c.data, c.num_workers)
    common = dict(num_workers=workers, collate_fn=collate_fn, pin_memory=trainer.device.type == "cuda",
                  persistent_workers=workers > 0)
    # A private generator: the loader's worker seeds must not consume the global RNG, which resuming restores.
    train = DataLoader(train_set, batch_sampler=BatchSampler(sampler, c.batch_size, drop_last=True),
                       generator=torch.Generator().manual_seed(c.seed), **common)
    val = DataLoader(val_set, batch_size=c.batch_size * 2, sampler=Shard(len(val_set), d.rank, d.world_size),
                     **common)
    return Loaders(sampler, train, val, "files", why, workers)


class Task(ABC):
    """One kind of model rubik trains. Subclasses set the class attributes and implement the abstract methods.

    Lifecycle in the trainer: `Task(config)`; `setup(trainer)`; the trainer moves the net to its device;
    `prepare(trainer, resume)`; `loaders(trainer)`; then per batch `loss(...)`, per epoch `frozen(...)` and
    `evaluate(...)`; `run_record()` is written to model.json.
    """

    name: ClassVar[str]  # the run's task record (model.json "task"), and rubik.tasks' key
    metric_keys: ClassVar[tuple[str, ...]]  # metrics.csv columns val_KEY and ema_val_KEY; the first ranks checkpoints
    metric_labels: ClassVar[tuple[str, ...]]  # the same metrics as printed ("top-1", "mAP")
    train_accuracy: ClassVar[bool] = False  # loss() counts correct predictions: a train top-1 is printed and recorded

    def __init__(self, c: TrainConfig):
        self.c = c
        self.spec: Any = None  # set by setup(): the model's spec (to_dict() goes to model.json)
        self.data: Any = None  # set by setup(): .train, .val, .classes, .description

    # ---- what the commands ask before a task exists ----

    @classmethod
    @abstractmethod
    def claims(cls, model: Any) -> bool:
        """Whether `model` (a name, a spec object or dict, or a JSON spec file) is one of this task's models."""

    @classmethod
    def data_defaults(cls, source: str) -> dict[str, Any]:
        """Config values for training on `source` (below the recipe's YAML file and the command line)."""
        return train_defaults(source, cls.name)

    @classmethod
    @abstractmethod
    def build_from_record(cls, record: RunRecord) -> nn.Module:
        """The model a run's record (model.json) describes, with fresh weights and `.classes` set."""

    # ---- what the commands and the Python API ask of a model, trained or not ----

    @classmethod
    @abstractmethod
    def create(cls, model: Any, num_classes: int | None = None, pretrained: bool = False,
               weights: str | None = None) -> nn.Module:
        """A model of this task by name or spec (`rubik.create_model`), with official or given weights."""

    @classmethod
    @abstractmethod
    def load(cls, weights: Any, model: Any = None) -> nn.Module:
        """A trained model in eval mode from a run directory, or from a weights file and the model it is for."""

    @classmethod
    @abstractmethod
    def evaluate_model(cls, net: nn.Module, data: str, **kw: Any) -> Evaluation:
        """`net` scored on the images of `data` it was not trained on. `kw`: resolution, batch_size, workers,
        strict."""

    @classmethod
    @abstractmethod
    def predict(cls, net: nn.Module, images: list, **kw: Any) -> list[dict[str, Any]]:
        """What `net` sees in each image file (classes, boxes), as JSON-ready dicts."""

    @classmethod
    @abstractmethod
    def model_table(cls, pattern: str | None = None) -> list[dict[str, Any]]:
        """`rubik models` rows of this task's named models matching the shell-style `pattern`."""

    @classmethod
    def profile(cls, net: nn.Module, resolution: int | None = None, measure_latency: bool = True, threads: int = 1,
                runs: int = 50):
        """Parameters, MACs, peak activations and latency of `net` (`rubik.profile.Profile`)."""
        from ..profile import profile

        return profile(net, resolution, measure_latency=measure_latency, threads=threads, runs=runs)

    @classmethod
    @abstractmethod
    def exporter(cls, net: nn.Module) -> Any:
        """The task's part of the export pipeline (`rubik.deploy.pipeline.TaskExport`) for `net`."""

    # ---- what the trainer asks ----

    @abstractmethod
    def setup(self, trainer: Trainer) -> None:
        """Set the task's and the trainer's `spec`, `data`, `num_classes` and `net` (initial weights loaded)."""

    def prepare(self, trainer: Trainer, resume: bool) -> None:  # noqa: B027 (an optional hook)
        """A last change to `trainer.net` once it is on its device, before EMA and DDP wrap it."""

    @abstractmethod
    def loaders(self, trainer: Trainer) -> Loaders:
        """The training and validation batches of `trainer.data` (see `file_loaders`)."""

    def frozen(self, name: str, epoch: int) -> bool:
        """Whether parameter `name` stays fixed during `epoch` (0-based)."""
        return False

    @abstractmethod
    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, int, Any]:
        """(loss, images counted, correct predictions or None) of a training batch; images are on the device."""

    @abstractmethod
    def evaluate(self, module: nn.Module, loader: Any, device: torch.device, **kw: Any) -> Result:
        """Metrics of `module` on the validation loader, the same on every process. `kw`: channels_last,
        amp_dtype, dist_info."""

    def run_record(self) -> RunRecord:
        """The run's model.json: what eval, export and `build_from_record` read back. `holdout` is how a folder
        without val/ was split (eval and export score those images)."""
        return RunRecord(self.name, self.spec.to_dict(), len(self.data.classes), list(self.data.classes),
                         (self.c.val_split, self.c.seed))

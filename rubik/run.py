"""The training run directory: what `rubik train` writes and eval, predict, export, bench and search read.

    model.json        the task record: task, model spec, class count and names, the held-out split
    best.safetensors  the best weights so far (the ones to deploy)
    best.json         which those are: the primary metric and its value, every metric, loss, weights, epoch, step
    metrics.csv       a row per finished epoch
    config.yaml       every hyper-parameter (resume reads it)

beside the checkpoints and logs that only training reads. This module is the format alone: it imports no
task; building a model from a record is the task's job. Runs written by older versions load unchanged.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RubikError
from .files import atomic_write_text
from .image_folder import DEFAULT_HOLDOUT

RUN_MODEL_FILE = "model.json"
RUN_WEIGHTS_FILE = "best.safetensors"
RUN_METRICS_FILE = "metrics.csv"
BEST_INFO_FILE = "best.json"
CONFIG_FILE = "config.yaml"

DEFAULT_TASK = "classify"  # model.json files without a "task" key: the classifier runs written before it
# Spec fields a task added later, with the value that runs written before them were built and trained with.
SPEC_MIGRATIONS: dict[str, dict[str, Any]] = {
    "detect": {"tap16": "stage",  # before the expansion tap
               "backbone_norm": "model"},  # before the field: the backbone's own BatchNorm eps
}
# Each task's two metrics, which best.json files written before its "metric" key held as "top1" and "top5".
OLD_BEST_KEYS = {"classify": ("top1", "top5"), "detect": ("map", "map50")}


@dataclass(frozen=True)
class RunRecord:
    """model.json: which task a run trained, its model spec, its classes and how it split a folder."""

    task: str
    model: dict[str, Any]
    num_classes: int
    classes: list[str] | None = None
    holdout: tuple[float, int] = DEFAULT_HOLDOUT  # (fraction, seed) that split a training folder without val/

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "num_classes": self.num_classes, "classes": self.classes,
                "holdout": list(self.holdout), "task": self.task}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = RUN_MODEL_FILE) -> RunRecord:
        """A record from model.json's contents, with old runs' missing fields as those runs were trained."""
        if not isinstance(data, dict) or "model" not in data or "num_classes" not in data:
            raise RubikError(f"{source} lacks the 'model' or 'num_classes' field; it is not a run's model.json")
        task, model = data.get("task", DEFAULT_TASK), data["model"]
        if isinstance(model, dict):
            model = {**model, **{k: v for k, v in SPEC_MIGRATIONS.get(task, {}).items() if k not in model}}
        holdout = data.get("holdout", DEFAULT_HOLDOUT)
        return cls(task, model, int(data["num_classes"]), data.get("classes"), (float(holdout[0]), int(holdout[1])))


class RunDir:
    """A training run directory: its record, best weights, best.json and metrics, read and written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def is_run(self) -> bool:
        return (self.path / RUN_MODEL_FILE).is_file()

    def check(self) -> RunDir:
        """This run directory, or a one-line error saying what to pass instead."""
        if not self.is_run():
            raise RubikError(f"{self.path} is not a training run directory (no {RUN_MODEL_FILE}); pass the run "
                             "directory that `rubik train --out` wrote, or a weights file with --model NAME")
        return self

    @property
    def record(self) -> RunRecord:
        path = self.check().path / RUN_MODEL_FILE
        return RunRecord.from_dict(_read_json(path), str(path))

    @property
    def weights_path(self) -> Path:
        return self.path / RUN_WEIGHTS_FILE

    def metrics(self) -> list[dict[str, float]]:
        """metrics.csv's rows, one per finished epoch (empty cells as NaN); [] before the first epoch ends."""
        path = self.path / RUN_METRICS_FILE
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return [{k: float(v) if v not in (None, "") else math.nan for k, v in row.items()}
                    for row in csv.DictReader(f)]

    def epochs_done(self) -> int:
        """Epochs the run has finished: `best.safetensors` exists from the first epoch on, so it does not
        tell a finished run from a stopped one."""
        return len(self.metrics())

    def best(self) -> dict[str, Any] | None:
        """best.json as {"metric", "value", every metric, "loss", "weights", "epoch", "step"}; None before
        the first evaluation. Old files (no "metric") are read as the task wrote them: top1/top5 held mAP."""
        path = self.path / BEST_INFO_FILE
        if not path.is_file():
            return None
        data = _read_json(path)
        return data if "metric" in data else migrate_best(data, OLD_BEST_KEYS.get(self.record.task, ("top1", "top5")))

    def write_record(self, record: RunRecord) -> None:
        _write_json(self.path / RUN_MODEL_FILE, record.to_dict())

    def write_best(self, best: dict[str, Any]) -> None:
        """Write best.json; `best` names its primary metric ("metric") and holds it ("value")."""
        if "metric" not in best or "value" not in best:
            raise ValueError(f"best.json needs 'metric' and 'value', got keys {sorted(best)}")
        _write_json(self.path / BEST_INFO_FILE, best)


def migrate_best(best: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A best record (best.json, or a checkpoint's) as now written. Those written before it named its metric
    held the task's first metric (`keys[0]`) under "top1" and its second under "top5" (mAP for detectors)."""
    if "metric" in best:
        return best
    rest = dict(best)
    values = {key: rest.pop(old) for key, old in zip(keys, ("top1", "top5"), strict=False) if old in rest}
    return {"metric": keys[0], "value": values.get(keys[0]), **values, **rest}


def locate_weights(weights: str | Path) -> tuple[Path, RunRecord | None]:
    """A run directory -> (its best.safetensors, its record); a weights file -> (the file, None)."""
    path = Path(weights)
    if not path.is_dir():
        return path, None
    run = RunDir(path)
    return run.weights_path, run.record


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RubikError(f"{path} is not valid JSON ({e}); it was damaged: train the run again") from None


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))

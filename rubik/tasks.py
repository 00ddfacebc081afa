"""The tasks rubik trains, in one table: what a model, a run or a name is, resolved once by the commands.

Each task implements `rubik.train.task.Task`; this table is the only place that names them. Imports are lazy,
so looking up a classifier never imports the detector's code (torchvision's SSD) and the reverse.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RubikError
from .run import DEFAULT_TASK, RunDir

if TYPE_CHECKING:
    from .train.task import Task

# name -> "module:class"
TASKS: dict[str, str] = {
    "classify": "rubik.classify.task:ClassificationTask",
    "detect": "rubik.detect.task:DetectionTask",
}


def task_named(name: str) -> type[Task]:
    """The Task class called `name` ("classify", "detect")."""
    if name not in TASKS:
        raise RubikError(f"unknown task {name!r}; rubik trains {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def task_for_model(model: Any) -> type[Task]:
    """The Task class of a model: a name, a spec object or dict, a JSON spec file, or a run directory. A model
    no task claims is the default task's, whose own lookup then says what is wrong with it ("unknown model")."""
    if isinstance(model, (str, Path)) and RunDir(model).is_run():
        return task_for_run(model)
    for name in TASKS:
        task = task_named(name)
        if task.claims(model):
            return task
    return task_named(DEFAULT_TASK)


def task_for_run(run_dir: str | Path) -> type[Task]:
    """The Task class a run directory trained (its model.json's task; runs older than that field: classify)."""
    return task_named(RunDir(run_dir).record.task)


def task_for_weights(weights: str | Path | None, model: Any = None) -> type[Task]:
    """The Task class of `--weights W [--model M]`: M's when given, else the run's, else the default task's
    (a bare weights file without --model, which that task's loader asks to name)."""
    if model is not None:
        return task_for_model(model)
    if weights is not None and RunDir(weights).is_run():
        return task_for_run(weights)
    return task_named(DEFAULT_TASK)


def make_task(config) -> Task:
    """The task that trains `config` (a TrainConfig): its model's task, built for it."""
    return task_for_model(config.model)(config)

"""The training engine: the loop, optimiser, schedule, EMA, checkpoints, exact resume and torchrun
(trainer.py), and the `Task` interface a task plugs in with (task.py). It names no task.

Names load on first use, so importing the package costs nothing until training starts.
"""

from importlib import import_module

_EXPORTS = {"RECIPES": "recipes", "TrainConfig": "recipes", "build_config": "recipes", "Trainer": "trainer",
            "train": "trainer", "Task": "task"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

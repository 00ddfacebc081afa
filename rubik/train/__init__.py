"""Training, evaluation and fine-tuning: `rubik train`, `eval`, `predict`, `cam`, `plot`.

Data flows one way: this package imports `rubik.models`, never the reverse.
"""

from .recipes import RECIPES, TrainConfig, build_config
from .trainer import Trainer, train

__all__ = ["RECIPES", "TrainConfig", "Trainer", "build_config", "train"]

"""The training run directory contract: what `rubik train` writes and eval, export and bench read.

A run directory holds `model.json` (the spec, class count and class names) and `best.safetensors`
(the weights to deploy), beside the checkpoints and logs that only training reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..models.registry import ModelSpec, build, get_spec
from ..models.weights import WeightsError, load_weights, read_state_dict

RUN_MODEL_FILE = "model.json"  # {"model": spec, "num_classes": N, "classes": [...], "holdout": [fraction, seed]}
RUN_WEIGHTS_FILE = "best.safetensors"  # the weights to deploy
RUN_METRICS_FILE = "metrics.csv"  # a row per finished epoch


def epochs_done(run_dir: str | Path) -> int:
    """Epochs a run has finished (rows of its metrics.csv; 0 without one). `best.safetensors` exists from the
    first epoch on, so it does not tell a finished run from one that was stopped."""
    path = Path(run_dir) / RUN_METRICS_FILE
    if not path.is_file():
        return 0
    return max(0, sum(1 for line in path.read_text().splitlines() if line.strip()) - 1)


def load_trained(weights: str | Path, model: str | dict | Path | ModelSpec | None = None) -> nn.Module:
    """A trained model, in eval mode, from a run directory or from a weights file plus a model.

    For a bare weights file, `model` names the architecture and the class count is read from the
    file's classifier. The returned model carries `.classes` (names or None) and `.holdout`: the
    (fraction, seed) that split a training folder without val/ (older runs: the defaults they used).
    """
    from ..image_folder import DEFAULT_HOLDOUT

    path = Path(weights)
    classes, holdout = None, DEFAULT_HOLDOUT
    if path.is_dir():
        meta_path = path / RUN_MODEL_FILE
        if not meta_path.is_file():
            raise WeightsError(f"{path} is not a training run directory (no {RUN_MODEL_FILE}); "
                               "pass the run directory that `rubik train --out` wrote, or a weights file")
        meta = json.loads(meta_path.read_text())
        model = model or meta["model"]
        classes = meta.get("classes")
        holdout = tuple(meta.get("holdout", DEFAULT_HOLDOUT))
        path = path / RUN_WEIGHTS_FILE
    if model is None:
        raise WeightsError(f"weights file {path} does not say which architecture it is for; name one (--model NAME)")
    state = read_state_dict(path)
    head = next((v for k, v in state.items() if k.endswith(("classifier.weight", "fc.weight"))), None)
    num_classes = head.shape[0] if head is not None else 1000
    net = build(get_spec(model), num_classes=num_classes)
    load_weights(net, state, source=f"weights file {path}")
    net.classes, net.holdout = classes, holdout
    return net.eval()

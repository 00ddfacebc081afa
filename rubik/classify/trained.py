"""A trained classifier from a run directory, or from a weights file and the model it is for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import RubikError
from ..image_folder import DEFAULT_HOLDOUT
from ..models.registry import build, get_spec
from ..models.weights import WeightsError, load_weights, read_state_dict
from ..run import locate_weights


def load_classifier(weights: str | Path, model: Any = None) -> nn.Module:
    """A trained classifier, in eval mode, from a run directory or from a weights file plus a model.

    For a bare weights file, `model` names the architecture and the class count is read from the
    file's classifier. The returned model carries `.classes` (names or None) and `.holdout`: the
    (fraction, seed) that split a training folder without val/ (older runs: the defaults they used).
    """
    path, record = locate_weights(weights)
    classes, holdout = None, DEFAULT_HOLDOUT
    if record is not None:
        if record.task != "classify":
            raise RubikError(f"{weights} is a run of task {record.task!r}, not a classifier; load it with "
                             "that task's loader (a detector: rubik.detect.infer.load_detector)")
        model, classes, holdout = model or record.model, record.classes, record.holdout
    if model is None:
        raise WeightsError(f"weights file {path} does not say which architecture it is for; name one (--model NAME)")
    state = read_state_dict(path)
    head = next((v for k, v in state.items() if k.endswith(("classifier.weight", "fc.weight"))), None)
    num_classes = head.shape[0] if head is not None else 1000
    net = build(get_spec(model), num_classes=num_classes)
    load_weights(net, state, source=f"weights file {path}")
    net.classes, net.holdout = classes, holdout
    return net.eval()

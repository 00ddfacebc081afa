"""Exponential moving average of weights and BatchNorm statistics, on torch's AveragedModel."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_model(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """An AveragedModel whose update is ema = decay * ema + (1 - decay) * weights (buffers included).

    With `warmup`, the decay is min(decay, (1 + n) / (10 + n)) after n updates, as TensorFlow's EMA
    does: a short run on a small data set is not stuck averaging in its random initial weights.
    """

    def update(ema_tensors: list[torch.Tensor], tensors: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not ema_tensors[0].is_floating_point():  # num_batches_tracked: counters are copied
            torch._foreach_copy_(ema_tensors, tensors)
            return
        d = min(decay, (1 + int(n_averaged)) / (10 + int(n_averaged))) if warmup else decay
        torch._foreach_lerp_(ema_tensors, tensors, 1.0 - d)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)

"""Evaluation: loss, top-1/top-5, per-class accuracy and a confusion matrix, summed across processes; and
`eval_batches`, the evaluation loop every task's evaluation runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .distributed import Dist, all_reduce_sum


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent
    top5: float  # percent
    count: int
    confusion: torch.Tensor = field(repr=False)  # [true, predicted] counts

    @property
    def metrics(self) -> dict[str, float]:
        """ClassificationTask's metrics (the first ranks checkpoints)."""
        return {"top1": self.top1, "top5": self.top5}

    @property
    def per_class(self) -> list[float]:
        """Accuracy (percent) of each true class; NaN for a class with no images."""
        totals = self.confusion.sum(1).double()
        return (100 * self.confusion.diag().double() / totals).tolist()


@torch.no_grad()
def eval_batches(model: nn.Module, loader, device: torch.device, *, channels_last: bool = False,
                 amp_dtype: torch.dtype | None = None) -> Iterator[tuple[torch.Tensor, Any, Any]]:
    """(images on the device, targets, the model's output) of each non-empty batch, the model in eval mode."""
    model.eval()
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for images, targets, _skipped in loader:
        if images.numel() == 0:
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            out = model(images)
        yield images, targets, out


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device, *, channels_last: bool = False,
             amp_dtype: torch.dtype | None = None, dist_info: Dist | None = None) -> EvalResult:
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    top5 = torch.zeros((), dtype=torch.long, device=device)
    k = min(5, num_classes)
    for _images, targets, logits in eval_batches(model, loader, device, channels_last=channels_last,
                                                 amp_dtype=amp_dtype):
        targets = targets.to(device, non_blocking=True)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        topk = logits.topk(k, dim=1).indices
        confusion += torch.bincount(targets * num_classes + topk[:, 0], minlength=num_classes * num_classes)
        top5 += (topk == targets[:, None]).any(1).sum()
    all_reduce_sum(confusion, dist_info or Dist())
    stats = all_reduce_sum(torch.stack([loss_sum, top5.double()]), dist_info or Dist())
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    if n == 0:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0, confusion)
    return EvalResult(float(stats[0]) / n, 100 * float(confusion.diag().sum()) / n, 100 * float(stats[1]) / n, n,
                      confusion)

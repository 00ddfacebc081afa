"""Optimisers and learning-rate schedules, from torch.optim plus TensorFlow-style RMSprop."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR, StepLR

from .recipes import TrainConfig


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop as TensorFlow computes it, which the EfficientNet/TinyNet recipe was tuned for.

    Two differences from torch.optim.RMSprop matter at eps=1e-3: eps sits inside the square root
    (sqrt(v + eps), not sqrt(v) + eps), and the square average starts at one, not zero, so the first
    steps are not huge. The learning rate is applied inside the momentum buffer.
    """

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                square_avg = state["square_avg"]
                square_avg.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                avg = square_avg.add(group["eps"]).sqrt_()
                if group["momentum"] > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).addcdiv_(grad, avg, value=group["lr"])
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, avg, value=-group["lr"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases and BatchNorm scales (1-D tensors), as the reference recipes do.
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def effective_lr(c: TrainConfig, world_size: int) -> float:
    """`lr` is per `lr_base_batch` images: scale linearly to the global batch."""
    return c.lr * c.batch_size * c.accum_steps * world_size / c.lr_base_batch


def build_optimizer(model: nn.Module, c: TrainConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=c.eps, foreach=True)
    if c.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0,
                               foreach=True)
    return RMSpropTF(groups, lr=lr, alpha=c.rmsprop_alpha, eps=c.eps, momentum=c.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, c: TrainConfig, lr: float, steps_per_epoch: int) -> LRScheduler:
    """Linear warm-up from warmup_lr, then cosine to min_lr or step decay; stepped once per optimizer step."""
    total = max(1, c.epochs * steps_per_epoch)
    warmup = min(total - 1, round(c.warmup_epochs * steps_per_epoch))
    if c.scheduler == "cosine":
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=min(c.min_lr, lr))
    else:
        main = StepLR(optimizer, step_size=max(1, round(c.decay_epochs * steps_per_epoch)), gamma=c.decay_rate)
    if warmup <= 0:
        return main
    start = LinearLR(optimizer, start_factor=min(1.0, c.warmup_lr / lr), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [start, main], milestones=[warmup])

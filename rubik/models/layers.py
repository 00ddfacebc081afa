"""Small building blocks shared by the MBConv and Ghost families."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import StochasticDepth


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10 %.

    This is the rounding of the official EfficientNet, MobileNet and GhostNet code, so scaled
    widths land on the same channel counts as the published checkpoints.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool, reduce, activate, expand, gate the channels."""

    def __init__(self, channels: int, reduced: int, act: type[nn.Module] = nn.ReLU,
                 gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = act(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(s))))


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free convolution with 'same'-style symmetric padding, and its BatchNorm."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_ch)


def out_size(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a convolution padded as `conv_bn` pads it (odd sizes round up when striding)."""
    return (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


class Residual(nn.Module):
    """Marker base for blocks that keep their input alive for a skip connection.

    The profiler reads `has_skip` to account for the held input in peak activation memory.
    """

    has_skip: bool = False


def drop_connect(rate: float) -> nn.Module:
    # torchvision's StochasticDepth in "row" mode drops whole samples, as EfficientNet's drop-connect does.
    return StochasticDepth(rate, "row") if rate > 0 else nn.Identity()

"""GhostNetV2 (Tang et al., NeurIPS 2022): Ghost modules gated by DFC attention.

DFC ("decoupled fully connected") attention: on a 2x-downsampled copy of the module's input, a
1x1 convolution then a 1x5 and a 5x1 depthwise convolution give a gate whose receptive field
spans whole rows and columns; its sigmoid, upsampled (nearest), multiplies the Ghost module's
output. Every bottleneck but the first two gates its expansion module so. The stage table, the
width/depth scaling and the head are GhostNet v1's (`ghost.py`). Names follow timm's
`ghostnetv2_*`, so its checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .family import BlockPlan
from .ghost import GhostBottleneck, GhostModule, GhostNet, GhostPlan, ghost_family, ghost_plan_macs
from .layers import conv_bn, out_size

# Bottlenecks with index >= ATTENTION_FROM (counted over the whole network) gate their expansion
# Ghost module with DFC attention; the first two, at the highest resolutions, do not (as published).
ATTENTION_FROM = 2
DFC_KERNEL = 5


def dfc_branch(in_ch: int, out_ch: int) -> nn.Sequential:
    """The DFC attention branch: 1x1 conv, then 1xK and Kx1 depthwise convolutions, each with BatchNorm."""
    pad = DFC_KERNEL // 2
    return nn.Sequential(
        *conv_bn(in_ch, out_ch, 1),
        nn.Conv2d(out_ch, out_ch, (1, DFC_KERNEL), 1, (0, pad), groups=out_ch, bias=False), nn.BatchNorm2d(out_ch),
        nn.Conv2d(out_ch, out_ch, (DFC_KERNEL, 1), 1, (pad, 0), groups=out_ch, bias=False), nn.BatchNorm2d(out_ch))


def _downsample(x: torch.Tensor) -> torch.Tensor:
    kernel = (min(2, x.shape[-2]), min(2, x.shape[-1]))  # timm fails on a 1-pixel side; we keep it
    return F.avg_pool2d(x, kernel, kernel)


def _apply_gate(out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return out * F.interpolate(torch.sigmoid(gate), size=out.shape[-2:], mode="nearest")


# Shape-dependent helpers stay single nodes in torch.fx traces, so `fold_batchnorm` (fx) can fold the rest.
torch.fx.wrap("_downsample")
torch.fx.wrap("_apply_gate")


def dfc_gate(branch: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out` gated by the DFC branch run on `x` downsampled 2x (a side of 1 is not downsampled)."""
    return _apply_gate(out, branch(_downsample(x)))


def dfc_macs(size: int, in_ch: int, out_ch: int) -> int:
    """MACs of the DFC branch on a `size` x `size` input: 1x1 conv plus the two 1xK/Kx1 depthwise convs."""
    pooled = size // 2 if size > 1 else 1
    return pooled * pooled * out_ch * (in_ch + 2 * DFC_KERNEL)


class GhostModuleV2(GhostModule):
    """A Ghost module whose output is gated by DFC attention computed from its input."""

    def __init__(self, in_ch: int, out_ch: int, relu: bool = True):
        super().__init__(in_ch, out_ch, relu=relu)
        self.short_conv = dfc_branch(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dfc_gate(self.short_conv, x, super().forward(x))


class GhostBottleneckV2(GhostBottleneck):
    """GhostNet v1's bottleneck, with a DFC-gated expansion module when `attention`."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int, stride: int, se_ch: int,
                 attention: bool = True):
        super().__init__(in_ch, mid_ch, out_ch, kernel, stride, se_ch,
                         ghost1=GhostModuleV2(in_ch, mid_ch) if attention else None)


def plan_macs(plan: GhostPlan, resolution: int, num_classes: int = 1000, in_chans: int = 3) -> int:
    """MACs of a planned GhostNetV2 by arithmetic (no model built): GhostNet v1's plus the DFC branches."""
    macs = ghost_plan_macs(plan, resolution, num_classes, in_chans)
    size = out_size(resolution, 3, 2)
    for i, b in enumerate(b for group in plan.groups for b in group):
        if i >= ATTENTION_FROM:
            macs += dfc_macs(size, b.in_ch, b.mid_ch)
        size = out_size(size, b.kernel, b.stride)
    return macs


class GhostNetV2(GhostNet):
    """GhostNet with `bottleneck` blocks whose expansion is DFC-gated from index ATTENTION_FROM on."""

    bottleneck: type[nn.Module] = GhostBottleneckV2

    def make_block(self, index: int, b: BlockPlan) -> nn.Module:
        return self.bottleneck(b.in_ch, b.mid_ch, b.out_ch, b.kernel, b.stride, b.se_ch,
                               attention=index >= ATTENTION_FROM)


FAMILY = ghost_family("ghostnetv2", GhostNetV2, plan_macs)

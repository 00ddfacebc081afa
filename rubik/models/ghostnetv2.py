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

from .family import Family
from .ghost import (
    GHOSTNET_GROUPS,
    GhostBlockPlan,
    GhostModule,
    GhostNetBase,
    GhostPlan,
    GhostRules,
    ghost_plan_macs,
    plan_ghostnet,
)
from .ghost import _features as ghost_features
from .ghost import _key_filter as ghost_key_filter
from .layers import Residual, SqueezeExcite, conv_bn, out_size

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


class GhostBottleneckV2(Residual):
    """GhostNet v1's bottleneck, with a DFC-gated expansion module when `attention`."""

    has_skip = True

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int, stride: int, se_ch: int,
                 attention: bool = True):
        super().__init__()
        self.ghost1 = GhostModuleV2(in_ch, mid_ch) if attention else GhostModule(in_ch, mid_ch)
        if stride > 1:
            self.conv_dw, self.bn_dw = conv_bn(mid_ch, mid_ch, kernel, stride, groups=mid_ch)
        else:
            self.conv_dw = self.bn_dw = None
        self.se = SqueezeExcite(mid_ch, se_ch, nn.ReLU, nn.Hardsigmoid) if se_ch else None
        self.ghost2 = GhostModule(mid_ch, out_ch, relu=False)
        self.shortcut = shortcut(in_ch, out_ch, kernel, stride)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The first Ghost module's output (SSDLite taps it in the first stride-32 block)."""
        return self.ghost1(x)

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The rest of the block, from its input `x` and expansion `y`."""
        if self.conv_dw is not None:
            y = self.bn_dw(self.conv_dw(y))
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(x, self.expand(x))


def shortcut(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Module:
    """Identity, or a depthwise KxK (strided) then a 1x1 projection where the shape changes."""
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(*conv_bn(in_ch, in_ch, kernel, stride, groups=in_ch), *conv_bn(in_ch, out_ch, 1))


def plan_macs(plan: GhostPlan, resolution: int, num_classes: int = 1000, in_chans: int = 3) -> int:
    """MACs of a planned GhostNetV2 by arithmetic (no model built): GhostNet v1's plus the DFC branches."""
    macs = ghost_plan_macs(plan, resolution, num_classes, in_chans)
    size = out_size(resolution, 3, 2)
    for i, b in enumerate(b for group in plan.groups for b in group):
        if i >= ATTENTION_FROM:
            macs += dfc_macs(size, b.in_ch, b.mid_ch)
        size = out_size(size, b.kernel, b.stride)
    return macs


class GhostNetV2(GhostNetBase):
    """GhostNet's stem, groups of bottlenecks, last 1x1 ConvBnAct and head, with `bottleneck` blocks
    whose expansion is DFC-gated from index ATTENTION_FROM on."""

    bottleneck: type[nn.Module] = GhostBottleneckV2

    def make_block(self, index: int, b: GhostBlockPlan) -> nn.Module:
        return self.bottleneck(b.in_ch, b.mid_ch, b.out_ch, b.kernel, b.stride, b.se_ch,
                               attention=index >= ATTENTION_FROM)


def _build(spec, num_classes: int = 1000, **kwargs) -> GhostNetV2:
    kwargs.pop("drop_connect_rate", None)  # no stochastic depth, as GhostNet
    return GhostNetV2(spec.width, spec.depth, spec.rules, num_classes=num_classes, **kwargs)


# Same table, scaling rules, feature taps (timm's: conv_stem, then each striding group) and head as GhostNet.
FAMILY = Family(
    name="ghostnetv2", stages=GHOSTNET_GROUPS, rules=GhostRules,
    plan=lambda width, depth, rules: plan_ghostnet(width, depth, rules),
    macs=plan_macs, build=_build, features=ghost_features, classifier=("classifier",), key_filter=ghost_key_filter,
    formula="tinynet_paper.json", formula_rules=False)

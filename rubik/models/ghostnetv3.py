"""GhostNetV3 (Liu et al. 2024): GhostNetV2 trained with re-parameterisable branches, folded to deploy.

At training time every convolution of a Ghost module and every strided depthwise convolution is
the sum of three parallel Conv+BN branches, plus a 1x1 Conv+BN "scale" branch for the depthwise
ones and a BatchNorm "skip" branch for the cheap (stride-1, same-width) depthwise convolution.
All of them are linear, so `GhostNetV3.reparameterize()` folds each sum into one convolution
with a bias: the deployed network is GhostNetV2's, with the same logits and fewer parameters
and MACs. Names follow timm's `ghostnetv3_*` (unfolded and, after folding, timm's
`convert_to_deploy()`), so either state's checkpoints load as they are.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .ghost import GhostPlan, ghost_family, ghost_shortcut
from .ghost import _key_filter as ghost_key_filter
from .ghostnetv2 import GhostNetV2, dfc_branch, dfc_gate
from .ghostnetv2 import plan_macs as v2_plan_macs
from .layers import Residual, SqueezeExcite, out_size

BRANCHES = 3  # parallel Conv+BN branches per re-parameterised convolution, as published
CHEAP_KERNEL = 3  # the Ghost module's cheap depthwise convolution


class ConvBn(nn.Module):
    """Conv (no bias) then BatchNorm, no activation: one re-parameterisable branch (timm's `conv`, `bn1`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv(x))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_branches(convs: list[ConvBn], scale: ConvBn | None = None, skip: nn.BatchNorm2d | None = None) -> nn.Conv2d:
    """One biased convolution computing the sum of Conv+BN branches (eval-mode BatchNorm statistics).

    `scale` is a 1x1 branch with the same stride (zero-padded to the kernel's centre); `skip` a
    BatchNorm on the input, i.e. an identity kernel (needs in == out channels and stride 1).
    """
    template = convs[0].conv
    weight = torch.zeros_like(template.weight)
    bias = torch.zeros(template.out_channels, dtype=weight.dtype, device=weight.device)
    k = template.kernel_size[0]
    for branch in convs + ([scale] if scale is not None else []):
        s, shift = _bn_scale_shift(branch.bn1)
        w = branch.conv.weight * s.reshape(-1, 1, 1, 1)
        pad = (k - w.shape[-1]) // 2
        weight += F.pad(w, [pad, pad, pad, pad])
        bias += shift
    if skip is not None:
        s, shift = _bn_scale_shift(skip)
        channels = torch.arange(template.out_channels, device=weight.device)
        weight[channels, channels % (template.in_channels // template.groups), k // 2, k // 2] += s
        bias += shift
    conv = nn.Conv2d(template.in_channels, template.out_channels, template.kernel_size, template.stride,
                     template.padding, groups=template.groups, bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class GhostModuleV3(nn.Module):
    """A Ghost module (optionally DFC-gated) whose primary 1x1 and cheap depthwise convolutions are
    re-parameterisable sums of branches until `reparameterize()` folds them."""

    def __init__(self, in_ch: int, out_ch: int, relu: bool = True, attention: bool = False):
        super().__init__()
        self.out_ch = out_ch
        primary = -(-out_ch // 2)  # ratio 2: ceil(out / 2) primary maps, as many cheap ones
        self.primary_rpr_conv = nn.ModuleList(ConvBn(in_ch, primary, 1) for _ in range(BRANCHES))
        self.primary_activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.cheap_rpr_skip = nn.BatchNorm2d(primary)
        self.cheap_rpr_conv = nn.ModuleList(ConvBn(primary, primary, CHEAP_KERNEL, groups=primary)
                                            for _ in range(BRANCHES))
        self.cheap_rpr_scale = ConvBn(primary, primary, 1, groups=primary)
        self.cheap_activation = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.short_conv = dfc_branch(in_ch, out_ch) if attention else None
        self.primary_conv: nn.Sequential | None = None  # the folded convolutions (timm's names)
        self.cheap_operation: nn.Sequential | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.primary_conv is not None:
            x1 = self.primary_conv(x)
            x2 = self.cheap_operation(x1)
        else:
            x1 = self.primary_activation(sum(branch(x) for branch in self.primary_rpr_conv))
            x2 = self.cheap_rpr_scale(x1) + self.cheap_rpr_skip(x1)
            x2 = self.cheap_activation(x2 + sum(branch(x1) for branch in self.cheap_rpr_conv))
        out = torch.cat([x1, x2], dim=1)
        if out.shape[1] > self.out_ch:  # ceil() made one map too many; a slice keeping all would reach exports
            out = out[:, : self.out_ch]
        return dfc_gate(self.short_conv, x, out) if self.short_conv is not None else out

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.primary_conv is not None:
            return
        self.primary_conv = nn.Sequential(fold_branches(list(self.primary_rpr_conv)), self.primary_activation)
        self.cheap_operation = nn.Sequential(
            fold_branches(list(self.cheap_rpr_conv), self.cheap_rpr_scale, self.cheap_rpr_skip), self.cheap_activation)
        del self.primary_rpr_conv, self.cheap_rpr_conv, self.cheap_rpr_scale, self.cheap_rpr_skip
        del self.primary_activation, self.cheap_activation  # now inside the Sequentials


class GhostBottleneckV3(Residual):
    """GhostNetV2's bottleneck with GhostModuleV3s and, when strided, a re-parameterisable depthwise conv."""

    has_skip = True

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int, stride: int, se_ch: int,
                 attention: bool = True):
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModuleV3(in_ch, mid_ch, relu=True, attention=attention)
        if stride > 1:
            self.dw_rpr_conv = nn.ModuleList(ConvBn(mid_ch, mid_ch, kernel, stride, groups=mid_ch)
                                             for _ in range(BRANCHES))
            self.dw_rpr_scale = ConvBn(mid_ch, mid_ch, 1, stride, groups=mid_ch)
        self.conv_dw: nn.Conv2d | None = None  # the folded strided depthwise conv (timm's name)
        self.se = SqueezeExcite(mid_ch, se_ch, nn.ReLU, nn.Hardsigmoid) if se_ch else None
        self.ghost2 = GhostModuleV3(mid_ch, out_ch, relu=False)
        self.shortcut = ghost_shortcut(in_ch, out_ch, kernel, stride)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The first Ghost module's output (SSDLite taps it in the first stride-32 block)."""
        return self.ghost1(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(x, self.expand(x))

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The rest of the block, from its input `x` and expansion `y`."""
        if self.conv_dw is not None:
            y = self.conv_dw(y)
        elif self.stride > 1:
            y = self.dw_rpr_scale(y) + sum(branch(y) for branch in self.dw_rpr_conv)
        if self.se is not None:
            y = self.se(y)
        return self.ghost2(y) + self.shortcut(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.ghost1.reparameterize()
        self.ghost2.reparameterize()
        if self.stride > 1 and self.conv_dw is None:
            self.conv_dw = fold_branches(list(self.dw_rpr_conv), self.dw_rpr_scale)
            del self.dw_rpr_conv, self.dw_rpr_scale


class GhostNetV3(GhostNetV2):
    """GhostNetV3: train as built, then `reparameterize()` (or `rubik export`) for deployment."""

    bottleneck = GhostBottleneckV3

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        """Fold every re-parameterisable branch in place (uses BatchNorm running statistics); returns self.

        The logits in eval mode stay the same (to float rounding); training afterwards trains the
        folded, GhostNetV2-shaped network.
        """
        for m in self.modules():
            if isinstance(m, GhostBottleneckV3):
                m.reparameterize()
        self.reparameterized = True
        return self

    @property
    def is_reparameterized(self) -> bool:
        return getattr(self, "reparameterized", False)


def plan_macs(plan: GhostPlan, resolution: int, num_classes: int = 1000, in_chans: int = 3,
              folded: bool = True) -> int:
    """MACs of a planned GhostNetV3 by arithmetic: folded (deployed), GhostNetV2's; unfolded, plus every
    extra branch. `rubik.profile.count` counts a GhostNetV3 folded, as it is deployed."""
    macs = v2_plan_macs(plan, resolution, num_classes, in_chans)
    if folded:
        return macs
    extra_branches = BRANCHES - 1

    def ghost_extra(size: int, in_ch: int, out_ch: int) -> int:
        primary = -(-out_ch // 2)
        return size * size * primary * (extra_branches * (in_ch + CHEAP_KERNEL ** 2) + 1)  # + the 1x1 scale

    size = out_size(resolution, 3, 2)
    for b in (b for group in plan.groups for b in group):
        macs += ghost_extra(size, b.in_ch, b.mid_ch)
        new = out_size(size, b.kernel, b.stride)
        if b.stride > 1:
            macs += new * new * b.mid_ch * (extra_branches * b.kernel ** 2 + 1)
        macs += ghost_extra(new, b.mid_ch, b.out_ch)
        size = new
    return macs


# The official GhostNetV3 file names the branches' BatchNorm `bn.`; timm (and rubik) `bn1.`.
_OFFICIAL_BRANCH_BN = re.compile(r"(\.(?:primary|cheap|dw)_rpr_(?:conv\.\d+|scale)\.)bn\.")


def _key_filter(state: dict) -> dict:
    return ghost_key_filter({_OFFICIAL_BRANCH_BN.sub(r"\1bn1.", k): v for k, v in state.items()})


# MACs are the folded network's (what is deployed and published).
FAMILY = ghost_family("ghostnetv3", GhostNetV3, plan_macs, key_filter=_key_filter)

__all__ = ["ConvBn", "GhostModuleV3", "GhostBottleneckV3", "GhostNetV3", "fold_branches", "plan_macs"]

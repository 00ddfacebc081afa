"""GhostNet (Han et al., CVPR 2020): half the feature maps come from cheap depthwise convolutions.

Names follow timm's GhostNet (itself the official PyTorch file's), so its checkpoints load as is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .family import BlockPlan, Family, FeatureTap, build_stages
from .layers import ClassifierNet, Residual, SqueezeExcite, conv_bn, init_weights, make_divisible, out_size


@dataclass(frozen=True)
class GhostRow:
    """One Ghost bottleneck of the base table (GhostNet 1.0x, paper Table 7)."""

    kernel: int  # depthwise kernel (used only when the block strides, and in the shortcut)
    expand: int  # expansion (hidden) channels
    channels: int  # output channels
    se_ratio: float  # squeeze-excite width as a fraction of the hidden channels (0: no SE)
    stride: int


def _group(*rows: tuple) -> tuple[GhostRow, ...]:
    return tuple(GhostRow(*row) for row in rows)


# Each group is a tuple of rows (timm's `blocks.{group}.{index}`); depth scales groups.
GHOSTNET_GROUPS = (
    _group((3, 16, 16, 0, 1)),
    _group((3, 48, 24, 0, 2)),
    _group((3, 72, 24, 0, 1)),
    _group((5, 72, 40, 0.25, 2)),
    _group((5, 120, 40, 0.25, 1)),
    _group((3, 240, 80, 0, 2)),
    _group((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    _group((5, 672, 160, 0.25, 2)),
    _group((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)


@dataclass(frozen=True)
class GhostRules:
    """GhostNet's scaling: every width rounds to a multiple of `divisor`; the head stays `head_channels`.

    Depth scales each group (Python's round of blocks x depth, at least one): see `scale_group`.
    """

    divisor: int = 4
    head_channels: int = 1280


class GhostModule(nn.Module):
    """A 1x1 conv makes ceil(out/ratio) maps; a cheap depthwise 3x3 makes the rest from them."""

    def __init__(self, in_ch: int, out_ch: int, ratio: int = 2, dw_size: int = 3, relu: bool = True):
        super().__init__()
        self.out_ch = out_ch
        primary = math.ceil(out_ch / ratio)
        cheap = primary * (ratio - 1)
        act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.primary_conv = nn.Sequential(*conv_bn(in_ch, primary, 1), act)
        self.cheap_operation = nn.Sequential(*conv_bn(primary, cheap, dw_size, groups=primary),
                                             nn.ReLU(inplace=True) if relu else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary_conv(x)
        out = torch.cat([primary, self.cheap_operation(primary)], dim=1)
        # Slice only when ceil() made a channel too many: a slice that keeps them all reaches every export.
        return out[:, : self.out_ch] if out.shape[1] > self.out_ch else out


def ghost_shortcut(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    """Empty (the identity) where the shape stays, else a depthwise KxK (strided) then a 1x1 projection."""
    if in_ch == out_ch and stride == 1:
        return nn.Sequential()
    return nn.Sequential(*conv_bn(in_ch, in_ch, kernel, stride, groups=in_ch), *conv_bn(in_ch, out_ch, 1))


class GhostBottleneck(Residual):
    """Ghost module (expand) -> [strided depthwise] -> [SE] -> Ghost module (project) + shortcut.

    `ghost1`: another expansion module (GhostNetV2's DFC-gated one) instead of a plain Ghost module.
    """

    has_skip = True  # every Ghost bottleneck adds a shortcut, an identity or a projection

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel: int, stride: int, se_ch: int,
                 ghost1: nn.Module | None = None):
        super().__init__()
        self.ghost1 = ghost1 or GhostModule(in_ch, mid_ch, relu=True)
        if stride > 1:
            self.conv_dw, self.bn_dw = conv_bn(mid_ch, mid_ch, kernel, stride, groups=mid_ch)
        else:
            self.conv_dw = self.bn_dw = None
        self.se = SqueezeExcite(mid_ch, se_ch, nn.ReLU, nn.Hardsigmoid) if se_ch else None
        self.ghost2 = GhostModule(mid_ch, out_ch, relu=False)
        self.shortcut = ghost_shortcut(in_ch, out_ch, kernel, stride)

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


class ConvBnAct(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv, self.bn1 = conv_bn(in_ch, out_ch, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(self.conv(x)))


def scale_group(group: tuple[GhostRow, ...], depth: float) -> tuple[GhostRow, ...]:
    """Depth-scale one group: repeat its last block to grow, drop its middle blocks to shrink.

    The group's first block (which may stride) and last block (which sets the output width) stay,
    so the network keeps its resolution schedule and channel plan at any depth.
    """
    n = max(1, round(len(group) * depth))
    if n >= len(group):
        return group + (replace(group[-1], stride=1),) * (n - len(group))  # repeats never stride
    if n == 1:
        return (replace(group[-1], stride=group[0].stride),)  # the survivor inherits the group's stride
    return group[: n - 1] + (group[-1],)


@dataclass(frozen=True)
class GhostPlan:
    stem: int
    groups: tuple[tuple[BlockPlan, ...], ...]
    last: int  # the 1x1 ConvBnAct before pooling
    head: int


def plan_ghostnet(width: float = 1.0, depth: float = 1.0, rules: GhostRules = GhostRules(),
                  groups: tuple = GHOSTNET_GROUPS, head_channels: int | None = None) -> GhostPlan:
    """Scale the GhostNet table: the single place where width and depth become channels and blocks."""
    if head_channels is not None:
        rules = replace(rules, head_channels=head_channels)
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth multipliers must be positive, got width={width}, depth={depth}")
    div = rules.divisor
    stem = in_ch = make_divisible(16 * width, div)
    planned = []
    for group in groups:
        blocks = []
        for row in scale_group(group, depth):
            out_ch, mid_ch = make_divisible(row.channels * width, div), make_divisible(row.expand * width, div)
            se_ch = make_divisible(mid_ch * row.se_ratio, div) if row.se_ratio else 0
            blocks.append(BlockPlan("ghost", in_ch, mid_ch, out_ch, row.kernel, row.stride, se_ch))
            in_ch = out_ch
        planned.append(tuple(blocks))
    return GhostPlan(stem, tuple(planned), make_divisible(groups[-1][-1].expand * width, div), rules.head_channels)


def ghost_plan_macs(plan: GhostPlan, resolution: int, num_classes: int = 1000, in_chans: int = 3) -> int:
    """MACs of a planned GhostNet by arithmetic: the same count as rubik.profile's hooks."""

    def ghost_module(size: int, in_ch: int, out_ch: int) -> int:
        primary = math.ceil(out_ch / 2)
        return size * size * (in_ch * primary + primary * 9)  # 1x1 conv, then the cheap depthwise 3x3

    size = out_size(resolution, 3, 2)
    macs = size * size * in_chans * 9 * plan.stem
    for b in (b for group in plan.groups for b in group):
        macs += ghost_module(size, b.in_ch, b.mid_ch)
        new = out_size(size, b.kernel, b.stride)
        if b.stride > 1:
            macs += new * new * b.mid_ch * b.kernel ** 2
        macs += 2 * b.mid_ch * b.se_ch + ghost_module(new, b.mid_ch, b.out_ch)
        if b.stride > 1 or b.in_ch != b.out_ch:
            macs += new * new * b.in_ch * (b.kernel ** 2 + b.out_ch)
        size = new
    in_ch = plan.groups[-1][-1].out_ch
    return macs + size * size * in_ch * plan.last + plan.last * plan.head + plan.head * num_classes


class GhostNet(ClassifierNet):
    """GhostNet (v1): stem, groups of bottlenecks, last 1x1 ConvBnAct and head, which v2 and v3 build on.

    A version differs only in its bottlenecks: `make_block(index, b)` builds the one at `index` (counted
    over the whole network) from its `BlockPlan`; by default a `bottleneck` of the plan's channels.
    rubik.deploy splits only v1's Ghost modules for ONNX export (`deploy.layout`): it checks the exact class.
    """

    bottleneck: type[nn.Module] = GhostBottleneck

    def __init__(self, width: float = 1.0, depth: float = 1.0, rules: GhostRules | None = None,
                 num_classes: int = 1000, drop_rate: float = 0.2, in_chans: int = 3, groups: tuple = GHOSTNET_GROUPS):
        super().__init__()
        self.plan = plan = plan_ghostnet(width, depth, rules or GhostRules(), groups)
        self.conv_stem, self.bn1 = conv_bn(in_chans, plan.stem, 3, 2)
        self.act1 = nn.ReLU(inplace=True)
        stages = build_stages(plan.groups, self.make_block)
        stages.append(nn.Sequential(ConvBnAct(plan.groups[-1][-1].out_ch, plan.last)))
        self.blocks = nn.Sequential(*stages)
        self.add_head(plan.last, num_classes, drop_rate, conv_head=plan.head)  # conv_head: no BatchNorm, as published
        init_weights(self)

    def make_block(self, index: int, b: BlockPlan) -> nn.Module:
        """The bottleneck at `index` (over the whole network), planned as `b`."""
        return self.bottleneck(b.in_ch, b.mid_ch, b.out_ch, b.kernel, b.stride, b.se_ch)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act1(self.bn1(self.conv_stem(x))))


# The official GhostNet file spells the last ConvBnAct's BatchNorm `bn.`; timm (and rubik) `bn1.`.
_OFFICIAL_BN = re.compile(r"^(blocks\.\d+\.\d+\.)bn\.")


def _key_filter(state: dict) -> dict:
    return {_OFFICIAL_BN.sub(r"\1bn1.", k): v for k, v in state.items()}


def _features(model: GhostNet) -> tuple[FeatureTap, ...]:
    # timm's GhostNet features: the stem convolution's output (before its BatchNorm), then each group
    # that strides (blocks.1, 3, 5, 7 at 1.0x), at the group's output.
    plan = model.plan
    taps, reduction = [FeatureTap("conv_stem", plan.stem, 2)], 2
    for i, group in enumerate(plan.groups):
        if group[0].stride > 1:
            reduction *= group[0].stride
            taps.append(FeatureTap(f"blocks.{i}", group[-1].out_ch, reduction))
    return tuple(taps)


def ghost_family(name: str, model: type[GhostNet], macs: Callable[..., int],
                 key_filter: Callable[[dict], dict] = _key_filter,
                 legacy_rule_keys: frozenset[str] = frozenset()) -> Family:
    """The family of a GhostNet version: GhostNet's table, rules, plan, feature taps and head; `model`'s blocks."""

    def build(spec, num_classes: int = 1000, **kwargs) -> GhostNet:
        kwargs.pop("drop_connect_rate", None)  # GhostNet has no stochastic depth
        return model(spec.width, spec.depth, spec.rules, num_classes=num_classes, **kwargs)

    return Family(
        name=name, stages=GHOSTNET_GROUPS, rules=GhostRules,
        plan=lambda width, depth, rules: plan_ghostnet(width, depth, rules),
        macs=macs, build=build, features=_features, classifier=("classifier",), key_filter=key_filter,
        formula="tinynet_paper.json", formula_rules=False, legacy_rule_keys=legacy_rule_keys)


# Before families had their own rules, GhostNet specs carried MBConv's (ignored by the builder).
FAMILY = ghost_family("ghostnet", GhostNet, ghost_plan_macs,
                      legacy_rule_keys=frozenset({"depth_rounding", "stem", "head", "stem_channels"}))

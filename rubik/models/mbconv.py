"""The MBConv family (EfficientNet, EfficientNet-Lite, TinyNet, and any (r, d, w) between them).

A base architecture is a table of stages; `MBConvNet(stages, width, depth, rules)` scales it.
Module and parameter names follow timm's EfficientNet so the official checkpoints load as they are.
EfficientNet-Lite is the same table under other rules (`LITE_RULES`): no squeeze-excite, ReLU6,
stem and head fixed, first and last stage never depth-scaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from .family import BlockPlan, Family, FeatureTap, build_stages, strided_taps
from .layers import (
    ClassifierNet,
    Residual,
    SqueezeExcite,
    conv_bn,
    drop_connect,
    init_weights,
    make_divisible,
    out_size,
)


@dataclass(frozen=True)
class MBStage:
    """One row of a stage table: `repeats` blocks sharing kernel, expansion and output channels."""

    block: Literal["ds", "ir"]  # depthwise-separable (expansion 1) or inverted residual
    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int
    se_ratio: float = 0.25


@dataclass(frozen=True)
class ScalingRules:
    """How width and depth multipliers turn into channel and block counts.

    EfficientNet scales the stem and head with width and takes the ceiling of scaled depth;
    TinyNet keeps a 32-channel stem, never shrinks the 1280-channel head, and rounds depth.
    EfficientNet-Lite (the TF reference code, timm's `_gen_efficientnet_lite`) fixes stem and head,
    keeps the first and last stage at their base repeats (`fix_first_last`), drops squeeze-excite
    and uses ReLU6 everywhere.
    """

    depth_rounding: Literal["ceil", "round"] = "ceil"
    stem: Literal["scaled", "fixed"] = "scaled"
    head: Literal["scaled", "at_least_base", "fixed"] = "scaled"
    stem_channels: int = 32
    head_channels: int = 1280
    fix_first_last: bool = False  # first and last stage keep their base repeats when depth scales
    squeeze_excite: bool = True  # the table's SE ratio (0.25) in every block; False: no SE at all
    act: Literal["silu", "relu6"] = "silu"  # the activation of stem, blocks, SE and head

    def __post_init__(self):
        for key, choices in _RULE_CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"{key} must be one of {list(choices)}, got {getattr(self, key)!r}")
        for key in ("fix_first_last", "squeeze_excite"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")


_RULE_CHOICES = {"depth_rounding": ("ceil", "round"), "stem": ("scaled", "fixed"),
                 "head": ("scaled", "at_least_base", "fixed"), "act": ("silu", "relu6")}
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu6": nn.ReLU6}


MBConvRules = ScalingRules  # the family's rules dataclass under its family's name
EFFICIENTNET_RULES = ScalingRules()
TINYNET_RULES = ScalingRules(depth_rounding="round", stem="fixed", head="at_least_base")
LITE_RULES = ScalingRules(stem="fixed", head="fixed", fix_first_last=True, squeeze_excite=False, act="relu6")
# A Lite twisted with the tiny formula: the formula file's rules (round depth, head max(1280, 1280 w)) on Lite's.
TINYNET_LITE_RULES = replace(LITE_RULES, depth_rounding="round", head="at_least_base")

# EfficientNet-B0 (Tan & Le 2019, Table 1); every MBConv model here is this table scaled.
EFFICIENTNET_B0_STAGES = (
    MBStage("ds", 1, 3, 1, 1, 16),
    MBStage("ir", 2, 3, 2, 6, 24),
    MBStage("ir", 2, 5, 2, 6, 40),
    MBStage("ir", 3, 3, 2, 6, 80),
    MBStage("ir", 3, 5, 1, 6, 112),
    MBStage("ir", 4, 5, 2, 6, 192),
    MBStage("ir", 1, 3, 1, 6, 320),
)


def scale_repeats(repeats: int, depth: float, rounding: str) -> int:
    """Blocks in a stage after depth scaling (Python's round, as the official TinyNet code uses)."""
    if rounding == "ceil":
        return max(1, math.ceil(repeats * depth))
    return max(1, round(repeats * depth))


@dataclass(frozen=True)
class NetPlan:
    stem: int
    stages: tuple[tuple[BlockPlan, ...], ...]
    head: int


def plan_network(stages: tuple[MBStage, ...], width: float, depth: float, rules: ScalingRules) -> NetPlan:
    """Scale a stage table: the single place where width and depth become channels and blocks."""
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth multipliers must be positive, got width={width}, depth={depth}")
    stem = make_divisible(rules.stem_channels * width) if rules.stem == "scaled" else rules.stem_channels
    head = {"scaled": make_divisible(rules.head_channels * width),
            "at_least_base": max(rules.head_channels, make_divisible(rules.head_channels * width)),
            "fixed": rules.head_channels}[rules.head]
    planned, in_ch = [], stem
    for index, stage in enumerate(stages):
        out_ch = make_divisible(stage.channels * width)
        fixed = rules.fix_first_last and index in (0, len(stages) - 1)
        blocks = []
        for i in range(scale_repeats(stage.repeats, 1.0 if fixed else depth, rules.depth_rounding)):
            # SE width comes from the block's input channels, as in the paper and the official code.
            se_ch = max(1, round(in_ch * stage.se_ratio)) if stage.se_ratio and rules.squeeze_excite else 0
            mid_ch = in_ch if stage.block == "ds" else in_ch * stage.expand
            blocks.append(BlockPlan(stage.block, in_ch, mid_ch, out_ch, stage.kernel, stage.stride if i == 0 else 1,
                                    se_ch))
            in_ch = out_ch
        planned.append(tuple(blocks))
    return NetPlan(stem, tuple(planned), head)


def plan_macs(plan: NetPlan, resolution: int, num_classes: int = 1000, in_chans: int = 3) -> int:
    """MACs of a planned network, by arithmetic: the same count as rubik.profile's hooks, in microseconds.

    Twisting searches thousands of (resolution, width) points; building each would take 0.1 s.
    """
    size = out_size(resolution, 3, 2)
    macs = size * size * in_chans * 9 * plan.stem
    for block in (b for stage in plan.stages for b in stage):
        mid = block.mid_ch
        if block.block == "ir":
            macs += size * size * block.in_ch * mid
        size = out_size(size, block.kernel, block.stride)
        macs += size * size * mid * block.kernel ** 2 + 2 * mid * block.se_ch + size * size * mid * block.out_ch
    last = plan.stages[-1][-1].out_ch
    return macs + size * size * last * plan.head + plan.head * num_classes


class MBBlock(Residual):
    """What both MBConv blocks share: an identity shortcut, with drop-connect, where the shape stays."""

    def init_skip(self, in_ch: int, out_ch: int, stride: int, drop_rate: float) -> None:
        """Call last in __init__ (timm registers `drop_path` after the convolutions)."""
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path = drop_connect(drop_rate) if self.has_skip else nn.Identity()

    def skip(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(y) if self.has_skip else y


class DepthwiseSeparable(MBBlock):
    """Depthwise conv -> SE -> pointwise projection; the first MBConv stage (expansion 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, se_ch: int,
                 act: type[nn.Module], drop_rate: float):
        super().__init__()
        self.conv_dw, self.bn1 = conv_bn(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.act = act(inplace=True)
        self.se = SqueezeExcite(in_ch, se_ch, act) if se_ch else nn.Identity()
        self.conv_pw, self.bn2 = conv_bn(in_ch, out_ch, 1)
        self.init_skip(in_ch, out_ch, stride, drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.act(self.bn1(self.conv_dw(x))))
        return self.skip(x, self.bn2(self.conv_pw(y)))


class InvertedResidual(MBBlock):
    """MBConv: pointwise expansion -> depthwise conv -> SE -> linear pointwise projection."""

    def __init__(self, in_ch: int, mid: int, out_ch: int, kernel: int, stride: int,
                 se_ch: int, act: type[nn.Module], drop_rate: float):
        super().__init__()
        self.conv_pw, self.bn1 = conv_bn(in_ch, mid, 1)
        self.conv_dw, self.bn2 = conv_bn(mid, mid, kernel, stride, groups=mid)
        self.act = act(inplace=True)
        self.se = SqueezeExcite(mid, se_ch, act) if se_ch else nn.Identity()
        self.conv_pwl, self.bn3 = conv_bn(mid, out_ch, 1)
        self.init_skip(in_ch, out_ch, stride, drop_rate)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """The expansion's output (SSDLite taps it in the first stride-32 block)."""
        return self.act(self.bn1(self.conv_pw(x)))

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The rest of the block, from its input `x` and expansion `y`."""
        y = self.se(self.act(self.bn2(self.conv_dw(y))))
        return self.skip(x, self.bn3(self.conv_pwl(y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(x, self.expand(x))


class MBConvNet(ClassifierNet):
    """An MBConv network: a base stage table scaled by width and depth multipliers.

    Resolution is not a property of the weights; it travels in `model.spec` so that profiling,
    training and export use the input size the model was designed for.
    """

    def __init__(self, stages: tuple[MBStage, ...] = EFFICIENTNET_B0_STAGES, width: float = 1.0,
                 depth: float = 1.0, rules: ScalingRules = EFFICIENTNET_RULES, num_classes: int = 1000,
                 drop_rate: float = 0.2, drop_connect_rate: float = 0.2, in_chans: int = 3,
                 act: type[nn.Module] | None = None):
        super().__init__()
        act = act or ACTIVATIONS[rules.act]
        self.plan = plan = plan_network(stages, width, depth, rules)
        self.conv_stem, self.bn1 = conv_bn(in_chans, plan.stem, 3, 2)
        self.act = act(inplace=True)

        total = sum(len(stage) for stage in plan.stages)

        def make_block(index: int, b: BlockPlan) -> nn.Module:
            rate = drop_connect_rate * index / total  # deeper blocks are dropped more often
            if b.block == "ds":
                return DepthwiseSeparable(b.in_ch, b.out_ch, b.kernel, b.stride, b.se_ch, act, rate)
            return InvertedResidual(b.in_ch, b.mid_ch, b.out_ch, b.kernel, b.stride, b.se_ch, act, rate)

        self.blocks = nn.Sequential(*build_stages(plan.stages, make_block))
        self.depths = [len(stage) for stage in plan.stages]

        self.conv_head, self.bn2 = conv_bn(plan.stages[-1][-1].out_ch, plan.head, 1)
        self.add_head(plan.head, num_classes, drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act(self.bn2(self.conv_head(x)))


def _build(spec, num_classes: int = 1000, **kwargs) -> MBConvNet:
    return MBConvNet(EFFICIENTNET_B0_STAGES, spec.width, spec.depth, spec.rules, num_classes, **kwargs)


def _features(model: MBConvNet) -> tuple[FeatureTap, ...]:
    # timm's EfficientNetFeatures: the end of the last stage at each stride (blocks.0, 1, 2, 4, 6 for B0).
    steps = [(f"blocks.{i}", stage[-1].out_ch, stage[0].stride) for i, stage in enumerate(model.plan.stages)]
    return strided_taps(steps, first_reduction=2)


FAMILY = Family(
    name="mbconv", stages=EFFICIENTNET_B0_STAGES, rules=ScalingRules,
    plan=lambda width, depth, rules: plan_network(EFFICIENTNET_B0_STAGES, width, depth, rules),
    macs=plan_macs, build=_build, features=_features, classifier=("classifier",),
    formula="tinynet_paper.json", formula_rules=True)

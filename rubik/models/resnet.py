"""ResNet (He et al., CVPR 2016) as a family: ResNet-18/34 (basic blocks) and -50/101 (bottlenecks).

The layout is timm's default `resnet18/34/50/101` (torchvision's "v1.5": a bottleneck strides in
its 3x3 convolution, the projection shortcut is a strided 1x1 conv + BN), with timm's key names
(conv1/bn1/layer1..4/fc), so timm's checkpoints load unchanged.

Scaling rules (`ResNetRules`): width w multiplies the stem and every stage's bottleneck width
(64, 128, 256, 512; a bottleneck block outputs 4x that), each rounded to a multiple of
`divisor` (8) with `make_divisible` (the nearest multiple, never more than 10 % below); depth d
multiplies each stage's block count, rounded with Python's round, at least one block per stage.
Which base table is scaled is `rules.base` (resnet18, resnet34, resnet50, resnet101).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import RubikError
from .family import BlockPlan, Family, FeatureTap, build_stages
from .layers import ClassifierNet, Residual, conv_bn, drop_connect, init_weights, make_divisible, out_size


@dataclass(frozen=True)
class ResStage:
    """One stage of a base table: `blocks` blocks of one kind, `channels` wide, the first striding."""

    block: Literal["basic", "bottleneck"]
    blocks: int
    channels: int  # the 3x3 convolutions' width; a bottleneck's output is EXPANSION x this
    stride: int


EXPANSION = {"basic": 1, "bottleneck": 4}


def _table(block: str, blocks: tuple[int, int, int, int]) -> tuple[ResStage, ...]:
    return tuple(ResStage(block, n, c, s) for n, c, s in zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2), strict=True))


# He et al. 2016, Table 1.
RESNET_STAGES = {
    "resnet18": _table("basic", (2, 2, 2, 2)),
    "resnet34": _table("basic", (3, 4, 6, 3)),
    "resnet50": _table("bottleneck", (3, 4, 6, 3)),
    "resnet101": _table("bottleneck", (3, 4, 23, 3)),
}


@dataclass(frozen=True)
class ResNetRules:
    base: str = "resnet50"  # the stage table scaled (a key of RESNET_STAGES)
    divisor: int = 8  # channel counts round to multiples of this
    stem_channels: int = 64

    def __post_init__(self):
        if self.base not in RESNET_STAGES:
            raise RubikError(f"ResNet base {self.base!r} is not one of {sorted(RESNET_STAGES)}")
        if not (isinstance(self.divisor, int) and self.divisor > 0):
            raise RubikError(f"ResNet divisor must be a positive integer, got {self.divisor!r}")


@dataclass(frozen=True)
class ResNetPlan:
    stem: int
    stages: tuple[tuple[BlockPlan, ...], ...]

    @property
    def num_features(self) -> int:
        return self.stages[-1][-1].out_ch


def plan_resnet(width: float = 1.0, depth: float = 1.0, rules: ResNetRules = ResNetRules()) -> ResNetPlan:
    """Scale a ResNet table: the single place where width and depth become channels and blocks."""
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth multipliers must be positive, got width={width}, depth={depth}")
    stem = in_ch = make_divisible(rules.stem_channels * width, rules.divisor)
    stages = []
    for stage in RESNET_STAGES[rules.base]:
        mid = make_divisible(stage.channels * width, rules.divisor)
        out = mid * EXPANSION[stage.block]
        blocks = []
        for i in range(max(1, round(stage.blocks * depth))):
            blocks.append(BlockPlan(stage.block, in_ch, mid, out, 3, stage.stride if i == 0 else 1))
            in_ch = out
        stages.append(tuple(blocks))
    return ResNetPlan(stem, tuple(stages))


def resnet_plan_macs(plan: ResNetPlan, resolution: int, num_classes: int = 1000, in_chans: int = 3) -> int:
    """MACs of a planned ResNet by arithmetic: the same count as rubik.profile's hooks."""
    size = out_size(resolution, 7, 2)
    macs = size * size * in_chans * 49 * plan.stem
    size = out_size(size, 3, 2)  # max-pool 3x3 / 2, padding 1 (not counted)
    for b in (b for stage in plan.stages for b in stage):
        new = out_size(size, 3, b.stride)
        if b.block == "bottleneck":
            macs += size * size * b.in_ch * b.mid_ch + new * new * (b.mid_ch * b.mid_ch * 9 + b.mid_ch * b.out_ch)
        else:
            macs += new * new * (b.in_ch * b.mid_ch * 9 + b.mid_ch * b.out_ch * 9)
        if b.stride != 1 or b.in_ch != b.out_ch:
            macs += new * new * b.in_ch * b.out_ch  # projection shortcut
        size = new
    return macs + plan.num_features * num_classes


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResBlock(Residual):
    """Conv+BN+ReLU layers (timm's `conv{i}`, `bn{i}`, `act{i}`), the last ReLU after the shortcut is added."""

    has_skip = True

    def __init__(self, b: BlockPlan, layers: list[tuple[int, int, int, int]], drop_rate: float = 0.0):
        """`layers`: (in, out, kernel, stride) of each convolution, in order."""
        super().__init__()
        self.depth = len(layers)
        for i, (in_ch, out_ch, kernel, stride) in enumerate(layers, 1):
            conv, bn = conv_bn(in_ch, out_ch, kernel, stride)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", bn)
            self.add_module(f"act{i}", nn.ReLU(inplace=True))
        self.downsample = _projection(b.in_ch, b.out_ch, b.stride)
        self.drop_path = drop_connect(drop_rate)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return getattr(self, f"bn{self.depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = x
        for i in range(1, self.depth + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
            if i < self.depth:
                y = getattr(self, f"act{i}")(y)
        return getattr(self, f"act{self.depth}")(self.drop_path(y) + shortcut)


class BasicBlock(ResBlock):
    """Two 3x3 convolutions, the first striding."""

    def __init__(self, b: BlockPlan, drop_rate: float = 0.0):
        super().__init__(b, [(b.in_ch, b.mid_ch, 3, b.stride), (b.mid_ch, b.out_ch, 3, 1)], drop_rate)


class Bottleneck(ResBlock):
    """1x1 reduce, 3x3 (striding: torchvision's v1.5), 1x1 expand."""

    def __init__(self, b: BlockPlan, drop_rate: float = 0.0):
        super().__init__(b, [(b.in_ch, b.mid_ch, 1, 1), (b.mid_ch, b.mid_ch, 3, b.stride), (b.mid_ch, b.out_ch, 1, 1)],
                         drop_rate)


class ResNet(ClassifierNet):
    pool_name = "global_pool"  # timm's names
    classifier_name = "fc"

    def __init__(self, width: float = 1.0, depth: float = 1.0, rules: ResNetRules = ResNetRules(),
                 num_classes: int = 1000, drop_rate: float = 0.0, drop_connect_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        self.plan = plan = plan_resnet(width, depth, rules)
        self.conv1, self.bn1 = conv_bn(in_chans, plan.stem, 7, 2)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        total = sum(len(s) for s in plan.stages)

        def make_block(index: int, b: BlockPlan) -> nn.Module:
            kind = Bottleneck if b.block == "bottleneck" else BasicBlock
            return kind(b, drop_connect_rate * index / total)  # deeper blocks dropped more often

        for i, stage in enumerate(build_stages(plan.stages, make_block)):
            self.add_module(f"layer{i + 1}", stage)
        self.add_head(plan.num_features, num_classes, drop_rate)
        init_weights(self)
        if not any(p.is_meta for p in self.parameters()):
            for m in self.modules():  # each residual branch starts as identity (timm's zero_init_last)
                if isinstance(m, ResBlock):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _build(spec, num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(spec.width, spec.depth, spec.rules, num_classes=num_classes, **kwargs)


def _features(model: ResNet) -> tuple[FeatureTap, ...]:
    # timm's ResNet features: the stem's activation (stride 2, before max-pooling), then each stage.
    plan = model.plan
    taps = [FeatureTap("act1", plan.stem, 2)]
    for i, stage in enumerate(plan.stages):
        taps.append(FeatureTap(f"layer{i + 1}", stage[-1].out_ch, 4 * 2 ** i))
    return tuple(taps)


FAMILY = Family(
    name="resnet", stages=RESNET_STAGES, rules=ResNetRules,
    plan=lambda width, depth, rules: plan_resnet(width, depth, rules),
    macs=resnet_plan_macs, build=_build, features=_features, classifier=("fc",),
    formula="resnet_paper.json", formula_rules=True)

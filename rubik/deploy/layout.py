"""GhostNet rewritten for ONNX Runtime's blocked (NCHWc) float layout: same function, no concatenations.

ONNX Runtime runs float convolutions on x86 in a layout blocked by 16 channels (8 on AVX2). A Ghost
module concatenates two halves of, say, 8 or 36 channels: a count that is not a multiple of the block
cannot be concatenated in that layout, so ONNX Runtime converts both halves back to plain NCHW,
concatenates, and converts forward again, and the residual Add follows it there. Even on block
boundaries the Concat is a copy of the whole feature map. On GhostNet 1.0x at 224 px the copies and
conversions take about 40 % of the float time (an ORT profile; benchmarks/ghost_split.py times the result).

`split_ghostnet` returns an equivalent model that never concatenates: every feature map is kept as
its parts (a Ghost module's primary and cheap halves), each zero-padded to a multiple of the block.
Whatever reads a split map reads each part: a depthwise convolution or a ReLU acts part by part; a
full convolution sums one convolution per input part (ONNX Runtime fuses each Add into the next
convolution's accumulation); a squeeze-excite pools each part and gates each part; a residual adds
part by part. BatchNorm is folded into every convolution; padded channels carry exact zeros (zero
weights and bias, ReLU(0) = 0, a gate multiplies them by 0), so the logits are the original model's
up to float rounding. The one cost is arithmetic on the padded channels of small parts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.ghost import GhostBottleneck, GhostModule, GhostNet


@dataclass(frozen=True)
class Part:
    """One physical tensor of a split feature map: which logical channels it holds, then zeros to `width`."""

    channels: tuple[int, ...]
    width: int


Parts = tuple[Part, ...]


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block


def _part(channels, block: int) -> Part:
    channels = tuple(channels)
    return Part(channels, _round_up(len(channels), block))


def _folded(conv: nn.Conv2d, bn: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(bn, nn.BatchNorm2d):
        conv = fuse_conv_bn_eval(conv, bn)
    w = conv.weight.detach()
    return w, conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[0])


def _conv(weight: torch.Tensor, bias: torch.Tensor | None, template: nn.Conv2d, groups: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], template.kernel_size, template.stride,
                     template.padding, template.dilation, groups, bias=bias is not None)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


class SplitConv(nn.Module):
    """A full convolution between split maps: output part j = sum over input parts i of conv[j][i](part i)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.Module | None, src: Parts, dst: Parts):
        super().__init__()
        w, b = _folded(conv, bn)
        self.convs = nn.ModuleList()
        for out in dst:
            row = nn.ModuleList()
            for i, inp in enumerate(src):
                weight = w.new_zeros(out.width, inp.width, *w.shape[2:])
                weight[: len(out.channels), : len(inp.channels)] = w[list(out.channels)][:, list(inp.channels)]
                bias = None
                if i == 0:
                    bias = b.new_zeros(out.width)
                    bias[: len(out.channels)] = b[list(out.channels)]
                row.append(_conv(weight, bias, conv))
            self.convs.append(row)

    def forward(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for row in self.convs:
            y = row[0](parts[0])
            for conv, x in zip(row[1:], parts[1:], strict=True):
                y = y + conv(x)
            outs.append(y)
        return outs


class SplitDepthwise(nn.Module):
    """A depthwise convolution on each part; `rows` picks, per part, which of the conv's filters it applies."""

    def __init__(self, conv: nn.Conv2d, bn: nn.Module | None, src: Parts, rows: list[tuple[int, ...]] | None = None):
        super().__init__()
        w, b = _folded(conv, bn)
        self.convs = nn.ModuleList()
        for part, picked in zip(src, rows or [p.channels for p in src], strict=True):
            weight = w.new_zeros(part.width, 1, *w.shape[2:])
            bias = b.new_zeros(part.width)
            weight[: len(picked)] = w[list(picked)]
            bias[: len(picked)] = b[list(picked)]
            self.convs.append(_conv(weight, bias, conv, groups=part.width))

    def forward(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, parts, strict=True)]


def _relu(parts: list[torch.Tensor], on: bool) -> list[torch.Tensor]:
    return [torch.relu(x) for x in parts] if on else parts


class SplitGhostModule(nn.Module):
    """primary = 1x1 conv of the input; cheap = depthwise of primary; the output is the parts (primary, cheap)."""

    def __init__(self, module: GhostModule, src: Parts, block: int):
        super().__init__()
        primary_n = module.primary_conv[0].out_channels
        kept = module.out_ch - primary_n  # the cheap maps the original slices off are not computed
        self.relu = isinstance(module.primary_conv[2], nn.ReLU)
        primary = _part(range(primary_n), block)
        self.primary = SplitConv(module.primary_conv[0], module.primary_conv[1], src, (primary,))
        self.cheap = SplitDepthwise(module.cheap_operation[0], module.cheap_operation[1], (primary,),
                                    [tuple(range(kept))])
        # the cheap part is as wide as the primary one: the depthwise conv maps one onto the other
        self.parts: Parts = (primary, Part(tuple(range(primary_n, primary_n + kept)), primary.width))

    def forward(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        primary = _relu(self.primary(parts), self.relu)
        return primary + _relu(self.cheap(primary), self.relu)


class SplitSqueezeExcite(nn.Module):
    def __init__(self, se: nn.Module, parts: Parts, block: int):
        super().__init__()
        reduced = (_part(range(se.conv_reduce.out_channels), block),)
        self.reduce = SplitConv(se.conv_reduce, None, parts, reduced)
        self.act = se.act1
        self.expand = SplitConv(se.conv_expand, None, reduced, parts)
        self.gate = se.gate

    def forward(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        s = self.reduce([x.mean((2, 3), keepdim=True) for x in parts])
        gates = self.expand([self.act(s[0])])
        return [x * self.gate(g) for x, g in zip(parts, gates, strict=True)]


class SplitGhostBottleneck(nn.Module):
    def __init__(self, b: GhostBottleneck, src: Parts, block: int):
        super().__init__()
        self.ghost1 = SplitGhostModule(b.ghost1, src, block)
        mid = self.ghost1.parts
        self.conv_dw = SplitDepthwise(b.conv_dw, b.bn_dw, mid) if b.conv_dw is not None else None
        self.se = SplitSqueezeExcite(b.se, mid, block) if b.se is not None else None
        self.ghost2 = SplitGhostModule(b.ghost2, mid, block)
        self.parts = self.ghost2.parts
        if len(b.shortcut):
            dw, dw_bn, pw, pw_bn = b.shortcut
            self.shortcut = nn.Sequential(SplitDepthwise(dw, dw_bn, src), SplitConv(pw, pw_bn, src, self.parts))
        elif src != self.parts:
            raise ValueError("an identity shortcut between differently split maps")
        else:
            self.shortcut = None

    def forward(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        y = self.ghost1(parts)
        if self.conv_dw is not None:
            y = self.conv_dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.ghost2(y)
        skip = parts if self.shortcut is None else self.shortcut(parts)
        return [a + b for a, b in zip(y, skip, strict=True)]


def join(parts: list[torch.Tensor], layout: Parts) -> torch.Tensor:
    """The logical map of a split one: each part's real channels, concatenated once."""
    return torch.cat([t[:, : len(p.channels)] for t, p in zip(parts, layout, strict=True)], 1)


class SplitGhostPrefix(nn.Module):
    """A GhostNet's stem and first bottlenecks, split; `split(x)` gives the parts, `forward(x)` joins them."""

    def __init__(self, conv_stem: nn.Conv2d, bn: nn.Module, bottlenecks: list[GhostBottleneck], block: int = 16):
        super().__init__()
        stem_n = conv_stem.out_channels
        first = math.ceil(stem_n / 2)  # the stem writes the split its first block's shortcut adds to
        parts: Parts = (_part(range(first), block), _part(range(first, stem_n), block))
        self.stem = SplitConv(conv_stem, bn, (Part(tuple(range(conv_stem.in_channels)), conv_stem.in_channels),),
                              parts)
        split = []
        for b in bottlenecks:
            split.append(SplitGhostBottleneck(b, parts, block))
            parts = split[-1].parts
        self.split_blocks = nn.ModuleList(split)
        self.parts = parts

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = _relu(self.stem([x]), True)
        for b in self.split_blocks:
            parts = b(parts)
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return join(self.split(x), self.parts)


class SplitGhostNet(nn.Module):
    """GhostNet that keeps each Ghost module's halves apart (see the module docstring); inference only."""

    def __init__(self, model: GhostNet, block: int = 16, blocks: int | None = None):
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.spec = getattr(model, "spec", None)
        self.classes = getattr(model, "classes", None)
        originals = [b for stage in model.blocks[:-1] for b in stage]
        blocks = len(originals) if blocks is None else blocks
        self.prefix = SplitGhostPrefix(model.conv_stem, model.bn1, originals[:blocks], block)
        self.parts = self.prefix.parts
        self.blocks = nn.Sequential(*originals[blocks:])
        last = model.blocks[-1][0]
        if blocks < len(originals):
            self.last = last
        else:  # the last 1x1 conv reads the split map directly
            self.last = SplitConv(last.conv, last.bn1, self.parts, (Part(tuple(range(last.conv.out_channels)),
                                                                         last.conv.out_channels),))
        self.head = nn.Sequential(model.pool, model.conv_head, model.act2, nn.Flatten(1), model.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.prefix.split(x)
        if isinstance(self.last, SplitConv):
            x = torch.relu(self.last(parts)[0])
        else:  # join the parts once, where the rest of the network runs unsplit
            x = self.last(self.blocks(join(parts, self.parts)))
        return self.head(x)


def split_ghostnet(model: GhostNet, block: int = 16, blocks: int | None = None) -> SplitGhostNet:
    """An eval-mode equivalent of `model` (a rubik GhostNet) whose first `blocks` bottlenecks (all by default)
    never concatenate, for float ONNX export."""
    if not isinstance(model, GhostNet):
        raise TypeError(f"split_ghostnet takes a GhostNet, got {type(model).__name__}")
    with torch.no_grad():
        return SplitGhostNet(model, block, blocks)


def int8_split_blocks(model: GhostNet) -> int:
    """How many bottlenecks to split in the float file an int8 file is quantized from.

    The int8 path keeps the early, high-resolution blocks in float (see quantize.py) and runs the rest
    in int8, where a split would cost a QLinearAdd per part instead of a copy. Splitting through the
    first block at 1/16 of the input resolution (7 of GhostNet 1.0x's 16) was fastest in two exploratory
    runs on a 2-core Xeon, and tied with 5 and 16 in benchmarks/ghost_split.py's run (which prints it).
    """
    return int8_split_count([b for stage in model.blocks[:-1] for b in stage])


def int8_split_count(bottlenecks: list[GhostBottleneck]) -> int:
    """`int8_split_blocks` for a GhostNet's bottlenecks in order (the stem strides by 2 before them)."""
    stride, count = 2, 0
    for b in bottlenecks:
        count += 1
        if stride >= 16:
            return count
        stride *= b.conv_dw.stride[0] if b.conv_dw is not None else 1
    return count

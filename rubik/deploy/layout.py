"""The Ghost layout: a GhostNet v1 rewritten for ONNX Runtime's blocked (NCHWc) float layout, no concatenations.

ONNX Runtime runs float convolutions on x86 in a layout blocked by 16 channels (8 on AVX2). A Ghost
module concatenates two halves of, say, 8 or 36 channels: a count that is not a multiple of the block
cannot be concatenated in that layout, so ONNX Runtime converts both halves back to plain NCHW,
concatenates, and converts forward again, and the residual Add follows it there. Even on block
boundaries the Concat is a copy of the whole feature map. On GhostNet 1.0x at 224 px the copies and
conversions take about 40 % of the float time (an ORT profile; benchmarks/ghost_split.py times the result).

In the Ghost layout a feature map is never concatenated: it is kept as its parts (a Ghost module's
primary and cheap halves), each zero-padded to a multiple of the block. Whatever reads a map in parts
reads each part: a depthwise convolution or a ReLU acts part by part; a full convolution sums one
convolution per input part (ONNX Runtime fuses each Add into the next convolution's accumulation); a
squeeze-excite pools each part and gates each part; a residual adds part by part. BatchNorm is folded
into every convolution; padded channels carry exact zeros (zero weights and bias, ReLU(0) = 0, a gate
multiplies them by 0), so the outputs are the original model's up to float rounding. The one cost is
arithmetic on the padded channels of small parts.

One implementation serves every task: `GhostLayoutPrefix` is a GhostNet's stem and first bottlenecks in
the layout; a classifier network wraps it with the rest of the network (`ghost_layout`), a detector with
the rest of its backbone (rubik.detect.export). Which bottlenecks go into the layout follows the file's
precision (`layout_blocks`): "fp32" all of them, "int8" those the int8 file keeps in float, N the first N,
None none. Only GhostNet v1's exact module types are rewritten: a subclass (v2's Ghost modules derive from
v1's) computes something else.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import RubikError
from ..models.ghost import ConvBnAct, GhostBottleneck, GhostModule, GhostNet


@dataclass(frozen=True)
class Part:
    """One physical tensor of a feature map in parts: which logical channels it holds, then zeros to `width`."""

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


class PartsConv(nn.Module):
    """A full convolution between maps in parts: output part j = sum over input parts i of conv[j][i](part i)."""

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


class PartsDepthwise(nn.Module):
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


class PartsGhostModule(nn.Module):
    """primary = 1x1 conv of the input; cheap = depthwise of primary; the output is the parts (primary, cheap)."""

    def __init__(self, module: GhostModule, src: Parts, block: int):
        super().__init__()
        primary_n = module.primary_conv[0].out_channels
        kept = module.out_ch - primary_n  # the cheap maps the original slices off are not computed
        self.relu = isinstance(module.primary_conv[2], nn.ReLU)
        primary = _part(range(primary_n), block)
        self.primary = PartsConv(module.primary_conv[0], module.primary_conv[1], src, (primary,))
        self.cheap = PartsDepthwise(module.cheap_operation[0], module.cheap_operation[1], (primary,),
                                    [tuple(range(kept))])
        # the cheap part is as wide as the primary one: the depthwise conv maps one onto the other
        self.parts: Parts = (primary, Part(tuple(range(primary_n, primary_n + kept)), primary.width))

    def forward(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        primary = _relu(self.primary(parts), self.relu)
        return primary + _relu(self.cheap(primary), self.relu)


class PartsSqueezeExcite(nn.Module):
    def __init__(self, se: nn.Module, parts: Parts, block: int):
        super().__init__()
        reduced = (_part(range(se.conv_reduce.out_channels), block),)
        self.reduce = PartsConv(se.conv_reduce, None, parts, reduced)
        self.act = se.act1
        self.expand = PartsConv(se.conv_expand, None, reduced, parts)
        self.gate = se.gate

    def forward(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        s = self.reduce([x.mean((2, 3), keepdim=True) for x in parts])
        gates = self.expand([self.act(s[0])])
        return [x * self.gate(g) for x, g in zip(parts, gates, strict=True)]


class PartsGhostBottleneck(nn.Module):
    def __init__(self, b: GhostBottleneck, src: Parts, block: int):
        super().__init__()
        self.ghost1 = PartsGhostModule(b.ghost1, src, block)
        mid = self.ghost1.parts
        self.conv_dw = PartsDepthwise(b.conv_dw, b.bn_dw, mid) if b.conv_dw is not None else None
        self.se = PartsSqueezeExcite(b.se, mid, block) if b.se is not None else None
        self.ghost2 = PartsGhostModule(b.ghost2, mid, block)
        self.parts = self.ghost2.parts
        if len(b.shortcut):
            dw, dw_bn, pw, pw_bn = b.shortcut
            self.shortcut = nn.Sequential(PartsDepthwise(dw, dw_bn, src), PartsConv(pw, pw_bn, src, self.parts))
        elif src != self.parts:
            raise ValueError("an identity shortcut between maps in different parts")
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
    """The logical map of one in parts: each part's real channels, concatenated once."""
    return torch.cat([t[:, : len(p.channels)] for t, p in zip(parts, layout, strict=True)], 1)


class GhostLayoutPrefix(nn.Module):
    """A GhostNet's stem and first bottlenecks in the Ghost layout; `parts_of(x)` gives the parts, `forward(x)`
    joins them."""

    def __init__(self, conv_stem: nn.Conv2d, bn: nn.Module, bottlenecks: list[GhostBottleneck], block: int = 16):
        super().__init__()
        stem_n = conv_stem.out_channels
        first = math.ceil(stem_n / 2)  # the stem writes the parts its first block's shortcut adds to
        parts: Parts = (_part(range(first), block), _part(range(first, stem_n), block))
        self.stem = PartsConv(conv_stem, bn, (Part(tuple(range(conv_stem.in_channels)), conv_stem.in_channels),),
                              parts)
        rewritten = []
        for b in bottlenecks:
            rewritten.append(PartsGhostBottleneck(b, parts, block))
            parts = rewritten[-1].parts
        self.bottlenecks = nn.ModuleList(rewritten)
        self.parts = parts

    def parts_of(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = _relu(self.stem([x]), True)
        for b in self.bottlenecks:
            parts = b(parts)
        return parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return join(self.parts_of(x), self.parts)


class GhostLayoutNet(nn.Module):
    """A GhostNet v1 network in the Ghost layout (see the module docstring); inference only."""

    def __init__(self, model: GhostNet, block: int = 16, blocks: int | None = None):
        super().__init__()
        model = copy.deepcopy(model).eval()
        self.spec = getattr(model, "spec", None)
        self.classes = getattr(model, "classes", None)
        originals = bottlenecks(model)
        blocks = len(originals) if blocks is None else blocks
        self.prefix = GhostLayoutPrefix(model.conv_stem, model.bn1, originals[:blocks], block)
        self.parts = self.prefix.parts
        self.blocks = nn.Sequential(*originals[blocks:])
        last = model.blocks[-1][0]
        if blocks < len(originals):
            self.last = last
        else:  # the last 1x1 conv reads the map in parts directly
            self.last = PartsConv(last.conv, last.bn1, self.parts, (Part(tuple(range(last.conv.out_channels)),
                                                                         last.conv.out_channels),))
        self.head = nn.Sequential(model.pool, model.conv_head, model.act2, nn.Flatten(1), model.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.prefix.parts_of(x)
        if isinstance(self.last, PartsConv):
            x = torch.relu(self.last(parts)[0])
        else:  # join the parts once, where the rest of the network runs as it is
            x = self.last(self.blocks(join(parts, self.parts)))
        return self.head(x)


def bottlenecks(model: GhostNet) -> list[nn.Module]:
    """A GhostNet's bottlenecks in order (every stage but the last, which is one 1x1 ConvBnAct)."""
    return [b for stage in model.blocks[:-1] for b in stage]


def is_v1(modules: list[nn.Module]) -> bool:
    """Whether every one of `modules` is exactly a GhostNet v1 bottleneck with v1 Ghost modules: the Ghost layout
    rewrites those and nothing else (GhostNetV2's Ghost modules derive from v1's but add an attention branch)."""
    return all(type(b) is GhostBottleneck and type(b.ghost1) is GhostModule and type(b.ghost2) is GhostModule
               for b in modules)


def in_ghost_layout(model: nn.Module) -> bool:
    """Whether `ghost_layout` can rewrite `model`: a GhostNet v1 network, exactly (stem ReLU, v1 bottlenecks,
    a last ConvBnAct)."""
    return (isinstance(model, GhostNet) and isinstance(model.act1, nn.ReLU) and is_v1(bottlenecks(model))
            and type(model.blocks[-1][0]) is ConvBnAct)


def ghost_layout(model: GhostNet, block: int = 16, blocks: int | None = None) -> GhostLayoutNet:
    """An eval-mode equivalent of `model` (a rubik GhostNet v1) whose first `blocks` bottlenecks (all by default)
    run in the Ghost layout, for float ONNX export."""
    if not in_ghost_layout(model):
        raise TypeError(f"the Ghost layout takes a GhostNet v1, got {type(model).__name__}")
    with torch.no_grad():
        return GhostLayoutNet(model, block, blocks)


LAYOUTS = ("fp32", "int8")  # the Ghost layout for a float file, and for the float file int8 is quantized from


def check_layout(layout: str | int | None) -> None:
    if layout is not None and layout not in LAYOUTS and not isinstance(layout, int):
        raise RubikError(f"layout must be 'fp32', 'int8', a number of bottlenecks or None, got {layout!r}")


def layout_blocks(modules: list[nn.Module], layout: str | int | None) -> int | None:
    """How many of a GhostNet's bottlenecks (`modules`, in order) go into the Ghost layout for `layout`
    ("fp32": all, "int8": `int8_layout_blocks`, N: the first N); None for none (None, or not v1's bottlenecks)."""
    check_layout(layout)
    if layout is None or not modules or not is_v1(modules):
        return None
    return {"fp32": len(modules), "int8": int8_layout_blocks(modules)}.get(layout, layout)


def int8_layout_blocks(modules: list[GhostBottleneck]) -> int:
    """How many bottlenecks go into the Ghost layout in the float file an int8 file is quantized from.

    The int8 path keeps the early, high-resolution blocks in float (see quantize.py) and runs the rest
    in int8, where parts would cost a QLinearAdd per part instead of a copy. The layout through the
    first block at 1/16 of the input resolution (7 of GhostNet 1.0x's 16) was fastest in two exploratory
    runs on a 2-core Xeon, and tied with 5 and 16 in benchmarks/ghost_split.py's run (which prints it).
    The stem strides by 2 before the first bottleneck.
    """
    stride, count = 2, 0
    for b in modules:
        count += 1
        if stride >= 16:
            return count
        stride *= b.conv_dw.stride[0] if b.conv_dw is not None else 1
    return count


def network_layout(model: nn.Module, layout: str | int | None) -> nn.Module:
    """`model` itself, or for a GhostNet v1 network its Ghost layout for `layout` (see `layout_blocks`)."""
    check_layout(layout)
    if not in_ghost_layout(model):
        return model
    blocks = layout_blocks(bottlenecks(model), layout)
    return model if blocks is None else ghost_layout(model, blocks=blocks)

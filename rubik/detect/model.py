"""SSDLite detectors on rubik backbones, built from torchvision's detection API.

torchvision supplies everything detection-specific: `SSD` (matching, hard-negative mining, losses,
box coding, NMS), `SSDLiteHead` and `DefaultBoxGenerator`. rubik supplies the backbone: the feature
maps at stride 16 and stride 32 of any MBConv or GhostNet model (named, a JSON spec, or a twisted
model), followed by four extra layers built as `ssdlite320_mobilenet_v3_large` builds its own
(`extra_block`, `normal_init`: rubik's copies of torchvision's private helpers, same modules and init).

A detector is named (`ssdlite_ghostnet_100`, ...; see DETECTORS), or written as `ssdlite:BACKBONE`
where BACKBONE is any rubik model name or JSON spec file (`ssdlite:tiny35.json`), or given as a JSON
file / dict with a "detector" field:

    {"detector": "ssdlite", "name": "mine", "backbone": "tinynet_e", "resolution": 256}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RubikError
from ..models.family import FeatureInfo, FeatureNet, FeatureTap
from ..models.registry import FAMILIES, ModelSpec, get_spec
from ..models.spec import read_spec_file
from ..profile import Part

TORCHVISION_MOBILENET = "torchvision:mobilenet_v3_large"
PREFIX = "ssdlite:"
TAPS16 = ("expansion", "stage")
NORMS = ("model", "ssdlite")
SSDLITE_NORM = {"eps": 0.001, "momentum": 0.03}  # torchvision's ssdlite320, backbone, extra layers and head


@dataclass(frozen=True)
class DetectorSpec:
    """An SSDLite detector: a backbone plus the SSD settings torchvision's ssdlite320 uses."""

    name: str
    backbone: Any  # a rubik ModelSpec as a dict, or TORCHVISION_MOBILENET
    resolution: int = 320
    extra_channels: tuple[int, ...] = (512, 256, 256, 128)  # the four extra layers after the stride-32 tap
    score_thresh: float = 0.001
    nms_thresh: float = 0.55
    detections_per_img: int = 300
    topk_candidates: int = 300
    detector: str = "ssdlite"
    # Where the stride-16 map comes from: "expansion" of the first stride-32 block (SSDLite's and torchvision's
    # tap), or "stage", the end of the last stride-16 stage (narrower; how runs before 2026-12-01 were built).
    tap16: str = "expansion"
    # The backbone's BatchNorm: "ssdlite" (eps 0.001, momentum 0.03), what torchvision's ssdlite320 gives its
    # MobileNetV3 backbone (GhostNet SSDLite 11.4 -> 12.4 mAP in benchmarks/detect.py), or "model" as the
    # classifier has it (eps 1e-5, momentum 0.1; runs before 2026-12-01). eps is not in a state_dict: it is spec.
    backbone_norm: str = "ssdlite"

    @property
    def torchvision_reference(self) -> bool:
        return self.backbone == TORCHVISION_MOBILENET

    @property
    def backbone_spec(self) -> ModelSpec:
        return get_spec(self.backbone)

    @property
    def mean(self) -> tuple[float, float, float]:
        return (0.5, 0.5, 0.5) if self.torchvision_reference else tuple(self.backbone_spec.preprocess.mean)

    @property
    def std(self) -> tuple[float, float, float]:
        return (0.5, 0.5, 0.5) if self.torchvision_reference else tuple(self.backbone_spec.preprocess.std)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra_channels"] = list(self.extra_channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise RubikError(f"detector spec has unknown field(s) {unknown}; valid fields: {sorted(known)}")
        if data.get("detector", "ssdlite") != "ssdlite":
            raise RubikError(f"detector {data['detector']!r} is not supported; use \"detector\": \"ssdlite\"")
        if "backbone" not in data:
            raise RubikError("detector spec needs a 'backbone' field: a rubik model name, spec dict or JSON file")
        data = dict(data)
        data.setdefault("name", f"ssdlite_{_backbone_name(data['backbone'])}")
        if data["backbone"] != TORCHVISION_MOBILENET:
            data["backbone"] = get_spec(data["backbone"]).to_dict()  # resolved, so a run is self-contained
        res = data.get("resolution", 320)
        if not (isinstance(res, int) and res >= 32):
            raise RubikError(f"detector spec field 'resolution' must be an integer >= 32, got {res!r}")
        if "extra_channels" in data:
            data["extra_channels"] = tuple(int(c) for c in data["extra_channels"])
        if data.get("tap16", "expansion") not in TAPS16:
            raise RubikError(f"detector spec field 'tap16' must be one of {list(TAPS16)}, got {data['tap16']!r}")
        if data.get("backbone_norm", "ssdlite") not in NORMS:
            raise RubikError(f"detector spec field 'backbone_norm' must be one of {list(NORMS)}, "
                             f"got {data['backbone_norm']!r}")
        return cls(**data)


def _backbone_name(backbone: Any) -> str:
    if isinstance(backbone, dict):
        return str(backbone.get("name", "backbone"))
    return Path(str(backbone)).stem if str(backbone).endswith(".json") else str(backbone)


def _named() -> dict[str, dict[str, Any]]:
    out = {f"ssdlite_{b}": {"backbone": b} for b in
           ("ghostnet_050", "ghostnet_100", "ghostnet_130", "tinynet_a", "tinynet_b", "tinynet_c", "tinynet_d",
            "tinynet_e", "efficientnet_b0", "efficientnet_b_1", "efficientnet_b_2", "efficientnet_b_3",
            "efficientnet_b_4")}
    out["ssdlite_mobilenet_v3_large"] = {"backbone": TORCHVISION_MOBILENET}  # torchvision's ssdlite320, as is
    return out


# Every named detector takes 320 px inputs (torchvision's ssdlite320), so comparisons are at equal input size.
DETECTORS: dict[str, dict[str, Any]] = _named()


def spec_fields(data: Any) -> Any:
    """The detector spec in a spec dict: a twisted detector's {"model": SPEC, "twist": ...} (rubik.detect.twist)
    holds it under "model", as a twisted classifier's file does."""
    if isinstance(data, dict) and "detector" not in data and isinstance(data.get("model"), dict):
        return data["model"]
    return data


def is_detector(model: Any) -> bool:
    """True for a detector name, an `ssdlite:` string, a DetectorSpec, or a dict/JSON file with "detector"."""
    if isinstance(model, DetectorSpec):
        return True
    if isinstance(model, dict):
        return "detector" in spec_fields(model) or "task" in model and model.get("task") == "detect"
    text = str(model)
    if text in DETECTORS or text.startswith(PREFIX):
        return True
    if text.endswith(".json") and Path(text).is_file():
        try:
            return "detector" in spec_fields(json.loads(Path(text).read_text()))
        except (json.JSONDecodeError, OSError, TypeError):
            return False
    return False


def get_detector_spec(model: Any, resolution: int | None = None) -> DetectorSpec:
    """Resolve a detector name, `ssdlite:BACKBONE`, a dict or a JSON file to a DetectorSpec."""
    if isinstance(model, DetectorSpec):
        spec = model
    elif isinstance(model, dict):
        spec = DetectorSpec.from_dict(spec_fields(model))
    else:
        text = str(model)
        if text in DETECTORS:
            spec = DetectorSpec.from_dict({"name": text, **DETECTORS[text]})
        elif text.startswith(PREFIX):
            backbone = text[len(PREFIX):]
            if not backbone:
                raise RubikError("ssdlite: needs a backbone, e.g. --model ssdlite:tinynet_e or ssdlite:SPEC.json")
            spec = DetectorSpec.from_dict({"backbone": backbone})
        elif text.endswith(".json"):
            spec = DetectorSpec.from_dict(spec_fields(read_spec_file(text, "detector spec")))
        else:
            import difflib

            close = difflib.get_close_matches(text, list(DETECTORS), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"named detectors: {', '.join(DETECTORS)}"
            raise RubikError(f"unknown detector {text!r}: {hint}; or ssdlite:BACKBONE with any rubik model")
    if resolution:
        spec = replace(spec, resolution=resolution)
    if spec.torchvision_reference:
        return spec
    return spec


def detection_taps(net: nn.Module) -> tuple[list, str]:
    """The last step of the network at stride 16 and at stride 32, and the step where stride 32 begins.

    Not timm's `features_only` taps, which for GhostNet sit at the group that strides (80 channels at
    stride 16, one bottleneck into stride 32) and would leave most of the network unused: the stride-32
    tap is the last feature map before pooling (EfficientNet/TinyNet: the last stage; GhostNet: its
    960-channel 1x1 ConvBnAct), as torchvision's ssdlite320 taps MobileNetV3 at its last convolution.
    """
    family_taps = FAMILIES[net.spec.family].features(net)
    order = FeatureNet._order(net, family_taps)  # the model's forward as steps, as FeatureNet runs it
    last = max(order.index(t.module) for t in family_taps)
    container = family_taps[-1].module.split(".")[0] if "." in family_taps[-1].module else None
    # Steps after the family's last tap count only inside the same container (GhostNet's blocks.8, .9), never
    # the head (pooling, classifier).
    candidates = order[:last + 1] + [s for s in order[last + 1:] if container and s.startswith(container + ".")]
    was = net.training
    net.eval()
    found: dict[int, FeatureTap] = {}
    first32 = ""
    with torch.no_grad():
        size = 64
        x = torch.zeros(1, 3, size, size, device=next(net.parameters()).device)
        for step in candidates:
            parent, _, child = step.partition(".")
            module = getattr(net, parent)
            x = (getattr(module, child) if child else module)(x)
            reduction = size // x.shape[-1]
            if reduction in (16, 32):
                found[reduction] = FeatureTap(step, int(x.shape[1]), reduction)
            if reduction == 32 and not first32:
                first32 = step
    net.train(was)
    if set(found) != {16, 32}:
        raise RubikError(f"backbone {net.spec.name} has no stages at both stride 16 and stride 32 (SSDLite needs "
                         "both); use a backbone with five stride-2 steps")
    return [found[16], found[32]], first32


class ExpansionTaps(FeatureNet):
    """SSDLite's taps: the expansion of the first stride-32 block (at stride 16) and the last stride-32 map.

    The expansion is the widest map at stride 16 (672 channels in GhostNet 1.0x, against 112 at the end of
    its stride-16 stage); SSDLite (MobileNetV2 paper) and torchvision's ssdlite320 tap MobileNetV3 there.
    The block runs as `finish(x, expand(x))`, the same arithmetic as its forward.
    """

    def __init__(self, model: nn.Module, last: FeatureTap, stage: str):
        super().__init__(model, [last])
        self._stage = stage
        first = self._module(stage)[0]
        with torch.no_grad():  # the expansion's channels: run the block's own expand on a probe
            channels = first.expand(torch.zeros(1, first_in_channels(first), 4, 4)).shape[1]
        self.feature_info = FeatureInfo([FeatureTap(f"{stage}.0.expand", int(channels), 16), last])

    def forward(self, x: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
        """The two taps; `start` > 0 takes `x` as the output of step `start - 1` (a split prefix ran it)."""
        out = []
        for step in self._steps[start:]:
            module = self._module(step)
            if step == self._stage:
                first, *rest = module
                expansion = first.expand(x)
                out.append(expansion)
                x = first.finish(x, expansion)
                for block in rest:
                    x = block(x)
            else:
                x = module(x)
        out.append(x)
        return out


def first_in_channels(block: nn.Module) -> int:
    """Input channels of a block: those of its first convolution."""
    return next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels


def _expansion_stage(net: nn.Module, stage: str) -> bool:
    """True when the stage where stride 32 begins is a sequence of blocks whose first one can be tapped."""
    parent, _, child = stage.partition(".")
    module = getattr(net, parent)
    module = getattr(module, child) if child else module
    return isinstance(module, nn.Sequential) and len(module) > 0 and hasattr(module[0], "expand")


def extra_block(in_ch: int, out_ch: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """One SSDLite extra layer, as torchvision's: 1x1 to out/2, 3x3 depthwise stride 2, 1x1 to out; each
    convolution (no bias) + `norm` + ReLU6 (keys `0.0.weight`, `0.1.running_mean`, ... as torchvision's)."""
    from torchvision.ops import Conv2dNormActivation

    mid = out_ch // 2
    return nn.Sequential(
        Conv2dNormActivation(in_ch, mid, kernel_size=1, norm_layer=norm, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, mid, kernel_size=3, stride=2, groups=mid, norm_layer=norm, activation_layer=nn.ReLU6),
        Conv2dNormActivation(mid, out_ch, kernel_size=1, norm_layer=norm, activation_layer=nn.ReLU6))


def normal_init(module: nn.Module) -> None:
    """torchvision's SSDLite init: every convolution's weights N(0, 0.03), its bias (if any) zero."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SSDLiteFeatures(nn.Module):
    """Backbone taps plus torchvision's SSDLite extra layers; the dict of feature maps torchvision's SSD wants."""

    def __init__(self, body: nn.Module, in_channels: list[int], extra_channels: tuple[int, ...]):
        super().__init__()
        norm = partial(nn.BatchNorm2d, **SSDLITE_NORM)
        self.body = body
        chans = [in_channels[-1], *extra_channels]
        self.extra = nn.ModuleList(extra_block(a, b, norm) for a, b in zip(chans[:-1], chans[1:], strict=True))
        normal_init(self.extra)
        self.out_channels = [*in_channels, *extra_channels]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extend(self.body(x))

    def extend(self, taps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The body's taps followed by the extra layers' maps, keyed "0", "1", ..."""
        feats = list(taps)
        x = feats[-1]
        for block in self.extra:
            x = block(x)
            feats.append(x)
        return {str(i): f for i, f in enumerate(feats)}


def _anchor_generator(levels: int):
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    return DefaultBoxGenerator([[2, 3] for _ in range(levels)], min_ratio=0.2, max_ratio=0.95)


def from_scratch_init(net: nn.Module) -> None:
    """torchvision's SSDLite init for a backbone trained from scratch: every convolution N(0, 0.03), no bias.

    ssdlite320_mobilenet_v3_large does this when it has no backbone weights. With the classification init
    instead (He normal: std 0.47 for a 3x3 depthwise kernel), the same MobileNetV3 through rubik's taps
    reached 1.1 mAP where torchvision's builder reached 13.3 under the same 8-epoch recipe
    (benchmarks/detect.py, README's Detection section).
    """
    normal_init(net)


def build_backbone_net(spec: DetectorSpec, pretrained: bool = False, weights: str | Path | None = None,
                       drop_connect_rate: float = 0.0) -> nn.Module:
    """The backbone classifier (ImageNet weights loaded through rubik's loader when asked), before tapping."""
    from ..models.weights import create_model

    return create_model(spec.backbone_spec, pretrained=pretrained, weights=weights, drop_rate=0.0,
                        drop_connect_rate=drop_connect_rate)


def build_detector(model: Any, num_classes: int, *, pretrained: bool = False,
                   backbone_weights: str | Path | None = None, classes: list[str] | None = None,
                   drop_connect_rate: float = 0.0) -> nn.Module:
    """An SSDLite detector for `num_classes` object classes (torchvision adds the background class 0).

    `pretrained` loads the backbone's official ImageNet weights; `backbone_weights` a local classifier file.
    The model carries `.spec` (a DetectorSpec) and `.classes`.
    """
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead, ssdlite320_mobilenet_v3_large

    spec = get_detector_spec(model)
    if num_classes < 1:
        raise RubikError("a detector needs at least one object class")
    settings = dict(score_thresh=spec.score_thresh, nms_thresh=spec.nms_thresh,
                    detections_per_img=spec.detections_per_img, topk_candidates=spec.topk_candidates)
    if spec.torchvision_reference:
        if pretrained or backbone_weights:
            raise RubikError("ssdlite_mobilenet_v3_large is torchvision's reference, built without pretrained "
                             "weights here; train it from scratch or use a rubik backbone with --pretrained")
        # torchvision's own builder, from scratch (no download); size is honoured as the fixed input size.
        det = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                            **settings)
        if spec.resolution != 320:
            det.transform.fixed_size = (spec.resolution, spec.resolution)
            det.transform.min_size, det.transform.max_size = (spec.resolution,), spec.resolution
    else:
        net = build_backbone_net(spec, pretrained, backbone_weights, drop_connect_rate)
        if spec.backbone_norm == "ssdlite":
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eps, m.momentum = SSDLITE_NORM["eps"], SSDLITE_NORM["momentum"]
        if not (pretrained or backbone_weights):
            from_scratch_init(net)
        taps, stage = detection_taps(net)
        # module names stay timm's (blocks.4.2.conv_pw.weight); a backbone without tappable blocks (ResNet)
        # keeps the stage tap
        if spec.tap16 == "expansion" and _expansion_stage(net, stage):
            body = ExpansionTaps(net, taps[1], stage)
        else:
            body = FeatureNet(net, taps)
        features = SSDLiteFeatures(body, body.feature_info.channels(), spec.extra_channels)
        anchors = _anchor_generator(len(features.out_channels))
        norm = partial(nn.BatchNorm2d, **SSDLITE_NORM)
        head = SSDLiteHead(features.out_channels, anchors.num_anchors_per_location(), num_classes + 1, norm)
        size = (spec.resolution, spec.resolution)
        det = SSD(features, anchors, size, num_classes + 1, image_mean=list(spec.mean), image_std=list(spec.std),
                  head=head, **settings)
    det.spec = spec
    det.classes = classes
    det.num_object_classes = num_classes
    return det


class _Core(nn.Module):
    """Backbone + extra layers + head of a detector: what its cost counts (no resizing, decoding or NMS)."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.backbone, self.head = det.backbone, det.head

    def forward(self, x):
        return self.head(list(self.backbone(x).values()))


def detector_macs_params(det: nn.Module) -> tuple[int, int]:
    """MACs (convolutions and linear layers, as rubik counts) of backbone + extra layers + head, and params."""
    from ..profile import count, count_params

    core = _Core(det)
    return count(core, det.spec.resolution)[0], count_params(core)


PARTS = ("backbone", "extras", "head")


def detector_parts(det: nn.Module, latency: bool = False, threads: int = 1, runs: int = 50) -> dict[str, Part]:
    """MACs, params (and, with `latency`, eager CPU latency, batch 1) of the backbone, the extra layers and the
    head: each the cost of the detector cut after that part less the cut before it, so the parts add up to the
    whole (`detector_macs_params`; the latencies to the whole detector's)."""
    from ..profile import count, count_params
    from ..profile import latency as eager_ms

    res = det.spec.resolution
    features = det.backbone  # the body's taps, then the extra layers (rubik's, or torchvision's MobileNetV3 one)
    cuts = [getattr(features, "body", None) or features.features, features, _Core(det)]
    totals = [(count(m, res)[0], count_params(m), eager_ms(m, res, threads, runs=runs) if latency else None)
              for m in cuts]
    parts, before = {}, (0, 0, 0.0)
    for name, total in zip(PARTS, totals, strict=True):
        ms = None if total[2] is None else total[2] - before[2]
        parts[name] = Part(total[0] - before[0], total[1] - before[1], ms)
        before = total
    return parts


__all__ = ["DETECTORS", "DetectorSpec", "build_detector", "detector_macs_params", "detector_parts",
           "from_scratch_init", "get_detector_spec", "is_detector"]

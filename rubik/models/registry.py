"""Named models: each is a base family plus a point (resolution, depth, width) of the cube.

`create_model` also takes a spec (a dict, or a JSON file path) so that models made by
`rubik twist` or by hand go everywhere a named model goes.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import RubikError
from . import ghost, ghostnetv2, ghostnetv3, mbconv, resnet, tvbaseline
from .family import Family, FeatureNet
from .mbconv import LITE_RULES, TINYNET_LITE_RULES, TINYNET_RULES
from .resnet import ResNetRules
from .spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, Preprocess, Published, read_spec_file
from .tvbaseline import TorchvisionRules

# The only place that knows the family names: a spec's `family` is a key here.
FAMILIES: dict[str, Family] = {
    "mbconv": mbconv.FAMILY,
    "ghostnet": ghost.FAMILY,
    "ghostnetv2": ghostnetv2.FAMILY,
    "ghostnetv3": ghostnetv3.FAMILY,
    "resnet": resnet.FAMILY,
    "torchvision": tvbaseline.FAMILY,
}

MODELS: dict[str, ModelSpec] = {}  # named models
PUBLISHED: dict[str, Published] = {}  # published figures and official weights, by model name

__all__ = ["FAMILIES", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "PUBLISHED", "ModelSpec", "Preprocess",
           "Published", "UnknownModelError", "build", "get_spec", "list_models", "published", "register"]


class UnknownModelError(RubikError):
    """A model name that is not registered (the message suggests close names)."""


def register(spec: ModelSpec, published: Published | None = None) -> ModelSpec:
    """Add a named model (and what was published about it) to the registry."""
    MODELS[spec.name] = spec
    if published is not None:
        PUBLISHED[spec.name] = published
    return spec


def published(spec: ModelSpec) -> Published:
    """The published figures for a spec: only a registered model's own architecture has them."""
    named = MODELS.get(spec.name)
    same = named is not None and (named.family, named.width, named.depth, named.rules) == \
        (spec.family, spec.width, spec.depth, spec.rules)
    return PUBLISHED.get(spec.name, Published()) if same else Published()


def _register_all() -> None:
    # EfficientNet B0..B7: the published (width, depth, resolution, dropout), hand-rounded by the authors.
    effnet = [(1.0, 1.0, 224, 0.2, 390, 5.3, 77.1, "timm/efficientnet_b0.ra_in1k"),
              (1.0, 1.1, 240, 0.2, 700, 7.8, 79.1, "timm/efficientnet_b1.ft_in1k"),
              (1.1, 1.2, 260, 0.3, 1000, 9.2, 80.1, "timm/efficientnet_b2.ra_in1k"),
              (1.2, 1.4, 300, 0.3, 1800, 12, 81.6, "timm/efficientnet_b3.ra2_in1k"),
              (1.4, 1.8, 380, 0.4, 4200, 19, 82.9, "timm/efficientnet_b4.ra2_in1k"),
              (1.6, 2.2, 456, 0.4, 9900, 30, 83.6, None),
              (1.8, 2.6, 528, 0.5, 19000, 43, 84.0, None),
              (2.0, 3.1, 600, 0.5, 37000, 66, 84.3, None)]
    for i, (w, d, r, drop, macs, params, top1, hub) in enumerate(effnet):
        register(ModelSpec(f"efficientnet_b{i}", width=w, depth=d, resolution=r, drop_rate=drop),
                 Published(hub, macs, params, top1))
    # EfficientNet-Lite 0..4 (TF reference code, efficientnet_lite_builder.py, as timm's _gen_efficientnet_lite
    # lists it): (width, depth, resolution, dropout); figures from the TF Lite README's table (its MAdds come
    # from TF's profiler). Only Lite0 has ImageNet weights on the hub in timm's PyTorch layout (timm's own
    # training); the TF checkpoints are timm's tf_efficientnet_lite*, which pad as TF does ("same").
    lite = [(1.0, 1.0, 224, 0.2, 407, 4.7, 75.1, "timm/efficientnet_lite0.ra_in1k"),
            (1.0, 1.1, 240, 0.2, 631, 5.4, 76.7, None),
            (1.1, 1.2, 260, 0.3, 899, 6.1, 77.6, None),
            (1.2, 1.4, 280, 0.3, 1440, 8.2, 79.8, None),
            (1.4, 1.8, 300, 0.3, 2640, 13.0, 81.5, None)]
    for i, (w, d, r, drop, macs, params, top1, hub) in enumerate(lite):
        register(ModelSpec(f"efficientnet_lite{i}", width=w, depth=d, resolution=r, rules=LITE_RULES, drop_rate=drop),
                 Published(hub, macs, params, top1))
    # The TinyNet paper's inverse giant formula, phi = -1..-4: see INVERSE_GIANT_WIDTHS.
    for phi, w in INVERSE_GIANT_WIDTHS.items():
        d, r = 1.2 ** -phi, round(224 * 1.15 ** -phi)
        register(ModelSpec(f"efficientnet_b_{phi}", width=w, depth=d, resolution=r),
                 Published(None, 24, 1.3, 56.7) if phi == 4 else None)
    # TinyNet A..E (Han et al. 2020, Table 3; (w, d, r) as in the official code).
    # Last column: timm's own evaluation of the hub weights (its ImageNet results table).
    tiny = [("a", 1.0, 1.2, 192, 339, 6.2, 76.8, 77.67), ("b", 0.75, 1.1, 188, 202, 3.7, 75.0, 74.95),
            ("c", 0.54, 0.85, 184, 100, 2.5, 71.2, 71.21), ("d", 0.54, 0.695, 152, 52, 2.3, 67.0, 66.94),
            ("e", 0.51, 0.6, 106, 24, 2.0, 59.9, 59.87)]
    for letter, w, d, r, macs, params, top1, timm_top1 in tiny:
        register(ModelSpec(f"tinynet_{letter}", width=w, depth=d, resolution=r, rules=TINYNET_RULES),
                 Published(f"timm/tinynet_{letter}.in1k", macs, params, top1, timm_top1))
    # TinyNet-Lite A..E: architectures only (no weights); see TINYNET_LITE_POINTS.
    for letter, (_, r, d, w) in TINYNET_LITE_POINTS.items():
        register(ModelSpec(f"tinynet_lite_{letter}", width=w, depth=d, resolution=r, rules=TINYNET_LITE_RULES))
    # GhostNet 0.5x / 1.0x / 1.3x (Han et al. 2020, Table 7).
    bilinear = Preprocess(interpolation="bilinear")
    for tag, w, macs, params, top1, hub in (("050", 0.5, 42, 2.6, 66.2, None),
                                            ("100", 1.0, 141, 5.2, 73.9, "timm/ghostnet_100.in1k"),
                                            ("130", 1.3, 226, 7.3, 75.7, None)):
        register(ModelSpec(f"ghostnet_{tag}", family="ghostnet", width=w, preprocess=bilinear),
                 Published(hub, macs, params, top1))
    # GhostNetV2 1.0/1.3/1.6x (Tang et al. 2022) and GhostNetV3 0.5/1.0/1.3/1.6x (Liu et al. 2024), timm's
    # preprocessing. Only figures found in a source are given (README, "GhostNetV2 and V3"): V2 1.0x 167 M,
    # 75.3 % (abstract); V2 1.3x / 1.6x top-1 as the paper's table is quoted by keras_cv_attention_models;
    # V3 1.3x 269 M, 79.1 % (abstract); V3 1.0x 77.1 % (the issue; PaddleClas measured the official EMA file
    # at 77.13 %). timm's hub ghostnetv3_100 holds the non-EMA weights.
    for tag, w, macs, top1, hub in (("100", 1.0, 167, 75.3, True), ("130", 1.3, None, 76.9, True),
                                    ("160", 1.6, None, 77.8, True)):
        register(ModelSpec(f"ghostnetv2_{tag}", family="ghostnetv2", width=w),
                 Published(f"timm/ghostnetv2_{tag}.in1k" if hub else None, macs, None, top1))
    for tag, w, macs, top1, hub in (("050", 0.5, None, None, False), ("100", 1.0, None, 77.1, True),
                                    ("130", 1.3, 269, 79.1, False), ("160", 1.6, None, None, False)):
        register(ModelSpec(f"ghostnetv3_{tag}", family="ghostnetv3", width=w),
                 Published(f"timm/ghostnetv3_{tag}.in1k" if hub else None, macs, None, top1))
    # ResNet-18/34/50/101 (He et al. 2016) in timm's default layout (v1.5), with timm's A1 weights
    # (Wightman et al. 2021, "ResNet strikes back"), evaluated at crop 0.95 bicubic as timm does.
    # MACs: the paper's 1.8 / 3.6 G for 18 / 34; 4.1 / 7.8 G for the v1.5 50 / 101 (torchvision's
    # figures: the paper's 3.8 / 7.6 G are for v1, which strides in the first 1x1). Params and top-1
    # are torchvision's published figures for the original recipe (single 224 crop).
    rsb = Preprocess(crop_pct=0.95, interpolation="bicubic")
    for depth, macs, params, top1, tag in ((18, 1800, 11.7, 69.8, "a1_in1k"), (34, 3600, 21.8, 73.3, "a1_in1k"),
                                           (50, 4100, 25.6, 76.1, "a1_in1k"), (101, 7800, 44.5, 77.4, "a1h_in1k")):
        register(ModelSpec(f"resnet{depth}", family="resnet", rules=ResNetRules(base=f"resnet{depth}"),
                           drop_rate=0.0, preprocess=rsb), Published(f"timm/resnet{depth}.{tag}", macs, params, top1))
    # Baselines from torchvision, as they are (for comparison tables).
    register(ModelSpec("mobilenetv3_large_100", family="torchvision", preprocess=bilinear,
                       rules=TorchvisionRules("mobilenet_v3_large")), Published(None, 219, 5.4, 75.2))
    register(ModelSpec("mobilenetv3_small_100", family="torchvision", preprocess=bilinear,
                       rules=TorchvisionRules("mobilenet_v3_small")), Published(None, 56, 2.5, 67.4))


# EfficientNet-B-phi (TinyNet paper): r = 224 x 1.15^phi, d = 1.2^phi with B0's rules (ceil depth,
# stem and head scaled with width), and w solved so that MACs = 2^phi x B0's: the formula's intent,
# each step halves FLOPs. The literal w = 1.1^phi cannot give the published B-4 (24 M MACs, 1.3 M
# params): channel rounding and the one-block floor per stage keep it at 38 M MACs and 1.9 M params,
# and even one block per stage stays above 26 M. Solved widths (tests/test_models.py re-solves them):
INVERSE_GIANT_WIDTHS = {1: 0.725, 2: 0.56, 3: 0.485, 4: 0.48}

# TinyNet-Lite A..E: `rubik twist --base efficientnet_lite0` with the built-in tiny formula (tinynet_paper.json)
# at TinyNet A..E's FLOPs ratios c: r and d from the formula's fit, w solved so MACs = c x Lite0's (within
# 1 %), built with Lite0's rules updated by the formula's (TINYNET_LITE_RULES). Stored here because models
# must not import cube; tests/test_lite.py recomputes them. letter: (c, resolution, depth, width).
TINYNET_LITE_POINTS = {"a": (0.9, 191, 1.2033, 1.0352), "b": (0.5, 191, 1.086, 0.7498),
                       "c": (0.25, 178, 0.8637, 0.5358), "d": (0.13, 153, 0.6899, 0.5353),
                       "e": (0.06, 109, 0.6005, 0.4638)}

_register_all()


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (`'tinynet_*'`)."""
    import fnmatch

    return [n for n in MODELS if pattern is None or fnmatch.fnmatch(n, pattern)]


def get_spec(model: str | dict | Path | ModelSpec) -> ModelSpec:
    """Resolve a registered name, a spec dict, a JSON spec file, or a ModelSpec."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec.from_dict(model)
    text = str(model)
    if text in MODELS:
        return MODELS[text]
    if text.endswith(".json") or _is_file(text):
        data = read_spec_file(text)
        return ModelSpec.from_dict(data.get("model", data))
    close = difflib.get_close_matches(text, list(MODELS), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `rubik models` for the list"
    raise UnknownModelError(f"unknown model {text!r}: {hint}")


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # not a path at all (too long for one, say): a model name that is unknown
        return False


def build(spec: ModelSpec, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Build the architecture a spec describes, with fresh weights."""
    kwargs.setdefault("drop_rate", spec.drop_rate)
    model = FAMILIES[spec.family].build(spec, num_classes=num_classes, **kwargs)
    model.spec = spec
    return model


def features(model: nn.Module, out_indices: tuple[int, ...] | None = None) -> FeatureNet:
    """A built model cut to its multi-scale feature maps (strides 2..32, timm's tap points)."""
    family = FAMILIES[model.spec.family]
    return FeatureNet(model, family.features(model), out_indices)

"""torchvision's MobileNetV3 as a family, unchanged: baselines for comparison tables.

The rules name torchvision's builder (`arch`); these models are not twisted (no stage table of ours).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RubikError
from .family import Family, FeatureTap, strided_taps

ARCHS = ("mobilenet_v3_large", "mobilenet_v3_small")


@dataclass(frozen=True)
class TorchvisionRules:
    arch: str = "mobilenet_v3_large"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise RubikError(f"torchvision arch {self.arch!r} is not one of {ARCHS}")


def _build(spec, num_classes: int = 1000, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    return getattr(tvm, spec.rules.arch)(num_classes=num_classes, dropout=kwargs.get("drop_rate", 0.2))


def _features(model: nn.Module) -> tuple[FeatureTap, ...]:
    # The end of the last block at each stride of torchvision's `features`, as timm taps MobileNetV3.
    size, steps = 64, []
    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        prev = size
        for i, block in enumerate(model.features):
            x = block(x)
            steps.append((f"features.{i}", x.shape[1], prev // x.shape[-1]))
            prev = x.shape[-1]
    model.train(was_training)
    return strided_taps(steps)


FAMILY = Family(name="torchvision", stages=ARCHS, rules=TorchvisionRules, plan=lambda width, depth, rules: rules,
                build=_build, features=_features, classifier=("classifier",), twistable=False,
                legacy_rule_keys=frozenset({"depth_rounding", "stem", "head", "stem_channels", "head_channels"}))

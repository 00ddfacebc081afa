"""Model builders: the MBConv (EfficientNet/TinyNet) and Ghost families, named models, weights."""

from .ghost import GhostNet
from .mbconv import EFFICIENTNET_B0_STAGES, EFFICIENTNET_RULES, TINYNET_RULES, MBConvNet, MBStage, ScalingRules
from .registry import MODELS, ModelSpec, UnknownModelError, build, get_spec, list_models

__all__ = ["EFFICIENTNET_B0_STAGES", "EFFICIENTNET_RULES", "TINYNET_RULES", "MODELS", "GhostNet", "MBConvNet",
           "MBStage", "ModelSpec", "ScalingRules", "UnknownModelError", "build", "get_spec", "list_models"]

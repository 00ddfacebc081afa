"""Model builders: one family per file (MBConv, GhostNet, ...), the family table, named models, weights."""

from .family import Family, FeatureInfo, FeatureNet, FeatureTap
from .ghost import GhostNet
from .mbconv import (
    EFFICIENTNET_B0_STAGES,
    EFFICIENTNET_RULES,
    LITE_RULES,
    TINYNET_RULES,
    MBConvNet,
    MBStage,
    ScalingRules,
)
from .registry import (
                       FAMILIES,
                       MODELS,
                       PUBLISHED,
                       ModelSpec,
                       Preprocess,
                       Published,
                       UnknownModelError,
                       build,
                       features,
                       get_spec,
                       list_models,
                       published,
)

__all__ = ["EFFICIENTNET_B0_STAGES", "EFFICIENTNET_RULES", "FAMILIES", "LITE_RULES", "MODELS", "PUBLISHED",
           "TINYNET_RULES", "Family", "FeatureInfo", "FeatureNet", "FeatureTap", "GhostNet", "MBConvNet", "MBStage",
           "ModelSpec", "Preprocess", "Published", "ScalingRules", "UnknownModelError", "build", "features", "get_spec",
           "list_models", "published"]

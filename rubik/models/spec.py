"""What a model is, three separate things: its architecture (`ModelSpec`), how images are fed to it
(`Preprocess`, nested in the spec), and what was published about its official weights (`Published`,
kept in `registry.PUBLISHED` by model name, as torchvision's WeightsEnum and timm's pretrained_cfg
keep it apart from the architecture). A twisted spec has a new name, so it never carries another
model's published figures or hub id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RubikError


def read_spec_file(text: str, what: str = "model spec") -> Any:
    """The JSON in the spec file `text`; a one-line RubikError when it is missing or not JSON."""
    path = Path(text)
    if not path.is_file():
        raise RubikError(f"{what} file {text} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RubikError(f"{what} file {text} is not valid JSON ({e})") from None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Preprocess:
    """Evaluation view: resize the short side to resolution / crop_pct, centre-crop, normalise."""

    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 1):
            raise RubikError(f"model spec field 'crop_pct' must be in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise RubikError(f"model spec field 'interpolation' must be one of {INTERPOLATIONS}, "
                             f"got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise RubikError(f"model spec 'mean' and 'std' need 3 values (std > 0), got {self.mean}, {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return {"crop_pct": self.crop_pct, "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std)}


@dataclass(frozen=True)
class Published:
    """Published figures for a named model and its official weights (None where none are published)."""

    hub_id: str | None = None  # official ImageNet-1k weights on the Hugging Face hub (timm's copies)
    macs_m: float | None = None  # the paper's FLOPs (multiply-accumulates), millions
    params_m: float | None = None
    top1: float | None = None  # the paper's ImageNet-1k top-1
    timm_top1: float | None = None  # timm's re-evaluation of the hub weights (results-imagenet.csv)


# Keys that earlier versions wrote at the top level of a spec: preprocessing (now `preprocess`),
# and published metadata (now `registry.PUBLISHED`, ignored when read back).
_PREPROCESS_KEYS = ("crop_pct", "interpolation", "mean", "std")
_DROPPED_KEYS = ("paper", "hub_id")


@dataclass(frozen=True)
class ModelSpec:
    """A point of a family's cube: the architecture to build, its input size, and its preprocessing.

    `rules` is an instance of the family's rules dataclass (None: the family's default; a dict
    from JSON is parsed by the family).
    """

    name: str
    family: str = "mbconv"
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    rules: Any = None
    drop_rate: float = 0.2
    preprocess: Preprocess = field(default_factory=Preprocess)

    def __post_init__(self):
        from .registry import FAMILIES

        if self.family not in FAMILIES:
            raise RubikError(f"model spec field 'family' must be one of {sorted(FAMILIES)}, got {self.family!r}")
        object.__setattr__(self, "rules", FAMILIES[self.family].parse_rules(self.rules))
        if isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", Preprocess(**self.preprocess))

    def to_dict(self) -> dict[str, Any]:
        from .registry import FAMILIES

        d = asdict(self)
        d["rules"] = FAMILIES[self.family].rules_dict(self.rules)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        if not isinstance(data, dict):
            raise RubikError(f"a model spec must be a JSON object, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k not in _DROPPED_KEYS}
        old = {k: data.pop(k) for k in _PREPROCESS_KEYS if k in data}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RubikError(f"model spec has unknown field(s) {unknown}; valid fields: {sorted(known)}")
        if "name" not in data:
            raise RubikError("model spec needs a 'name' field")
        for key in ("width", "depth"):
            if key in data and not (isinstance(data[key], (int, float)) and data[key] > 0):
                raise RubikError(f"model spec field '{key}' must be a positive number, got {data[key]!r}")
        if "resolution" in data and not (isinstance(data["resolution"], int) and data["resolution"] >= 8):
            raise RubikError(f"model spec field 'resolution' must be an integer >= 8, got {data['resolution']!r}")
        pre = data.get("preprocess", {})
        if not isinstance(pre, dict):
            raise RubikError(f"model spec field 'preprocess' must be an object, got {pre!r}")
        unknown = sorted(set(pre) - set(_PREPROCESS_KEYS))
        if unknown:
            raise RubikError(f"model spec preprocess has unknown field(s) {unknown}; valid: {list(_PREPROCESS_KEYS)}")
        try:
            data["preprocess"] = Preprocess(**{**old, **pre})
        except TypeError as e:
            raise RubikError(f"model spec preprocess is invalid: {e}") from None
        return cls(**data)

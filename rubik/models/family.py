"""The family interface: everything that depends on which kind of network a spec describes.

A family (MBConv, GhostNet, ResNet, ...) is one `Family` value, defined at the bottom of the
family's own file and listed once in `rubik.models.registry.FAMILIES`. Everything else in rubik
(building, counting MACs without a model, solving a width in `twist`, deriving specs in `search`,
loading checkpoints, multi-scale features) looks the family up there and calls these fields;
nothing branches on a family's name.

Adding a family = one new file that ends with `FAMILY = Family(...)`, and one line in FAMILIES.

Fields (see `Family` for types):
- `stages`: the base stage table as named rows (frozen dataclasses), for reading and for `plan`.
- `rules`: the family's scaling-rules dataclass; `rules()` is its default. A spec's `rules` is an
  instance of it; in JSON it is a dict, parsed by `Family.parse_rules` (unknown keys are errors).
- `plan(width, depth, rules)`: the scaled network as plain data (channels and blocks, each block a
  `BlockPlan`), the single place where width and depth multipliers become integers.
- `macs(plan, resolution, num_classes)`: MACs by arithmetic on the plan, equal to what
  `rubik.profile.count` counts on the built model (None: cube counts a shape-only "meta" model).
- `build(spec, num_classes, **kwargs)`: the network (plain nn.Module with timm's key names).
- `features(model)`: the multi-scale tap points of a built model, one `FeatureTap(module, channels,
  reduction)` per stride 2, 4, 8, 16, 32, at the same modules as timm's `features_only`. `module`
  is a dotted name inside the model; the model's forward must be its children applied in order up
  to the last tap (a child container named in a tap, e.g. `blocks` in `blocks.3`, is walked child
  by child). A tap's output is what that module returns. `FeatureNet` does the rest.
- `classifier`: the classifier's module name(s), whose keys are skipped when a checkpoint has
  another class count and ignored for `features_only`.
- `key_filter(state)`: renames of this family's checkpoint keys (old spellings); the generic
  filter (a DDP `module.` prefix, `thop` counters) is applied before it for every family.
- `twistable`: whether `rubik twist` / `rubik search` may scale this family.
- `formula`: the built-in formula file (rubik/cube/formulas/) a twist of this family starts from.
- `formula_rules`: whether a formula file's `rules` (e.g. TinyNet's depth rounding) apply to this
  family's rules when twisting with the tiny formula (keys the family's rules lack are ignored).
- `legacy_rule_keys`: rule keys that earlier versions wrote into this family's specs and that are
  now ignored (so old model.json files still load).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..errors import RubikError


@dataclass(frozen=True)
class FeatureTap:
    """One multi-scale output: the module whose output is taken, its channels and its stride."""

    module: str
    channels: int
    reduction: int


@dataclass(frozen=True)
class BlockPlan:
    """One block after scaling, in every family: the exact widths and stride its builder and MAC count use."""

    block: str  # the family's kind of block: "ds" or "ir" (MBConv), "ghost", "basic" or "bottleneck" (ResNet)
    in_ch: int
    mid_ch: int  # the hidden width: an expansion's output, a ResNet block's 3x3 width
    out_ch: int
    kernel: int
    stride: int
    se_ch: int = 0  # squeeze-excite reduced channels (0: no SE)


def build_stages(stages: tuple[tuple[BlockPlan, ...], ...],
                 make_block: Callable[[int, BlockPlan], nn.Module]) -> list[nn.Sequential]:
    """One Sequential per planned stage; `make_block(index, b)` builds each block, `index` counted over the network."""
    built, index = [], 0
    for stage in stages:
        blocks = []
        for b in stage:
            blocks.append(make_block(index, b))
            index += 1
        built.append(nn.Sequential(*blocks))
    return built


@dataclass(frozen=True)
class Family:
    name: str
    stages: Any
    rules: type
    plan: Callable[[float, float, Any], Any]
    build: Callable[..., nn.Module]
    features: Callable[[nn.Module], tuple[FeatureTap, ...]]
    macs: Callable[[Any, int, int], int] | None = None
    classifier: tuple[str, ...] = ("classifier",)
    key_filter: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    twistable: bool = True
    formula: str = "tinynet_paper.json"
    formula_rules: bool = False
    legacy_rule_keys: frozenset[str] = frozenset()

    def parse_rules(self, data: Any) -> Any:
        """A rules instance from an instance, a dict (JSON), or None (the family's default)."""
        if data is None:
            return self.rules()
        if isinstance(data, self.rules):
            return data
        if not isinstance(data, dict):
            raise RubikError(f"model spec field 'rules' must be an object of {self.name} rules, got {data!r}")
        known = {f.name for f in fields(self.rules)}
        data = {k: v for k, v in data.items() if k in known or k not in self.legacy_rule_keys}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RubikError(f"model spec rules {unknown} are not {self.name} rules; valid: {sorted(known)}")
        try:
            rules = self.rules(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except (TypeError, ValueError) as e:
            raise RubikError(f"model spec rules for {self.name} are invalid: {e}") from None
        return rules

    def rules_dict(self, rules: Any) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(rules).items()}

    def plan_of(self, spec) -> Any:
        return self.plan(spec.width, spec.depth, spec.rules)

    def twist_rules(self, rules: Any, formula_rules: dict[str, Any]) -> Any:
        """The rules a tiny-formula twist builds with: the base's, updated by the formula's where they apply."""
        known = {f.name for f in fields(self.rules)}
        update = {k: v for k, v in formula_rules.items() if k in known}  # a formula fitted on another family
        if not self.formula_rules or not update:
            return rules
        return self.parse_rules({**asdict(rules), **update})


class FeatureInfo:
    """timm-style description of a features_only model's outputs (the selected taps, in order)."""

    def __init__(self, taps: Sequence[FeatureTap]):
        self.taps = tuple(taps)

    def channels(self, idx: int | None = None) -> list[int] | int:
        return self._get("channels", idx)

    def reduction(self, idx: int | None = None) -> list[int] | int:
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None) -> list[str] | str:
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None):
        values = [getattr(t, key) for t in self.taps]
        return values if idx is None else values[idx]

    def __len__(self) -> int:
        return len(self.taps)

    def __repr__(self) -> str:
        return f"FeatureInfo({list(self.taps)})"


def select_taps(taps: Sequence[FeatureTap], out_indices: Sequence[int] | None) -> list[int]:
    """Indices into `taps` (timm's semantics: default all, negative counts from the end)."""
    n = len(taps)
    if out_indices is None:
        return list(range(n))
    chosen = []
    for i in out_indices:
        if not isinstance(i, int) or not -n <= i < n:
            raise RubikError(f"out_indices {tuple(out_indices)} must be integers in 0..{n - 1} "
                             f"(the maps at strides {[t.reduction for t in taps]})")
        chosen.append(i % n)
    if len(set(chosen)) != len(chosen):
        raise RubikError(f"out_indices {tuple(out_indices)} names a map twice")
    return sorted(chosen)


class FeatureNet(nn.Module):
    """A network cut after its last selected tap, returning the feature maps at the taps.

    The modules keep their names in the full model (`blocks.2.0.conv_dw.weight`), so a full
    checkpoint loads into it with only the head and classifier keys left over.
    """

    def __init__(self, model: nn.Module, taps: Sequence[FeatureTap], out_indices: Sequence[int] | None = None):
        super().__init__()
        index = select_taps(taps, out_indices)
        chosen = [taps[i] for i in index]
        self.feature_info = FeatureInfo(chosen)
        self.spec = getattr(model, "spec", None)
        wanted = {t.module for t in chosen}
        last = max(self._order(model, taps).index(t.module) for t in chosen)
        self._steps = self._order(model, taps)[: last + 1]
        self._taps = wanted
        parents = {name.split(".")[0] for name in self._steps}
        for name, child in model.named_children():
            if name not in parents:
                continue
            subs = [s.split(".", 1)[1] for s in self._steps if s.startswith(name + ".")]
            if subs:  # a container walked child by child: keep only the children run, under their own names
                kept = OrderedDict((k, m) for k, m in child.named_children() if k in subs)
                child = nn.Sequential(kept)
            self.add_module(name, child)

    @staticmethod
    def _order(model: nn.Module, taps: Sequence[FeatureTap]) -> list[str]:
        """Execution order of the model's children, containers named in a dotted tap expanded."""
        walked = {t.module.split(".")[0] for t in taps if "." in t.module}
        order = []
        for name, child in model.named_children():
            if name in walked:
                order += [f"{name}.{k}" for k, _ in child.named_children()]
            else:
                order.append(name)
        for t in taps:
            if t.module not in order:
                raise RubikError(f"feature tap {t.module!r} is not a step of {type(model).__name__}")
        return order

    def _module(self, step: str) -> nn.Module:
        parent, _, child = step.partition(".")
        module = getattr(self, parent)
        return getattr(module, child) if child else module

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for step in self._steps:
            x = self._module(step)(x)
            if step in self._taps:
                out.append(x)
        return out


def strided_taps(steps: Sequence[tuple[str, int, int]], first_reduction: int = 1) -> tuple[FeatureTap, ...]:
    """Taps at the last step of each stride: `steps` are (module, out channels, stride) in order.

    This is timm's rule for EfficientNet/MobileNet features (the end of the last stage before
    each stride change, and the last stage).
    """
    reduction, seen = first_reduction, []
    for module, channels, stride in steps:
        reduction *= stride
        if seen and seen[-1].reduction == reduction:
            seen[-1] = FeatureTap(module, channels, reduction)
        else:
            seen.append(FeatureTap(module, channels, reduction))
    return tuple(seen)


__all__ = ["BlockPlan", "Family", "FeatureInfo", "FeatureNet", "FeatureTap", "build_stages", "select_taps",
           "strided_taps"]

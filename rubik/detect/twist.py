"""Twisting a detector to a budget: its backbone's (r, d, w) by the tiny (or giant) formula, the whole detector
(backbone, extra layers and head, at the detector's input size) within the budget.

The cube's `Twister` does the work on the backbone: its cost hook counts the MACs of the detector built around
each candidate backbone (`DetectorTwister.macs_of`), so widths are solved, and ratios taken, on the whole
detector. r scales the detector's input size (320 px for the named detectors): `RESOLUTION_STEP` keeps it a
multiple of the backbone's last stride, so the stride-32 map covers the image exactly and the default boxes,
spread evenly over the image, sit on its cells. The extra layers keep their channels; the head follows the
backbone's tapped widths. Head MACs grow with the number of classes (6 boxes x (K + 1) scores per cell), so
the budget is for `num_classes` object classes (COCO's 80 unless told).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from ..cube.formula import TinyFormula
from ..cube.solve import macs_of as classifier_macs
from ..cube.twist import Budget, Twister, TwistResult, meet
from ..errors import RubikError
from ..models import ModelSpec
from .model import DetectorSpec, build_detector, detector_macs_params, get_detector_spec
from .task import COCO_CLASSES

RESOLUTION_STEP = 32  # the stride of the backbone's last map
# With 32 px steps, width's channel steps (3 % and more in a narrow backbone) can leave every resolution near the
# formula's over 1 % off the budget; depths within 10 % of the formula's then add or drop a block to land it.
MAX_DEPTH_CHANGE = 0.1
# Candidates are counted on a built detector. Meta tensors (no weights) run every op through Python decompositions,
# 2-3x slower than the CPU for small models; a backbone above this many MACs is counted on meta (no memory, no
# arithmetic).
CPU_COUNT_LIMIT = 1e9


@dataclass
class DetectorTwistResult(TwistResult):
    """A twisted detector: `spec` and `base` are DetectorSpecs; MACs, target and ratio are the whole detector's;
    `backbone` is the cube's result for the backbone (its r, d, w and, with the tiny formula, the GP band)."""

    backbone: TwistResult | None = None
    num_classes: int = COCO_CLASSES

    def __str__(self) -> str:  # the backbone's line (its r, d, w; the detector's MACs), under the detector's name
        line = replace(self.backbone, spec=replace(self.backbone.spec, name=self.spec.name), latency_ms=self.latency_ms)
        return f"{line}; r, d, w of the backbone, MACs of the whole detector for {self.num_classes} classes"

    def to_dict(self) -> dict[str, Any]:
        """{"model": the detector spec, "twist": how it was made}: a JSON file of it is a `--model`."""
        twist = self.backbone.to_dict()["twist"]  # the backbone's multipliers, GP band, phi
        twist.update(base=self.base.name, backbone_base=self.backbone.base.name, num_classes=self.num_classes)
        twist.pop("latency_ms", None)
        if self.latency_ms is not None:
            twist["latency_ms"] = self.latency_ms
        return {"model": self.spec.to_dict(), "twist": twist}


class DetectorTwister:
    """Twists one base detector with one formula: `to_macs`, `to_ratio`, `to_latency` as the cube's Twister.

    `resolution`: the base detector's input size for the user's data (default its own); r scales from it.
    """

    def __init__(self, base: Any = "ssdlite_tinynet_d", method: str = "tiny",
                 formula: TinyFormula | str | None = None, num_classes: int = COCO_CLASSES,
                 resolution: int | None = None):
        self.base = get_detector_spec(base, resolution)
        if self.base.torchvision_reference:
            raise RubikError(f"{self.base.name} is torchvision's reference detector and has no rubik backbone to "
                             "twist; twist a detector on a rubik backbone, e.g. ssdlite_tinynet_d")
        if num_classes < 1:
            raise RubikError(f"a detector needs at least one object class, got num_classes={num_classes}")
        self.num_classes = num_classes
        backbone = replace(self.base.backbone_spec, resolution=self.base.resolution)  # r scales the detector's
        self.twister = Twister(backbone, method, formula, cost=self.macs_of, resolution_step=RESOLUTION_STEP,
                               max_depth_change=MAX_DEPTH_CHANGE, label=self.base.name)
        self.method, self.formula, self.base_macs = method, self.twister.formula, self.twister.base_macs

    def detector_of(self, backbone: ModelSpec, name: str | None = None) -> DetectorSpec:
        """The base detector on `backbone`, at the backbone's resolution."""
        return replace(self.base, name=name or f"{self.base.name}_{backbone.name}", backbone=backbone.to_dict(),
                       resolution=backbone.resolution)

    def macs_of(self, backbone: ModelSpec) -> int:
        """MACs of the whole detector around `backbone`, counted on the built detector."""
        device = "cpu" if classifier_macs(backbone) <= CPU_COUNT_LIMIT else "meta"
        with torch.device(device), torch.random.fork_rng(devices=[]):  # its weights draw from no one's random state
            det = build_detector(self.detector_of(backbone), self.num_classes)
        return detector_macs_params(det)[0]

    def feasible_range(self) -> tuple[float, float]:
        """(smallest, largest) MACs of the detectors this base and formula can be twisted to."""
        return self.twister.feasible_range()

    def _result(self, result: TwistResult, name: str | None) -> DetectorTwistResult:
        name = name or f"{self.base.name}_{self.method}_{result.target_macs / 1e6:.0f}m"
        backbone = replace(result, spec=replace(result.spec, name=f"{name}_backbone"))
        base = {f.name: getattr(result, f.name) for f in fields(TwistResult)}
        base.update(spec=self.detector_of(backbone.spec, name), base=self.base)
        return DetectorTwistResult(**base, backbone=backbone, num_classes=self.num_classes)

    def to_macs(self, target_macs: float, name: str | None = None) -> DetectorTwistResult:
        return self._result(self.twister.to_macs(target_macs), name)

    def to_ratio(self, ratio: float, name: str | None = None) -> DetectorTwistResult:
        return self._result(self.twister.to_ratio(ratio), name)

    def to_latency(self, target_ms: float, measure: Callable[[DetectorSpec], float], name: str | None = None,
                   iterations: int = 7) -> DetectorTwistResult:
        """The largest detector (by MACs) whose latency, `measure(detector spec)` in ms, is within the budget."""
        result = self.twister.to_latency(target_ms, lambda backbone: measure(self.detector_of(backbone)),
                                         iterations=iterations)
        return self._result(result, name)


def twist_detector(base: Any = "ssdlite_tinynet_d", budget: Budget | None = None, method: str = "tiny",
                   formula: str | TinyFormula | None = None, measure: Callable[[DetectorSpec], float] | None = None,
                   name: str | None = None, num_classes: int = COCO_CLASSES,
                   resolution: int | None = None) -> tuple[DetectorTwister, DetectorTwistResult]:
    """One-call twisting of a detector (a name, `ssdlite:BACKBONE`, a spec dict or JSON file, a DetectorSpec) to a
    budget (`cube.twist.budget_of`): (the twister, its result). A latency budget needs `measure`
    (`detector_latency`)."""
    if budget is None:
        raise RubikError("give a budget: MACs (--flops 100M), a ratio (--ratio 0.25) or a latency (--latency 4ms)")
    twister = DetectorTwister(base, method, formula, num_classes, resolution)
    return twister, meet(twister, budget, measure, name)


def latency_graph(num_classes: int = COCO_CLASSES) -> Callable:
    """(detector spec, layout) -> the export graph of that detector (random weights) for `deploy.bench.spec_latency`."""
    from .export import detector_graph

    def graph(spec: DetectorSpec, layout: str | None):
        return detector_graph(build_detector(spec, num_classes), layout)

    return graph


def detector_latency(runtime: str, num_classes: int = COCO_CLASSES, int8: bool = False,
                     runs: int = 50, anchor: DetectorSpec | None = None) -> Callable[[DetectorSpec], float]:
    """detector spec -> median ms (batch 1, one thread) of its backbone, extra layers and head: "torch" (eager), or
    the file `rubik export` writes for "onnxruntime" or "executorch" (int8 when asked); `anchor`: each measured
    against this detector's time (rubik.deploy.bench.spec_latency)."""
    from ..deploy.bench import realistic_batchnorm, spec_latency

    graph = latency_graph(num_classes)
    if runtime != "torch":
        return spec_latency(runtime, runs=runs, graph=graph, int8=int8, anchor=anchor)
    if anchor is not None:
        raise RubikError("a latency measured against another model's needs an exported file: "
                         "--runtime onnxruntime or executorch")

    def eager(spec: DetectorSpec) -> float:
        from ..profile import latency

        g = graph(spec, None)
        return latency(realistic_batchnorm(g.module, preprocess=g.preprocess), spec.resolution, runs=runs)

    return eager

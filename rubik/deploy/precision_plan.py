"""Precision plan: the few layers that stay float so that an int8 file passes its gate, found by sensitivity.

Runtime-agnostic: the core (`find_plan`) sees a runtime only through three callables,

- `quantize(keep_float: frozenset[str]) -> file`: the int8 file with those layers left float
  (ONNX Runtime: node names excluded from `quantize_static`; ExecuTorch: dotted module names the
  XNNPACK quantizer leaves alone), every file made from one shared calibration where the runtime allows;
- `agreement(file) -> float`: top-1 agreement with fp32 on *selection* images (neither the calibration
  images nor the images the gate checks on);
- `passes(file) -> bool`: the gate (`rubik export`'s held-out check with `--max-drop`).

Sensitivity is measured leave-one-out: for each probed layer, the agreement gained when that layer alone
stays float and everything else is int8. This is exactly what keeping the layer float buys in the file
the plan starts from (a layer's error measured in the company of every other layer's, not alone on a
clean fp32 model), it costs what a quantize-one-layer probe costs (one file and one pass over the selection
images per layer), it needs no list of every quantizable operator (the ExecuTorch quantizer works by
module, not by node), and the plan's first step reuses the best probe's file.

The plan: if the all-int8 file passes, nothing is probed and nothing stays float. Otherwise the layers
whose probe gained agreement are added greedily, most sensitive first; a layer is kept only if it raises
the agreement of the plan so far, and the search stops as soon as the gate passes, or at the cap
(`MAX_FLOAT_FRACTION` of the probed layers, at least one). Probes are capped too (`MAX_PROBES`: evenly
spaced over the candidates when there are more), so a deep model costs at most that many files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_PROBES = 96  # leave-one-out files at most: each is one quantized file and one pass over the selection images
MAX_FLOAT_FRACTION = 0.10  # the plan keeps at most this fraction of the probed layers float (at least one)


@dataclass
class PrecisionPlan:
    """What `find_plan` found: the layers kept float (most sensitive first) and what they bought."""

    keep_float: list[str]
    passed: bool  # the gate passes with `keep_float` float (True when the all-int8 file already passed)
    agreement_before: float | None  # the all-int8 file, on the selection images (None: not measured)
    agreement_after: float | None  # the planned file
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> agreement gained kept alone float
    probed: int = 0
    cap: int = 0
    file: object = None  # the planned file (the all-int8 one when the plan is empty or failed)
    reachable: bool = True  # False: the gate fails even with every layer float, so nothing was probed

    @property
    def ran(self) -> bool:
        """The all-int8 file failed the gate (a plan was searched for, or found out of reach)."""
        return bool(self.probed) or not self.reachable

    @property
    def sensitive(self) -> list[str]:
        """The probed layers whose float copy gained agreement, most sensitive first."""
        return [k for k, v in sorted(self.sensitivity.items(), key=lambda kv: -kv[1]) if v > 0]

    def as_dict(self, top: int = 10) -> dict:
        """JSON-able summary (the `top` most sensitive layers only), for a file's metadata."""
        return {"keep_float": self.keep_float if self.passed else [], "tried": [] if self.passed else self.keep_float,
                "passed": self.passed, "reachable": self.reachable, "agreement_before": self.agreement_before,
                "agreement_after": self.agreement_after, "probed": self.probed, "cap": self.cap,
                "sensitivity": {k: round(self.sensitivity[k], 4) for k in self.sensitive[:top]}}

    def describe(self, names: Callable[[str], str] = str) -> str:
        """One line for the user; `names` maps a layer to what the user knows it by."""
        if not self.reachable:
            return "precision plan: not searched, the gate fails even with every layer float (the fp32 file)"
        if not self.probed:
            return "int8 passes as it is: no layer kept float"
        gained = ", ".join(f"{names(k)} (+{self.sensitivity[k]:.1%})" for k in self.keep_float)
        before, after = f"{self.agreement_before:.1%}", f"{self.agreement_after:.1%}"
        if self.passed:
            return (f"precision plan: {len(self.keep_float)} of {self.probed} probed layers kept float: {gained}; "
                    f"top-1 agreement with fp32 on the selection images {before} -> {after}")
        return (f"precision plan failed: with {gained or 'no layer'} kept float (cap {self.cap} of {self.probed} "
                f"probed layers) the gate still fails; selection agreement {before} -> {after}")


def probe_layers(layers: Sequence[str], max_probes: int | None = None) -> list[str]:
    """The layers to probe: all of them, or `max_probes` (default MAX_PROBES) spread evenly over them (first and
    last included)."""
    layers = list(dict.fromkeys(layers))
    max_probes = max_probes or MAX_PROBES
    if len(layers) <= max_probes:
        return layers
    step = (len(layers) - 1) / (max_probes - 1)
    return [layers[round(i * step)] for i in range(max_probes)]


def sensitivity(quantize: Callable[[frozenset[str]], object], agreement: Callable[[object], float],
                layers: Sequence[str], base: float, log=print) -> dict[str, float]:
    """Leave-one-out: agreement(`layer` alone float) - `base` (the all-int8 agreement), for each layer."""
    gains = {}
    for i, layer in enumerate(layers):
        gains[layer] = agreement(quantize(frozenset([layer]))) - base
        if (i + 1) % 16 == 0:
            log(f"precision plan: probed {i + 1} of {len(layers)} layers")
    return gains


def find_plan(quantize: Callable[[frozenset[str]], object], agreement: Callable[[object], float],
              passes: Callable[[object], bool], layers: Sequence[str], *, max_probes: int | None = None,
              max_float: int | None = None, reference: object = None, log=print) -> PrecisionPlan:
    """The fewest of `layers` to keep float so that `passes` holds, most sensitive first (module docstring).

    `quantize(frozenset())` is the all-int8 file; when it passes, the plan is empty and nothing is probed.
    `reference`: the file with every layer float (fp32); when it fails `passes` too (a gate that asks int8
    to beat fp32), no plan can pass, and nothing is probed either.
    """
    base_file = quantize(frozenset())
    if passes(base_file):
        return PrecisionPlan([], True, None, None, file=base_file)
    if reference is not None and not passes(reference):
        return PrecisionPlan([], False, None, None, file=base_file, reachable=False)
    probed = probe_layers(layers, max_probes)
    base = agreement(base_file)
    cap = max_float if max_float is not None else max(1, math.floor(MAX_FLOAT_FRACTION * len(probed)))
    plan = PrecisionPlan([], False, base, base, sensitivity(quantize, agreement, probed, base, log),
                         len(probed), cap, base_file)
    current, best_file = base, base_file
    for layer in plan.sensitive:
        if len(plan.keep_float) >= cap:
            break
        trial = quantize(frozenset([*plan.keep_float, layer]))
        if agreement(trial) <= current:
            continue  # no better in the company of the layers already float: leave it int8
        plan.keep_float.append(layer)
        current, best_file = agreement(trial), trial
        if passes(trial):
            plan.passed = True
            break
    plan.agreement_after = current
    plan.file = best_file if plan.passed else base_file
    return plan


# --- ExecuTorch (.pte): what `rubik export --format executorch --int8` calls ----------------------------------

META_PLAN = "rubik.precision_plan"  # JSON in a .pte's sidecar: the plan (`PrecisionPlan.as_dict`) and its ms
PTE_MAX_PROBES = 24  # each .pte probe is a whole PT2E calibration and XNNPACK lowering, not a graph rewrite


def executorch_layers(module) -> list[str]:
    """The dotted names (`named_modules`) of a graph's convolutions and linear layers: what the XNNPACK
    quantizer's per-module config can leave float."""
    from torch import nn

    return [name for name, m in module.named_modules() if name and isinstance(m, (nn.Conv2d, nn.Linear))]


def export_executorch_planned(graph, path, fp32_path, gate: Callable[[object], bool], *, calib_images: list,
                              select_images: list | None, calib_n: int = 256, batch: int = 1, threads: int = 1,
                              log=print):
    """`executorch.write_pte(graph, ..., keep_float=...)` with the precision plan: the int8 .pte at `path`, with the
    fewest modules float that make it pass `gate` (the held-out check), ranked leave-one-out by top-1 agreement
    with the fp32 .pte at `fp32_path` on `select_images`. Returns (ExecuTorchExport, the plan's summary, {} when
    the all-int8 file passed). The chosen file is copied from its probe, not lowered again."""
    import dataclasses
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from ..timing import median_ms
    from .executorch import write_pte
    from .export import save_file
    from .metadata import write_sidecar
    from .quantize import Agreement
    from .runtime import open_model, sidecar_path

    options = dict(batch=batch, calib_images=calib_images, calib_n=calib_n)
    with tempfile.TemporaryDirectory(prefix="rubik-pte-plan-") as tmp:
        made: dict[frozenset[str], object] = {}  # keep_float -> ExecuTorchExport

        def quantize(keep: frozenset[str]) -> Path:
            if keep not in made:
                made[keep] = write_pte(graph, Path(tmp) / f"int8_{len(made)}.pte", keep_float=sorted(keep), **options)
            return made[keep].path

        plan = find_plan(quantize, Agreement(Path(fp32_path), select_images, threads), gate,
                         executorch_layers(graph.module), max_probes=PTE_MAX_PROBES, reference=Path(fp32_path),
                         log=log)
        summary = plan.as_dict() if plan.ran else {}
        if plan.passed and plan.keep_float:
            x = graph.preprocess(select_images[:batch])
            runs = {k: open_model(p, threads) for k, p in
                    {"fp32": fp32_path, "int8": quantize(frozenset()), "plan": plan.file}.items()}
            ms = median_ms({k: (lambda m=m: m.run(x)) for k, m in runs.items()}, runs=30, warmup=5)
            summary["ms"] = {k: round(v, 4) for k, v in ms.items()}
        if summary:
            cost = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("ms", {}).items())
            log(plan.describe() + (f"; median ms {cost}" if cost else ""))
        # the chosen file as it was made (lowering is not repeated), its sidecar with the plan added
        chosen = made[frozenset(summary.get("keep_float", []))]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(path, lambda p: shutil.copyfile(chosen.path, p))
        meta = json.loads(sidecar_path(chosen.path).read_text())
        write_sidecar(path, {**meta, **({META_PLAN: json.dumps(summary)} if summary else {})})
        result = dataclasses.replace(chosen, path=path)
    return result, summary

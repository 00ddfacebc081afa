"""PyTorch -> ExecuTorch `.pte` lowered to XNNPACK (the CPU backend Android and iOS apps use), fp32 or int8.

One adapter over the deploy core: the module is exported with `torch.export`, int8 is PT2E static
quantization with ExecuTorch's XNNPACK quantizer (per-channel symmetric int8 weights, int8
activations calibrated on real images), and the whole graph is lowered with the XNNPACK partitioner.
Any operator the partitioner leaves outside the delegate runs in ExecuTorch's portable kernels (slow)
and is reported (`ExecuTorchExport.outside`). Preprocessing, class names and the input shape go to
`model.pte.json` beside the file (`metadata.write_sidecar`, the same entries ONNX files carry), which
`runtime.Classifier` reads.

`write_pte` takes any task's `export.Graph` (a module with tensor outputs), so a detector's raw SSD
outputs (rubik.detect.export) lower the same way as a classifier's network (`export_executorch`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import RubikError
from .export import Graph, network_graph, save_file
from .metadata import write_sidecar
from .runtime import META_PRECISION
from .xnnpack_int8 import ActivationCounts, delegate_ops, make_quantizer, partitioner

META_OUTSIDE = "rubik.outside_delegate"  # JSON list of operators XNNPACK did not take (run by portable kernels)
META_INPUT_SHAPE = "rubik.input_shape"  # JSON: the static input shape of a .pte
META_OUTPUTS = "rubik.outputs"  # JSON list of output names
META_INT8 = "rubik.int8"  # JSON: the int8 activations, float operators inside the delegate, modules kept float
DELEGATE_OPS = ("executorch_call_delegate", "getitem")  # what a fully delegated graph's top level calls


class ExecuTorchError(RubikError):
    """A model or operator ExecuTorch cannot export or run (a one-line, user-facing message)."""


@dataclass
class ExecuTorchExport:
    path: Path
    precision: str
    outside: list[str] = field(default_factory=list)  # operators left to portable kernels
    calib_images: int = 0
    activations: ActivationCounts | None = None  # int8: SiLUs, sigmoid gates and hard-swishes made int8
    float_inside: dict[str, int] = field(default_factory=dict)  # int8: float operators inside the delegate
    keep_float: list[str] = field(default_factory=list)  # int8: modules left float on purpose

    def __str__(self) -> str:
        where = "one XNNPACK-delegated graph" if not self.outside else \
            f"XNNPACK, with {len(self.outside)} operator(s) outside the delegate: {', '.join(self.outside)}"
        return f"wrote {self.path} (ExecuTorch {self.precision}, {where})"

    def activation_report(self) -> str:
        """One line on what int8 did to the activations ('' for fp32)."""
        if self.activations is None:
            return ""
        a = self.activations
        floats = ", ".join(f"{op.removeprefix('XNN')} x{n}" for op, n in self.float_inside.items()) or "none"
        kept = f" (layers kept float: {', '.join(self.keep_float)})" if self.keep_float else ""
        return (f"int8 activations in XNNPACK: {a.silu} SiLU, {a.gates} sigmoid gate(s) with their multiplies, "
                f"{a.hardswish} hard-swish; float operators inside the delegate: {floats}{kept}")


def _available() -> None:
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise ExecuTorchError("--format executorch needs the executorch package: pip install 'rubik-nets[phone]' "
                              "(executorch==1.5.1)") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:240]


@contextlib.contextmanager
def _quiet():
    """ExecuTorch and torch.export log and warn at length while lowering; the user sees rubik's summary."""
    loggers = [logging.getLogger(n) for n in ("torch", "executorch", "torchao")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _outside_delegate(edge) -> list[str]:
    """Operators the top-level graph still calls itself (not through the XNNPACK delegate)."""
    graph = edge.exported_program().graph_module.graph
    ops = [str(getattr(n.target, "__name__", n.target)) for n in graph.nodes if n.op == "call_function"]
    return sorted({op for op in ops if not op.startswith(DELEGATE_OPS)})


def quantize_pt2e(module: nn.Module, example: torch.Tensor, batches: Iterable[torch.Tensor],
                  keep_float: Collection[str] = (), activations: bool = True) -> tuple[nn.Module, ActivationCounts]:
    """PT2E static int8 with ExecuTorch's XNNPACK quantizer and (unless `activations` is False: ExecuTorch's
    quantizer as it is) rubik's int8 activations (`xnnpack_int8`), observers calibrated on `batches`; the
    modules named in `keep_float` stay float. Returns the quantized module and the activations it quantized."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module, (example,), strict=False).module()
    quantizer, act_quantizer = make_quantizer(keep_float, activations)
    prepared = prepare_pt2e(graph, quantizer)
    n = 0
    with torch.no_grad():
        for x in batches:
            prepared(x)
            n += 1
    if not n:
        raise ExecuTorchError("no calibration images for int8: pass --calib DIR or 'digits'")
    return convert_pt2e(prepared), act_quantizer.counts


@dataclass
class Lowered:
    path: Path
    outside: list[str]  # operators left to portable kernels
    activations: ActivationCounts | None = None  # int8 only: what the activation quantizer took
    float_inside: dict[str, int] = field(default_factory=dict)  # int8 only: float operators inside the delegate


def lower(module: nn.Module, example: torch.Tensor, path: str | Path,
          calib_batches: Iterable[torch.Tensor] | None = None,
          keep_float: Collection[str] = (), activations: bool = True) -> tuple[Path, list[str]]:
    """Export `module` at `example`'s (static) shape, quantize it when `calib_batches` is given (but the
    modules in `keep_float`), lower it to XNNPACK and write the .pte (atomically). Returns the path and the
    operators left outside the delegate. `activations=False`: ExecuTorch's own quantizer and partitioner
    as they are (its out-of-the-box int8, with float activations; for comparison)."""
    lowered = lower_report(module, example, path, calib_batches, keep_float, activations)
    return lowered.path, lowered.outside


def lower_report(module: nn.Module, example: torch.Tensor, path: str | Path,
                 calib_batches: Iterable[torch.Tensor] | None = None,
                 keep_float: Collection[str] = (), activations: bool = True) -> Lowered:
    """`lower`, returning also what int8 did to the activations and which operators stayed float."""
    _available()
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    module = module.eval()
    counts = None
    with _quiet():
        try:
            if calib_batches is not None:
                module, counts = quantize_pt2e(module, example, calib_batches, keep_float, activations)
            program = torch.export.export(module, (example,), strict=False)
            edge = to_edge_transform_and_lower(program, partitioner=[partitioner(activations)])
            outside = _outside_delegate(edge)
            buffer = edge.to_executorch().buffer
        except ExecuTorchError:
            raise
        except Exception as e:
            raise ExecuTorchError(f"ExecuTorch cannot export {type(module).__name__}: {type(e).__name__}: "
                                  f"{_first_line(e)}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(path, lambda p: p.write_bytes(buffer))
    float_inside = delegate_ops(path).float_compute() if counts is not None else {}
    return Lowered(path, outside, counts, float_inside)


def write_pte(graph: Graph, path: str | Path, *, batch: int = 1, calib_images: list | None = None,
              calib_n: int = 256, keep_float: Collection[str] = ()) -> ExecuTorchExport:
    """Write `graph` as an XNNPACK-delegated .pte (int8 when `calib_images` are given) and its metadata beside it
    (`graph.metadata`, plus the input shape, output names and what the delegate left out).

    `keep_float`: module names (of `graph.module`) that int8 leaves float (a precision plan).
    """
    pre = graph.preprocess
    example = torch.randn(batch, 3, pre.resolution, pre.resolution)
    batches = None
    if calib_images is not None:
        images = list(calib_images[:calib_n])
        if len(images) < batch:
            raise ExecuTorchError(f"{len(images)} calibration image(s) for a fixed batch of {batch}")
        batches = (torch.from_numpy(pre(images[i:i + batch])) for i in range(0, len(images) - batch + 1, batch))
    lowered = lower_report(graph.module, example, path, batches, keep_float)
    precision = "int8" if calib_images is not None else "fp32"
    meta = {**graph.metadata, META_PRECISION: precision, META_INPUT_SHAPE: json.dumps(list(example.shape)),
            META_OUTPUTS: json.dumps(list(graph.outputs)), META_OUTSIDE: json.dumps(lowered.outside)}
    if lowered.activations is not None:
        meta[META_INT8] = json.dumps({**asdict(lowered.activations), "float_inside_delegate": lowered.float_inside,
                                      "keep_float": list(keep_float)})
    write_sidecar(lowered.path, meta)
    return ExecuTorchExport(lowered.path, precision, lowered.outside,
                            len(calib_images[:calib_n]) if calib_images else 0, lowered.activations,
                            lowered.float_inside, list(keep_float))


def export_executorch(model: nn.Module, path: str | Path, *, batch: int = 1, resolution: int | None = None,
                      calib_images: list | None = None, calib_n: int = 256, classes: list[str] | None = None,
                      keep_float: Collection[str] = ()) -> ExecuTorchExport:
    """Write a rubik network as a .pte (`export.network_graph` through `write_pte`; no Ghost layout: that is
    ONNX Runtime's x86 float layout), int8 when `calib_images` are given."""
    graph = network_graph(model, resolution=resolution, layout=None, classes=classes)
    return write_pte(graph, path, batch=batch, calib_images=calib_images, calib_n=calib_n, keep_float=keep_float)

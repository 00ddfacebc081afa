"""The export core: a task's graph -> a verified file, for every task and format.

A task builds its `Graph` (the module to trace, its outputs and metadata: a classifier's network from
`network_graph`, a detector's raw SSD outputs from rubik.detect.export); the core writes it as ONNX
(`write_onnx`: BatchNorm folded, pooling ORT can run in int8, metadata in the file) or as an ExecuTorch
.pte (`executorch.write_pte`, metadata beside it), every file atomically (`save_file`),
and the task checks the file against PyTorch in its runtime (a classifier with `verify_file`).
`deploy.pipeline.export` runs the whole chain, int8 included. The files are portable (no
hardware-specific ORT layouts): any ONNX runtime, or a converter such as MindSpore Lite's, can take them.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RubikError
from ..profile import deployed
from .runtime import Preprocess, RuntimeModelError
from .runtime import open_session as _open_session

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = 18
EXPORT_ADVICE = "a file that was there before is intact: free some space and export again"


class ExportMismatchError(RubikError):
    """The exported file computes something other than the PyTorch model."""


class ModelFileError(RubikError):
    """An ONNX file that is missing, corrupt, or not rubik's."""


def open_session(path: str | Path, threads: int = 1):
    """runtime.open_session, with its error as a RubikError (the runtime itself must not import rubik)."""
    try:
        return _open_session(path, threads)
    except RuntimeModelError as e:
        raise ModelFileError(str(e)) from None


def save_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write an exported file (model, sidecar) as `rubik.files.atomic_write` does: whole or not at all."""
    from ..files import atomic_write

    atomic_write(path, write, EXPORT_ADVICE)


def preprocess_of(model: nn.Module, resolution: int | None = None) -> Preprocess:
    spec = getattr(model, "spec", None)
    if spec is None:
        if resolution is None:
            raise RubikError("the model carries no spec; pass resolution= to export it")
        return Preprocess(resolution)
    pre = spec.preprocess
    return Preprocess(resolution or spec.resolution, pre.crop_pct, pre.interpolation, tuple(pre.mean), tuple(pre.std))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every Conv -> BatchNorm pair folded into the convolution."""
    import copy

    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).eval()
    try:
        return fuse(model)  # torch's own Conv+BN folding, on an fx trace of the model
    except Exception:  # a model fx cannot trace: ORT folds Conv+BN when it loads the file anyway
        return model


def pool_to_global_average(graph) -> int:
    """Rewrite ReduceMean over H and W (keepdims) as GlobalAveragePool; returns how many were rewritten.

    Why: PyTorch's `x.mean((2, 3))` and AdaptiveAvgPool2d(1) export as ReduceMean, which ONNX Runtime
    runs in float between a DequantizeLinear and a QuantizeLinear in an int8 model, and which breaks its
    NHWC int8 layout. GlobalAveragePool has an int8 NHWC kernel: squeeze-excite blocks get ~3x faster in
    int8, and the float model loses a layout reorder per block. Same arithmetic.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    rank = {}
    for v in list(graph.value_info) + list(graph.input) + list(graph.output):
        if v.type.tensor_type.HasField("shape"):
            rank[v.name] = len(v.type.tensor_type.shape.dim)
    done = 0
    for node in graph.node:
        if node.op_type != "ReduceMean" or rank.get(node.input[0], 4) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            axes = inits.get(node.input[1])
        if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3] or attrs.get("keepdims", 1) != 1:
            continue
        del node.input[1:]
        del node.attribute[:]
        node.op_type = "GlobalAveragePool"
        done += 1
    used = {name for node in graph.node for name in node.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:  # the axes constants of the rewritten ReduceMeans
        graph.initializer.remove(init)
    return done


@dataclass
class Graph:
    """What the export core writes: a module from a batch of images (Nx3xRxR float) to named tensors, and the
    metadata that travels with it. A task builds its graph (a classifier: the network; a detector: its raw SSD
    outputs); the core traces it, writes it atomically and the task verifies it."""

    module: nn.Module  # eval mode, in its deployed layout (BatchNorm is folded by the ONNX writer)
    preprocess: Preprocess
    metadata: dict[str, str]  # `metadata.entries(...)`, plus the task's own entries
    outputs: tuple[str, ...] = (OUTPUT_NAME,)
    name: str = "model"  # for messages


def network_graph(model: nn.Module, *, resolution: int | None = None, layout: str | int | None = "fp32",
                  classes: list[str] | None = None) -> Graph:
    """The graph of a rubik network (image -> logits): re-parameterised branches folded (GhostNetV3, as
    deployed), a GhostNet v1 in the Ghost layout for `layout` (`layout.network_layout`)."""
    from ..profile import count
    from .layout import network_layout
    from .metadata import entries

    pre = preprocess_of(model, resolution)
    module = network_layout(deployed(model), layout).eval()
    macs, _ = count(model, pre.resolution)
    spec = getattr(model, "spec", None)
    return Graph(module, pre, entries(model, pre, "fp32", classes, macs=macs), (OUTPUT_NAME,),
                 spec.name if spec is not None else type(model).__name__)


def _trace(module: nn.Module, example: torch.Tensor, path: Path, graph: Graph, opset: int,
           dynamic_shapes) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as log:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=list(graph.outputs),
                              opset_version=opset, dynamo=True, external_data=False, dynamic_shapes=dynamic_shapes,
                              verbose=False)
        except Exception as e:
            tail = " ".join(log.getvalue().split()[-30:])
            raise RubikError(f"ONNX export of {graph.name} failed: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]} {tail[:200]}") from e


def write_onnx(graph: Graph, path: str | Path, *, batch: int = 1, dynamic_batch: bool = False,
               opset: int = DEFAULT_OPSET) -> Path:
    """Write `graph` as an ONNX file, atomically: BatchNorm folded, input `input`, outputs as `graph.outputs`,
    ReduceMean pooling as GlobalAveragePool (`pool_to_global_average`), `graph.metadata` in the file.

    `dynamic_batch` leaves the batch size free; otherwise it is fixed to `batch`, which lets ONNX Runtime plan
    memory once."""
    import onnx

    from .metadata import set_onnx_metadata

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    r = graph.preprocess.resolution
    # torch.export specialises a dimension of size 1, so trace a dynamic batch with 2.
    example = torch.randn(2 if dynamic_batch else batch, 3, r, r)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="rubik-onnx-") as tmp:  # a failed trace leaves nothing behind
        traced = Path(tmp) / path.name
        _trace(fold_batchnorm(graph.module), example, traced, graph, opset, dynamic_shapes)
        onnx_model = onnx.load(str(traced))
    pool_to_global_average(onnx_model.graph)
    set_onnx_metadata(onnx_model, graph.metadata)
    onnx_model.producer_name = "rubik"
    onnx.checker.check_model(onnx_model)
    save_file(path, lambda p: onnx.save(onnx_model, str(p)))
    return path


def export_onnx(model: nn.Module, path: str | Path, *, dynamic_batch: bool = False, batch: int = 1,
                resolution: int | None = None, classes: list[str] | None = None,
                opset: int = DEFAULT_OPSET, layout: str | int | None = "fp32") -> Path:
    """Write a rubik network as an ONNX file (`network_graph` through `write_onnx`): input `input` (Nx3xRxR
    float32), output `logits`, the preprocessing (resolution, crop, mean/std) and class names in the metadata,
    so `rubik.deploy.runtime.Classifier` needs nothing else.

    `layout`: a GhostNet v1 runs in the Ghost layout (`deploy.layout`, 20 % faster in ONNX Runtime's float
    kernels on x86): "fp32" every bottleneck, "int8" those the int8 path keeps in float, a number that many,
    None none.
    """
    graph = network_graph(model, resolution=resolution, layout=layout, classes=classes)
    return write_onnx(graph, path, batch=batch, dynamic_batch=dynamic_batch, opset=opset)


@dataclass
class Verification:
    """PyTorch against ONNX Runtime on the same real inputs."""

    n: int
    max_abs_diff: float
    tolerance: float
    top1_agreement: float  # fraction of inputs whose arg-max agrees

    def __str__(self) -> str:
        return (f"verified on {self.n} real images: max |logit diff| {self.max_abs_diff:.2e} "
                f"(tolerance {self.tolerance:.1e}), top-1 agreement {self.top1_agreement:.1%}")


def verify_file(model: nn.Module, path: str | Path, images: list[Any] | None = None, n: int = 16,
                rtol: float = 1e-3, atol: float = 1e-4, threads: int = 1) -> Verification:
    """Run the file in its runtime (.onnx: ONNX Runtime, .pte: ExecuTorch) and the model in PyTorch on the
    same real images; raise on a mismatch.

    Tolerance: atol + rtol x the largest |logit|, so it scales with the logits (fp32 reassociation in
    the folded, fused graph moves logits by ~1e-6 relative). Also fails when a top-1 differs by more than
    the tolerance can explain.
    """
    from .runtime import Classifier

    try:
        clf = Classifier(path, threads)
    except RuntimeModelError as e:
        raise ModelFileError(str(e)) from None
    if images is None:
        from .images import sample_photos

        images = sample_photos(n)
    x = clf.preprocess(list(images[:n]))
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x)).float().numpy()
    got = clf.logits(x)
    diff = float(np.abs(got - ref).max())
    tol = atol + rtol * float(np.abs(ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    result = Verification(len(x), diff, tol, agree)
    if not np.isfinite(diff) or diff > tol:
        raise ExportMismatchError(f"exported {path} does not match PyTorch: {result}; the exporter or the runtime "
                                  "changed the arithmetic: report it with the model spec")
    # Near-ties may flip within tolerance; a flip with a clear margin means a real mismatch.
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
    if np.any(clear & (got.argmax(1) != ref.argmax(1))):
        raise ExportMismatchError(f"exported {path} disagrees with PyTorch on a clear top-1: {result}")
    return result


verify_onnx = verify_file  # the name ONNX callers know

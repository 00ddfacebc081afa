"""PyTorch -> ONNX: BatchNorm folded, pooling ORT can run in int8, preprocessing in the metadata, verified.

`export_onnx` writes a portable file (no hardware-specific ORT layouts): any ONNX runtime, or a
converter such as MindSpore Lite's, can take it. `verify_onnx` runs it in ONNX Runtime against
PyTorch on real images and raises when the two disagree beyond tolerance.
"""

from __future__ import annotations

import contextlib
import io
import warnings
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


def ghost_split(model: nn.Module, split: str | int | None) -> nn.Module:
    """`model` itself, or for a GhostNet its split equivalent as `export_onnx`'s `split` asks."""
    from ..models.ghost import GhostNet
    from .layout import int8_split_blocks, split_ghostnet

    if split is not None and split not in ("fp32", "int8") and not isinstance(split, int):
        raise RubikError(f"split must be 'fp32', 'int8', a number of blocks or None, got {split!r}")
    if split is None or not isinstance(model, GhostNet):
        return model
    blocks = {"fp32": None, "int8": int8_split_blocks(model)}.get(split, split)
    return split_ghostnet(model, blocks=blocks)


def set_metadata(onnx_model, **entries: str) -> None:
    """Merge entries into an ONNX model's metadata (`metadata.set_onnx_metadata`, the one writer)."""
    from .metadata import set_onnx_metadata

    set_onnx_metadata(onnx_model, entries)


def export_onnx(model: nn.Module, path: str | Path, *, dynamic_batch: bool = False, batch: int = 1,
                resolution: int | None = None, classes: list[str] | None = None,
                opset: int = DEFAULT_OPSET, split: str | int | None = "fp32") -> Path:
    """Write `model` as an ONNX file: BatchNorm folded, input `input` (Nx3xRxR float32), output `logits`.

    The preprocessing (resolution, crop, mean/std) and class names go into the file's metadata, so
    `rubik.deploy.runtime.Classifier` needs nothing else. `dynamic_batch` leaves the batch size free;
    otherwise it is fixed to `batch`, which lets ONNX Runtime plan memory once.
    `split` rewrites a GhostNet so that its Ghost halves are never concatenated (`layout.split_ghostnet`,
    the same function, 20 % faster in ONNX Runtime's float kernels on x86): "fp32" splits every bottleneck,
    "int8" only those the int8 path keeps in float (`layout.int8_split_blocks`), a number that many, None none.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pre = preprocess_of(model, resolution)
    # A model with train-time re-parameterisable branches (GhostNetV3) is exported folded, as deployed.
    folded = fold_batchnorm(ghost_split(deployed(model), split))
    # torch.export specialises a dimension of size 1, so trace a dynamic batch with 2.
    example = torch.randn(2 if dynamic_batch else batch, 3, pre.resolution, pre.resolution)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as log:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(folded, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=True, external_data=False, dynamic_shapes=dynamic_shapes,
                              verbose=False)
        except Exception as e:
            tail = " ".join(log.getvalue().split()[-30:])
            raise RubikError(f"ONNX export of {getattr(model, 'spec', model).__class__.__name__} failed: "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:200]} {tail[:200]}") from e
    onnx_model = onnx.load(str(path))
    pool_to_global_average(onnx_model.graph)
    from .metadata import entries, set_onnx_metadata

    set_onnx_metadata(onnx_model, entries(model, pre, "fp32", classes))
    onnx_model.producer_name = "rubik"
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    return path


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

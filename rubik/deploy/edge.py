"""ncnn for phones (ARM NEON, Vulkan GPUs): converted with pnnx from the verified ONNX export.

Why ncnn: both the converter (`pnnx`) and the runtime (`ncnn`, to verify here) are small wheels on
PyPI that need nothing else; ncnn runs on Android/iOS/ARM Linux CPUs and Vulkan GPUs, and pnnx
maps SiLU, HardSigmoid and squeeze-excite onto ncnn's fused layers. LiteRT's converter
(litert-torch) pulls in TensorFlow, hundreds of MB more. MindSpore Lite's converter takes the ONNX
file directly (README: `converter_lite --fmk=ONNX`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RubikError
from .export import ExportMismatchError, Verification, export_onnx, preprocess_of, save_file


@dataclass
class NcnnExport:
    param: Path
    bin: Path
    verification: Verification


def _pnnx() -> str:
    try:
        import pnnx
    except ImportError:
        raise RubikError("the ncnn export needs the pnnx converter and the ncnn runtime: "
                         "pip install pnnx ncnn") from None
    return pnnx.EXEC_PATH


def ncnn_logits(param: Path, weights: Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an ncnn model on an Nx3xRxR batch, one image at a time (ncnn's Mat is one image)."""
    try:
        import ncnn
    except ImportError:
        raise RubikError("verifying an ncnn export needs the ncnn runtime: pip install ncnn") from None
    net = ncnn.Net()
    net.opt.num_threads = threads
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise RubikError(f"ncnn could not load {param} / {weights}; they may be truncated: export again")
    inp, out = net.input_names()[0], net.output_names()[0]
    rows = []
    for image in x:
        ex = net.create_extractor()
        ex.input(inp, ncnn.Mat(np.ascontiguousarray(image)).clone())
        _, y = ex.extract(out)
        rows.append(np.array(y).reshape(-1))
    return np.stack(rows)


def export_ncnn(model: nn.Module, out: str | Path, images: list[Any] | None = None, threads: int = 1,
                fp16: bool = False, rtol: float = 1e-2) -> NcnnExport:
    """Write OUT.ncnn.param / OUT.ncnn.bin and check them against PyTorch on real images.

    `fp16` stores weights in half precision (half the file; ncnn computes in fp16 on ARM anyway).
    Tolerance is looser than ONNX's: ncnn uses fast approximations of exp in sigmoid/SiLU.
    """
    exe = _pnnx()
    out = Path(out)
    stem = out.name.removesuffix(".param").removesuffix(".ncnn").removesuffix(".onnx")
    pre = preprocess_of(model)
    with tempfile.TemporaryDirectory(prefix="rubik-ncnn-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / f"{stem}.onnx", batch=1, layout=None)
        r = pre.resolution
        proc = subprocess.run([exe, onnx_path.name, f"inputshape=[1,3,{r},{r}]", f"fp16={int(fp16)}"], cwd=tmp,
                              capture_output=True, text=True, timeout=600)
        param, weights = Path(tmp) / f"{stem}.ncnn.param", Path(tmp) / f"{stem}.ncnn.bin"
        if proc.returncode != 0 or not param.is_file():
            tail = " ".join((proc.stderr or proc.stdout).split()[-40:])
            raise RubikError(f"pnnx could not convert {model.spec.name} to ncnn (exit {proc.returncode}): {tail[:300]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        dest_param, dest_bin = out.parent / f"{stem}.ncnn.param", out.parent / f"{stem}.ncnn.bin"
        save_file(dest_param, lambda p: shutil.copyfile(param, p))
        save_file(dest_bin, lambda p: shutil.copyfile(weights, p))
    if images is None:
        from .images import sample_photos

        images = sample_photos(16)
    x = pre(list(images[:16]))
    with torch.inference_mode():
        ref = model.eval()(torch.from_numpy(x)).float().numpy()
    got = ncnn_logits(dest_param, dest_bin, x, threads)
    if got.shape != ref.shape:
        raise ExportMismatchError(f"ncnn model gives {got.shape[1]} outputs, PyTorch {ref.shape[1]}")
    diff = float(np.abs(got - ref).max())
    tol = 1e-4 + rtol * float(np.abs(ref).max())
    check = Verification(len(x), diff, tol, float((got.argmax(1) == ref.argmax(1)).mean()))
    if not np.isfinite(diff) or diff > tol:
        raise ExportMismatchError(f"ncnn export {dest_param} does not match PyTorch: {check}")
    return NcnnExport(dest_param, dest_bin, check)

"""`export`: a trained model -> verified file(s), fp32 and int8, ONNX, ExecuTorch or ncnn, whatever its task.

The chain is the same for every task: the fp32 file (written by the export core, checked against PyTorch),
then with `int8` the calibration images, the held-out images the int8 file is checked on and the images
int8's choices are measured on (three disjoint samples), the int8 file (ONNX Runtime's quantizer, or
ExecuTorch's XNNPACK one) with a precision plan where the held-out gate fails, and the gate itself
(`max_drop`). What differs comes from the task's export adapter (`TaskExport`): its graph, its check of a
file, its images and its gate. `rubik.classify.export.ClassifierExport` and
`rubik.detect.export.DetectorExport` are the two; the command or the API picks one, never this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from ..errors import RubikError
from .export import Graph
from .images import LabelledImages

FORMATS = {"onnx": ".onnx", "executorch": ".pte", "ncnn": ""}
RUNTIMES = {"onnx": "ONNX Runtime", "executorch": "ExecuTorch"}
VERIFY_N = 16  # images the fp32 file is checked on against PyTorch
SELECT_N = 256  # images int8's choices (calibration method, boundary, precision plan) are measured on


class TaskExport(Protocol):
    """What a task adds to the export pipeline: its graph, its check of a file, its images and its int8 gate."""

    model: nn.Module  # the PyTorch model, in eval mode
    formats: tuple[str, ...]  # the formats its graph can be written to
    selects: bool  # whether int8's choices can be measured on selection images (by top-1 agreement with fp32)

    def graph(self, layout: str | None, resolution: int | None) -> Graph:
        """Its graph, a GhostNet backbone in the Ghost layout for `layout` ("fp32", "int8" or None)."""

    def verify(self, path: Path, images: list | None, threads: int) -> Any:
        """Check the file against PyTorch in its runtime; raise on a mismatch; str() says how it matched."""

    def images(self, source: str, split: str) -> LabelledImages:
        """The images of a data source ("train": training images, "test": held-out ones)."""

    def gate(self, fp32_path: Path, held: LabelledImages, max_drop: float, threads: int) -> Any:
        """The held-out check of an int8 file against fp32, as `quantize.Int8Gate` (`check`, `drop`, call)."""


@dataclass
class ExportResult:
    """What `export` wrote: the file asked for (int8 when int8), every file, the checks, and its report."""

    path: Path
    files: list[Path]
    verification: Any  # the fp32 file against PyTorch
    int8: Any = None  # the int8 file against fp32 on held-out images (`.drop`: the accuracy points it lost)
    report: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(self.report)


def export(target: TaskExport, output: str | Path, *, format: str = "onnx", int8: bool = False,
           calib: str | None = None, calib_n: int = 256, eval: str | None = None, eval_n: int = 1000,
           max_drop: float = 1.0, batch: int = 1, resolution: int | None = None, opset: int = 18,
           dynamic_batch: bool = False, boundary: str | int = "auto", calib_method: str = "auto",
           images: str | None = None, threads: int = 1, log: Callable[[str], None] | None = None) -> ExportResult:
    """Write `target`'s model to `output` (`rubik export`; the keywords are its flags): the fp32 file checked
    against PyTorch, and with `int8` the int8 file at `output`, its fp32 source beside it (m.fp32.onnx),
    checked on held-out images and refused (`quantize.Int8GateError`) when it loses more than `max_drop` points.

    `images`/`calib`: a data source the fp32 check runs on (default: sample photos); `calib`: where the int8
    file is calibrated, checked (its held-out split, or `eval`) and tuned. `log` gets each report line as it
    comes (the command prints them).
    """
    _check_options(target, format, int8, calib, boundary, calib_method, dynamic_batch)
    result = ExportResult(Path(output), [], None)

    def say(line: str) -> None:
        result.report.append(line)
        if log is not None:
            log(line)

    verify_images = None
    if images or calib:  # any real images: this checks arithmetic
        source = target.images(images or calib, "train")
        verify_images = source.subset(_sample(source, VERIFY_N, seed=2)).images
    if format == "ncnn":
        return _ncnn(target, result, verify_images, threads, say)
    suffix = FORMATS[format]
    out = result.path
    fp32 = out.with_name(out.name.removesuffix(suffix) + ".fp32" + suffix) if int8 else out
    # the Ghost layout is ONNX Runtime's (x86 float kernels); int8 starts from a file in it only where it stays float
    graph = target.graph(None if format == "executorch" else "int8" if int8 else "fp32", resolution)
    _write_fp32(graph, fp32, format, batch, dynamic_batch, opset, say)
    result.files.append(fp32)
    result.verification = target.verify(fp32, verify_images, threads)
    say(f"{RUNTIMES[format]} vs PyTorch: {result.verification}")
    if int8:
        _write_int8(target, graph, fp32, result, format=format, calib=calib, calib_n=calib_n, eval=eval,
                    eval_n=eval_n, max_drop=max_drop, batch=batch, boundary=boundary, calib_method=calib_method,
                    threads=threads, say=say)
    return result


def _check_options(target: TaskExport, format: str, int8: bool, calib: str | None, boundary, calib_method: str,
                   dynamic_batch: bool) -> None:
    if format not in FORMATS:
        raise RubikError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if format not in target.formats:
        raise RubikError(f"{target.model.spec.name} exports to {' or '.join(target.formats)}, not {format} (ncnn "
                         "takes a model whose one output is the logits)")
    if int8 and not calib:
        raise RubikError("--int8 needs calibration images: --calib DIR (images like the training data) or 'digits'")
    if format == "ncnn" and int8:
        raise RubikError("--int8 is for --format onnx or executorch; ncnn models are quantized with ncnn's own tools")
    if format == "executorch" and (boundary != "auto" or calib_method != "auto" or dynamic_batch):
        raise RubikError("--boundary, --calib-method and --dynamic-batch are for --format onnx; an ExecuTorch file "
                         "has a static batch and its int8 is the XNNPACK quantizer's (every layer int8 unless the "
                         "precision plan keeps some float)")


def _sample(images: LabelledImages, n: int, seed: int, exclude: set[int] | None = None) -> list[int]:
    from .images import sample

    return sample(images, n, seed=seed, exclude=exclude)


def _ncnn(target: TaskExport, result: ExportResult, images: list | None, threads: int, say) -> ExportResult:
    from .edge import export_ncnn

    ncnn = export_ncnn(target.model, result.path, images=images, threads=threads)
    result.files += [ncnn.param, ncnn.bin]
    result.path, result.verification = ncnn.param, ncnn.verification
    say(f"wrote {ncnn.param} and {ncnn.bin}")
    say(f"ncnn {ncnn.verification}")
    return result


def _write_fp32(graph: Graph, path: Path, format: str, batch: int, dynamic_batch: bool, opset: int, say) -> None:
    if format == "executorch":
        from .executorch import write_pte

        say(str(write_pte(graph, path, batch=batch)))
        return
    from .export import write_onnx

    write_onnx(graph, path, batch=batch, dynamic_batch=dynamic_batch, opset=opset)
    say(f"wrote {path} ({graph.name}, fp32, BatchNorm folded, {'dynamic' if dynamic_batch else batch} batch)")


@dataclass
class Int8Images:
    """Three disjoint samples: calibration, the held-out check (the gate), and int8's choices (None: by speed)."""

    calib: list
    held: LabelledImages
    select: list | None


def int8_images(target: TaskExport, calib: str, calib_n: int, eval: str | None, eval_n: int) -> Int8Images:
    """Calibration images from `calib`'s training images; held-out ones from `eval`, else from `calib`'s held-out
    split (never an image calibrated on); selection images from the training images not calibrated on."""
    pool = target.images(calib, "train")
    calib_idx = _sample(pool, calib_n, seed=0)
    held = target.images(eval or calib, "test")
    # an unlabelled folder has no held-out split: its "test" images are the training ones
    same = eval is None and held.images == pool.images
    held = held.subset(_sample(held, eval_n, seed=1, exclude=set(calib_idx) if same else None))
    select = None
    if target.selects:  # the boundary and the precision plan are chosen on other images than the gate checks on
        select = pool.subset(_sample(pool, SELECT_N, seed=3, exclude=set(calib_idx))).images
    return Int8Images(pool.subset(calib_idx).images, held, select)


def _write_int8(target: TaskExport, graph: Graph, fp32: Path, result: ExportResult, *, format: str, calib: str,
                calib_n: int, eval: str | None, eval_n: int, max_drop: float, batch: int, boundary, calib_method: str,
                threads: int, say) -> None:
    from .quantize import enforce_gate

    data = int8_images(target, calib, calib_n, eval, eval_n)
    gate = target.gate(fp32, data.held, max_drop, threads)
    out = result.path
    if format == "executorch":
        from .precision_plan import export_executorch_planned

        pte, plan = export_executorch_planned(graph, out, fp32, gate, calib_images=data.calib,
                                              select_images=data.select, calib_n=calib_n, batch=batch,
                                              threads=threads, log=say)
        say(f"{pte}; PT2E static int8 (XNNPACK quantizer: per-channel symmetric weights), calibrated on "
            f"{pte.calib_images} images; " + (f"{len(pte.keep_float)} layer(s) float by the precision plan"
                                              if pte.keep_float else "every layer int8"))
        say(pte.activation_report())
    else:
        from .quantize import export_int8, ort_activation_note

        config, _ = export_int8(fp32, data.calib, out, gate, select_images=data.select, calib_n=calib_n,
                                boundary=boundary, method=calib_method, threads=threads, log=say)
        say(config.describe(out))
        note = ort_activation_note(graph.module)
        if note:
            say(note.rstrip("\n"))
        plan = config.plan
    result.files.append(out)
    result.int8 = gate.check(out)
    say(str(result.int8))
    enforce_gate(gate, out, plan)

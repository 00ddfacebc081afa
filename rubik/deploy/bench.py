"""Latency of one model on every path: PyTorch eager, torch.compile, ONNX Runtime and ExecuTorch, fp32 and int8.

All paths of a model are timed in the same rounds (one call of each per round), so a machine that
other work slows down slows every path alike; the table gives the median and 90th percentile, the
throughput, and the achieved GMAC/s next to this machine's measured fp32 matmul peak.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RubikError
from ..timing import time_interleaved

# et-*: ExecuTorch with XNNPACK (the executorch package); ort-plain: the same model exported by
# torch.onnx.export as it is (no BatchNorm folding, no GhostNet split) into ONNX Runtime's default session.
BACKENDS = ("eager", "compile", "ort-fp32", "ort-int8", "et-fp32", "et-int8", "ort-plain")
DEFAULT_BACKENDS = ("eager", "compile", "ort-fp32", "ort-int8", "et-fp32", "et-int8")


@dataclass
class BenchRow:
    model: str
    backend: str
    median_ms: float
    p90_ms: float
    batch: int
    threads: int
    macs: int | None = None
    accuracy: float | None = None

    @property
    def images_per_s(self) -> float:
        return 1e3 * self.batch / self.median_ms

    @property
    def gmacs(self) -> float | None:
        return None if self.macs is None else self.macs * self.batch / self.median_ms / 1e6

    def as_dict(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s, "gmac_per_s": self.gmacs}


# The backend name of a row timing an exported file (.onnx or .pte) as it is; demo reads rows by it.
FILE_BACKEND = "file"


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def realistic_batchnorm(model: torch.nn.Module, n: int = 32, seed: int = 0, preprocess=None) -> torch.nn.Module:
    """Give a randomly initialised model BatchNorm statistics measured on real photos, in place.

    Why: at initialisation, BatchNorm in eval mode is the identity and activations shrink layer after
    layer (logits ~1e-13 for tinynet_e), into subnormal floats that the CPU computes many times slower,
    so float timings would depend on the luck of the weights. Measured statistics give the activation
    scale of a trained model; the weights stay random. `preprocess`: the photos' (default: the model spec's).
    """
    from .export import preprocess_of
    from .images import sample_photos

    x = torch.from_numpy((preprocess or preprocess_of(model))(sample_photos(n, seed)))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batch
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def matmul_peak(threads: int = 1, size: int = 512, runs: int = 20) -> float:
    """This machine's fp32 matmul rate in GMAC/s (median of `runs` products of two size x size matrices)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    times = []
    with torch_threads(threads), torch.inference_mode():
        for i in range(runs + 3):
            start = time.perf_counter()
            torch.mm(a, b)
            if i >= 3:
                times.append(time.perf_counter() - start)
    return size ** 3 / statistics.median(times) / 1e9


def _ort_runner(path: Path, x: np.ndarray, threads: int):
    from .export import open_session

    session = open_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def _et_runner(path: Path, x: np.ndarray, threads: int):
    from .runtime import ExecuTorchModel

    model = ExecuTorchModel(path, threads)
    return lambda: model.run(x)


def _plain_ort_runner(model: torch.nn.Module, path: Path, x: np.ndarray):
    """torch.onnx.export of the model as it is, in an ONNX Runtime session with default options."""
    import onnxruntime as ort

    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model.eval(), (torch.from_numpy(x),), str(path), dynamo=True, external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def _network_graph(spec, layout: str | None):
    """A rubik network's export graph, random weights."""
    from ..models import build
    from .export import network_graph

    return network_graph(build(spec).eval(), layout=layout)


def spec_latency(runtime: str, runs: int = 50, graph: Callable | None = None, int8: bool = False,
                 calib_n: int = 32, anchor: Any = None) -> Callable:
    """A function spec -> median ms (batch 1, one thread) of the model as `rubik export` writes it in `runtime`
    ("onnxruntime" or "executorch"), int8 when asked (calibrated on `calib_n` sample photos), random weights
    with measured BatchNorm statistics: what `rubik twist --latency --runtime R` bisects on.

    `graph(spec, layout)`: the export graph of a spec's model (default: a rubik network's); another task passes
    its own (a detector's: rubik.detect.twist.latency_graph).
    `anchor`: a spec timed before and after every model, each alone; a model's latency is then its ratio to the
    anchor's times the anchor's first measurement (`.anchor_ms`), so that a machine whose speed drifts (a shared
    VM's can by 15 % within minutes) ranks every model on one scale."""
    if runtime not in ("onnxruntime", "executorch"):
        raise RubikError(f"unknown runtime {runtime!r}; choose torch, onnxruntime or executorch")
    graph = graph or _network_graph

    def runner(spec, folder: Path) -> Callable[[], object]:
        path = _latency_file(graph, spec, runtime, int8, calib_n, folder)
        r = spec.resolution
        x = np.random.default_rng(0).standard_normal((1, 3, r, r), dtype=np.float32)
        return (_ort_runner if runtime == "onnxruntime" else _et_runner)(path, x, 1)

    def ms(fn: Callable[[], object], rounds: int) -> float:
        return statistics.median(time_interleaved({"m": fn}, runs=rounds)["m"])

    if anchor is None:
        def measure(spec) -> float:
            with tempfile.TemporaryDirectory(prefix="rubik-latency-") as tmp:
                return ms(runner(spec, Path(tmp)), runs)

        return measure
    folder = tempfile.TemporaryDirectory(prefix="rubik-latency-anchor-")  # lives as long as the function
    anchor_run = runner(anchor, Path(folder.name))
    anchor_ms = ms(anchor_run, 2 * runs)

    def relative(spec) -> float:
        with tempfile.TemporaryDirectory(prefix="rubik-latency-") as tmp:
            fn = runner(spec, Path(tmp))
            before, own, after = ms(anchor_run, runs // 2), ms(fn, runs), ms(anchor_run, runs // 2)
        return own / ((before + after) / 2) * anchor_ms

    relative.anchor_ms, relative.anchor_folder = anchor_ms, folder
    return relative


def _latency_file(graph: Callable, spec, runtime: str, int8: bool, calib_n: int, folder: Path) -> Path:
    """The file `rubik export` would write for the spec's model (int8: its calibrated file) in `folder`."""
    from .images import sample_photos

    images = sample_photos(calib_n) if int8 else None
    layout = None if runtime == "executorch" else "int8" if int8 else "fp32"  # the Ghost layout is ORT's
    g = graph(spec, layout)
    realistic_batchnorm(g.module, preprocess=g.preprocess)
    if runtime == "executorch":
        from .executorch import write_pte

        return write_pte(g, folder / "candidate.pte", calib_images=images, calib_n=calib_n).path
    from .export import write_onnx

    fp32 = write_onnx(g, folder / "candidate.onnx")
    if not int8:
        return fp32
    from .quantize import quantize_int8

    quantize_int8(fp32, images, folder / "candidate.int8.onnx", calib_n=calib_n, log=lambda line: None)
    return folder / "candidate.int8.onnx"


def _file_paths(path: Path, batch: int, threads: int) -> tuple[str, int | None, dict[str, Callable]]:
    """(name, MACs, {FILE_BACKEND: one call}) of an exported file, whatever its task: it runs in its own runtime
    (.onnx: ONNX Runtime, .pte: ExecuTorch) at its metadata's input size; MACs from its metadata."""
    from .export import ModelFileError
    from .runtime import META_MACS, META_MODEL, META_PREPROCESS, RuntimeModelError, open_model

    try:
        meta = open_model(path).metadata
    except RuntimeModelError as e:
        raise ModelFileError(str(e)) from None
    if META_PREPROCESS not in meta:
        raise RubikError(f"{path} has no rubik metadata; bench files exported by `rubik export`")
    res = json.loads(meta[META_PREPROCESS])["resolution"]
    x = np.random.default_rng(0).standard_normal((batch, 3, res, res), dtype=np.float32)
    runner = _ort_runner if path.suffix == ".onnx" else _et_runner
    if META_MACS in meta:
        macs = int(meta[META_MACS])
    else:  # a file from before the MACs entry: a classifier's spec counts them, any other spec has none here
        macs = _spec_macs(json.loads(meta[META_MODEL]), res) if META_MODEL in meta else None
    return path.name, macs, {FILE_BACKEND: runner(path, x, threads)}


def _spec_macs(spec: dict, resolution: int) -> int | None:
    from ..models import build, get_spec
    from ..profile import count

    try:
        spec = get_spec(spec)
    except RubikError:
        return None
    with torch.device("meta"):
        return count(build(spec), resolution)[0]


def bench(targets: list, *, threads: int = 1, batch: int = 1, runs: int = 100, warmup: int = 10,
          backends: tuple[str, ...] = DEFAULT_BACKENDS, calib: str | None = None, calib_n: int = 64,
          workdir: str | Path | None = None, together: bool = False, log=print) -> list[BenchRow]:
    """Time each target on the requested backends: a model (a name, a spec JSON, or a built network with its
    `.spec`, e.g. a trained one), or an exported .onnx or .pte file of any task, timed in its own runtime.
    Each target's paths are timed interleaved, one call of each per round; `together` interleaves every target's
    in one loop, so that a drift of the machine's speed falls on all of them alike.

    A named model is built with random weights and measured BatchNorm statistics (see `realistic_batchnorm`),
    then exported and quantized here (int8 calibrated on `calib` images, else on crops of real sample photos).
    """
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise RubikError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="rubik-bench-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths = []  # (name, MACs, {backend: one call}) of each target
        for target in targets:
            if isinstance(target, (str, Path)) and str(target).endswith((".onnx", ".pte")):
                paths.append(_file_paths(Path(target), batch, threads))
            else:
                paths.append(_model_paths(target, work, backends, batch, threads, calib, calib_n, log))
            if not together:
                rows += _timed([paths.pop()], runs, warmup, batch, threads)
        rows += _timed(paths, runs, warmup, batch, threads)
    return rows


def _timed(paths: list, runs: int, warmup: int, batch: int, threads: int) -> list[BenchRow]:
    """Rows of the targets' paths, all timed in one interleaved loop."""
    fns = {(i, backend): fn for i, (_, _, by_backend) in enumerate(paths) for backend, fn in by_backend.items()}
    if not fns:
        return []
    with torch_threads(threads):
        times = time_interleaved(fns, runs=runs, warmup=warmup)
    return [BenchRow(paths[i][0], backend, statistics.median(ts), float(np.percentile(ts, 90)), batch, threads,
                     paths[i][1]) for (i, backend), ts in times.items()]


def _model_paths(target, work: Path, backends: tuple[str, ...], batch: int, threads: int, calib: str | None,
                 calib_n: int, log) -> tuple[str, int, dict[str, Callable]]:
    """(name, MACs, {backend: one call}) of a model on every requested path but its files' runtimes'."""
    from ..models.weights import create_model
    from ..profile import count

    model = target if isinstance(target, torch.nn.Module) else realistic_batchnorm(create_model(target))
    model.eval()
    name, res = model.spec.name, model.spec.resolution
    macs, _ = count(model, res)
    xt = torch.randn(batch, 3, res, res)
    fns: dict[str, Callable] = {}
    if "eager" in backends:
        fns["eager"] = lambda m=model, t=xt: _torch_call(m, t, threads)
    if "compile" in backends:
        log(f"{name}: torch.compile (the first call compiles; minutes on a small CPU)")
        compiled = torch.compile(model)
        _torch_call(compiled, xt, threads)
        fns["compile"] = lambda m=compiled, t=xt: _torch_call(m, t, threads)
    images = None
    if {"ort-int8", "et-int8"} & set(backends):
        from .images import open_images, sample_photos

        images = open_images(calib).images if calib else sample_photos(max(calib_n, batch))
    fns.update(_ort_paths(model, work / name, backends, xt.numpy(), images, calib_n, threads, log))
    if "ort-plain" in backends:
        fns["ort-plain"] = _plain_ort_runner(model, work / f"{name}.plain.onnx", xt.numpy())
    fns.update(_et_paths(model, work / name, backends, xt.numpy(), images, calib_n, threads, log))
    return name, macs, fns


def _ort_paths(model, stem: Path, backends, x: np.ndarray, images, calib_n: int, threads: int, log) -> dict:
    """ort-fp32 and ort-int8, as `rubik export` writes the files."""
    from .export import export_onnx
    from .layout import in_ghost_layout
    from .quantize import quantize_int8

    fns = {}
    batch = x.shape[0]
    if "ort-fp32" in backends or "ort-int8" in backends:
        fp32 = export_onnx(model, Path(f"{stem}.onnx"), batch=batch)
        if "ort-fp32" in backends:
            fns["ort-fp32"] = _ort_runner(fp32, x, threads)
        if "ort-int8" in backends:
            if in_ghost_layout(model):  # int8 starts from a file in the Ghost layout only where it stays float
                fp32 = export_onnx(model, Path(f"{stem}.int8-source.onnx"), batch=batch, layout="int8")
            int8 = Path(f"{stem}.int8.onnx")
            quantize_int8(fp32, images, int8, calib_n=calib_n, threads=threads, log=log)
            fns["ort-int8"] = _ort_runner(int8, x, threads)
    return fns


def _et_paths(model, stem: Path, backends, x: np.ndarray, images, calib_n: int, threads: int, log) -> dict:
    """et-fp32 and et-int8 (skipped, with a line in the log, where ExecuTorch cannot export the model)."""
    from .executorch import ExecuTorchError, export_executorch

    fns = {}
    batch = x.shape[0]
    try:
        if "et-fp32" in backends:
            et = export_executorch(model, Path(f"{stem}.pte"), batch=batch)
            fns["et-fp32"] = _et_runner(et.path, x, threads)
        if "et-int8" in backends:
            et = export_executorch(model, Path(f"{stem}.int8.pte"), batch=batch, calib_images=images,
                                   calib_n=calib_n)
            fns["et-int8"] = _et_runner(et.path, x, threads)
    except ExecuTorchError as e:
        log(f"{model.spec.name}: ExecuTorch skipped ({e})")
    return fns


def _torch_call(model, x, threads):
    with torch.inference_mode():
        return model(x)


def format_table(rows: list[BenchRow], peak_gmacs: float | None = None) -> str:
    """A plain-text table, with each path's speed-up over eager (or over the first path timed)."""
    head = f"{'model':<24} {'path':<9} {'median ms':>9} {'p90 ms':>8} {'img/s':>8} {'MACs M':>8} {'GMAC/s':>7}"
    head += f" {'% peak':>6} {'x eager':>7}"
    lines = [head, "-" * len(head)]
    base: dict[str, float] = {}
    for r in rows:
        base.setdefault(r.model, r.median_ms)
        if r.backend == "eager":
            base[r.model] = r.median_ms
    for r in rows:
        macs = "-" if r.macs is None else f"{r.macs / 1e6:.1f}"
        gm = "-" if r.gmacs is None else f"{r.gmacs:.2f}"
        peak = "-" if r.gmacs is None or not peak_gmacs else f"{100 * r.gmacs / peak_gmacs:.0f}%"
        lines.append(f"{r.model:<24} {r.backend:<9} {r.median_ms:9.2f} {r.p90_ms:8.2f} {r.images_per_s:8.1f} "
                     f"{macs:>8} {gm:>7} {peak:>6} {base[r.model] / r.median_ms:7.2f}")
    return "\n".join(lines)


def plot(rows: list[BenchRow], path: str | Path, accuracies: dict[str, float] | None = None) -> Path:
    """Accuracy (when known for every model) or MACs against latency, one marker per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracies = accuracies or {}
    use_acc = bool(rows) and all(r.model in accuracies for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"eager": "o", "compile": "s", "ort-fp32": "^", "ort-int8": "D", FILE_BACKEND: "v", "et-fp32": "<",
               "et-int8": ">", "ort-plain": "x"}
    for backend in dict.fromkeys(r.backend for r in rows):
        sel = [r for r in rows if r.backend == backend and (use_acc or r.macs is not None)]
        if not sel:
            continue
        ys = [100 * accuracies[r.model] if use_acc else r.macs / 1e6 for r in sel]
        ax.scatter([r.median_ms for r in sel], ys, marker=markers.get(backend, "x"), label=backend)
        for r, y in zip(sel, ys, strict=True):
            ax.annotate(r.model, (r.median_ms, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"latency, ms (median, batch {rows[0].batch}, {rows[0].threads} thread)" if rows else "latency, ms")
    ax.set_ylabel("top-1 accuracy, %" if use_acc else "MACs, M")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Post-training static int8 quantization with ONNX Runtime, tuned for speed on this CPU, checked on held-out images.

The recipe (see benchmarks/deploy.py for the measurements behind it):

- QDQ format, uint8 activations, int8 per-channel symmetric weights (`U8S8`): the combination ORT's
  x86 kernels (VNNI where the CPU has it) run fastest; ORT fuses the QDQ pairs into QLinearConv,
  QLinearSigmoid, QLinearMul, QLinearGlobalAveragePool and runs the int8 part in NHWC.
- Everything quantized from a *precision boundary* on; the stem convolution and the thin,
  high-resolution layers before the boundary stay float. ORT's int8 depthwise kernel costs about
  the same per pixel whatever the channel count, so on 8-24-channel maps at 112x112 (GhostNet's
  early cheap operations) it is 3x slower than float; from the first wide layers on, int8 wins.
  `boundary="auto"` times a few candidate boundaries on this machine and keeps the fastest; one
  calibration pass serves them all (ORT's calibration cache).
- Accuracy decides before speed: given selection images (held-out images, not the calibration ones),
  each candidate boundary's top-1 agreement with fp32 is measured, and only candidates within half a
  point of the best agreement compete on speed. Quantizing the first layers of a model trained
  briefly can flip several % of its predictions when the later ones flip almost none.
- Calibration on real images, `calib_n` of them (default 256): rubik measures each activation's range
  itself (`activation_ranges`: MinMax, or Percentile of |x|) and hands the ranges to ORT's quantizer,
  so a tensor whose range is degenerate (an untrained model's vanishing activations) calibrates like
  any other instead of breaking a 2048-bin float32 histogram.

- A precision plan where int8 fails its gate (`gate=`, what `rubik export` passes: the held-out check
  with `--max-drop`): the few convolutions after the boundary whose quantization costs the most top-1
  agreement stay float too (`deploy.precision_plan`, measured leave-one-out on the selection images
  through `quantize_static`'s `nodes_to_quantize`, every file from the same calibration cache); the
  plan, its agreement and its cost in ms go into the file's metadata (`QuantConfig.plan`).

`quantize_int8` runs five steps, each its own function: calibration choice (`choose_calibration`),
boundary candidates (`boundary_candidates`), selection (`choose_boundary`), the precision plan when a gate
fails (`plan_onnx`), writing (`write_int8`). `export_int8` adds the held-out check and its gate.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RubikError
from ..timing import median_ms
from .export import open_session, save_file
from .images import LabelledImages
from .metadata import set_onnx_metadata
from .runtime import META_PRECISION, META_PREPROCESS, Classifier, Preprocess, RuntimeModelError

META_INT8 = "rubik.int8"  # JSON: how the file was quantized (QuantConfig)

# Calibration. PERCENTILE and HISTOGRAM_BINS are ONNX Runtime's Percentile defaults: the range keeps all
# but the largest 1 in 100,000 magnitudes, read off a histogram fine enough (2048 bins) that the cut
# lands within 0.05 % of the range of where it should.
PERCENTILE = 99.999
HISTOGRAM_BINS = 2048
# Below this largest magnitude a uint8 scale (range / 255) is not a normal float32: ORT's quantizer then
# uses scale 1, so the tensor rounds to zero whatever range it gets, and no histogram is needed (nor can
# a 2048-bin float32 one be made). Untrained models have such tensors: BatchNorm is the identity there.
DEGENERATE_ABSMAX = 255 * float(np.finfo(np.float32).tiny)
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # entropy: ORT's own calibrator, as it is

# Boundary candidates (see `boundary_candidates`).
MAX_CANDIDATES = 8  # each candidate is one more file to quantize, check and time
DEPTHWISE_PICKS = (1, 2, 4, 6, 9, 12, 16, 20)  # which depthwise convs may start int8: denser early
EARLY_FRACTION = 0.6  # only in the first 60 % of the depthwise convs: later, int8 wins everywhere
# Selection (see `choose_boundary`).
SELECTION_SLACK = 0.005  # candidates within half a point of the best top-1 agreement compete on speed
SAME_SPEED = 1.03  # within 3 % of the fastest is as fast (timing noise): keep more layers float
TUNE_ROUNDS = 30  # interleaved timing rounds per candidate
TUNE_BATCH = 16  # the timing batch of a dynamic-batch file (a static one is timed at its own batch)


@dataclass
class QuantConfig:
    """What `quantize_int8` did; written into the int8 file's metadata."""

    format: str = "QDQ"
    activations: str = "uint8"
    weights: str = "int8 per-channel symmetric"
    calibration: str = "MinMax"
    calib_images: int = 0
    boundary: int = 0  # index (in the float graph's node order) of the first quantized node
    float_nodes: int = 0  # nodes before the boundary, left in float
    nodes: int = 0
    tuned: dict[str, float] = field(default_factory=dict)  # candidate boundary -> median ms, when tuned
    agreement: dict[str, float] = field(default_factory=dict)  # candidate -> top-1 agreement with fp32
    calibration_agreement: dict[str, float] = field(default_factory=dict)  # method -> agreement, when chosen
    selection_images: int = 0
    # The precision plan, when the gate failed (`plan_onnx`): keep_float (node names), modules, passed,
    # agreement before/after, sensitivity of the most sensitive layers, and median ms of fp32/int8/plan.
    plan: dict = field(default_factory=dict)

    def describe(self, path: str | Path) -> str:
        """What `rubik export --int8` prints about the written file."""
        kept = self.plan.get("modules") if self.plan.get("passed") else None
        return (f"wrote {path} (int8 {self.format} U8S8 per-channel, {self.calibration} calibration on "
                f"{self.calib_images} images; first {self.float_nodes} of {self.nodes} nodes kept float"
                + (f", and {len(kept)} layer(s) after them by the precision plan: {', '.join(kept)}" if kept else "")
                + ")")


class CalibrationError(RubikError):
    """Calibration that cannot run: no images, or images the model cannot take."""


def _inputs(session, pre: Preprocess, images: list, batch: int = TUNE_BATCH):
    """Preprocessed batches sized for the session's (static or dynamic) batch dimension."""
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch
    for i in range(0, len(images) - (len(images) % step if isinstance(fixed, int) else 0), step):
        yield pre(images[i:i + step])


def _node_kinds(graph) -> list[str]:
    """'stem', 'dw' (depthwise conv), or the op type, for each node in order."""
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    kinds = []
    for node in graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            weight = inits.get(node.input[1])
            if node.input[0] in graph_inputs:
                kinds.append("stem")
            elif group > 1 and weight is not None and group == weight.dims[0]:
                kinds.append("dw")
            else:
                kinds.append("Conv")
        else:
            kinds.append(node.op_type)
    return kinds


def _layout_join(graph) -> int | None:
    """Index of the node after the Concat that joins a GhostNet's parts in the Ghost layout (`layout.GhostLayoutNet`:
    a Concat of Slices), or None. Int8 starting there leaves every block in the layout in float, where the layout
    pays; starting inside, each part's sum becomes a QLinearAdd in plain NCHW with transposes around it."""
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    for i, node in enumerate(graph.node):
        if node.op_type == "Concat" and len(node.input) > 1 and all(made_by.get(t) == "Slice" for t in node.input):
            return i + 1
    return None


def candidate_boundaries(graph, max_candidates: int = MAX_CANDIDATES) -> list[int]:
    """Where int8 may start: after the stem, at one of the depthwise convs in the first part of the network,
    or (a GhostNet in the Ghost layout) where its parts are joined.

    Starting at a depthwise conv keeps each block's expansion and depthwise in the same precision.
    """
    kinds = _node_kinds(graph)
    stem = max((i for i, k in enumerate(kinds) if k == "stem"), default=-1)
    dws = [i for i, k in enumerate(kinds) if k == "dw"]
    picks = [stem + 1]
    for j in DEPTHWISE_PICKS:
        if j < EARLY_FRACTION * len(dws) and len(picks) < max_candidates:
            # back up to the block's expansion conv so the whole block switches precision together
            start = dws[j]
            while start > stem + 1 and kinds[start - 1] not in ("Add", "Concat", "dw"):
                start -= 1
            picks.append(start)
    join = _layout_join(graph)
    if join is not None and max_candidates > 1:
        picks.append(join)
    return sorted(set(picks))


def boundary_candidates(graph, boundary: int | str) -> list[int]:
    """The boundaries to try: every candidate ("auto"), all but the stem ("all"), or the one asked for."""
    if boundary == "auto":
        return candidate_boundaries(graph)
    if boundary == "all":
        return candidate_boundaries(graph, max_candidates=1)
    try:
        start = int(boundary)
    except (TypeError, ValueError):
        raise RubikError(f"--boundary must be 'auto', 'all' or a node index, got {boundary!r}") from None
    if not 0 <= start < len(graph.node):
        raise RubikError(f"--boundary {start} is outside the model's {len(graph.node)} nodes")
    return [start]


def float_outputs(graph) -> int:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of each graph output; returns how many.

    Why: quantizing the logits to 256 levels adds rounding to the very numbers top-1 is read from, for no
    speed (ORT then runs the classifier as QGemm with a float output).
    """
    producers = {out: node for node in graph.node for out in node.output}
    done = 0
    for output in graph.output:
        dq = producers.get(output.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        users = [n for n in graph.node if q.output[0] in n.input]
        if users != [dq]:
            continue
        source = q.input[0]
        for node in graph.node:  # the producer of the float tensor now writes the output itself
            for i, name in enumerate(node.output):
                if name == source:
                    node.output[i] = output.name
            for i, name in enumerate(node.input):
                if name == source:
                    node.input[i] = output.name
        graph.node.remove(q)
        graph.node.remove(dq)
        done += 1
    return done


def _float_tensors(model) -> list[str]:
    """Every float32 activation of a shape-inferred ONNX model (graph inputs and node outputs), in order."""
    from onnx import TensorProto

    g = model.graph
    typed = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    inits = {i.name for i in g.initializer}
    names = [i.name for i in g.input if i.name not in inits]
    names += [o for n in g.node for o in n.output if o and typed.get(o) == TensorProto.FLOAT]
    return list(dict.fromkeys(names))


def activation_ranges(model_path: str | Path, batches: Callable[[], Iterable[np.ndarray]], method: str,
                      threads: int = 1) -> dict[str, tuple[float, float]]:
    """(lowest, highest) of every float activation over the calibration batches.

    "minmax": the extremes. "percentile": the extremes clipped to the PERCENTILE-th percentile of |x|
    (symmetric in magnitude), from a second pass over a HISTOGRAM_BINS-bin histogram on [0, max |x|]
    computed in float64. A tensor below DEGENERATE_ABSMAX keeps its extremes. `batches` is called once
    per pass.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    names = _float_tensors(model)
    graph_inputs = {i.name for i in model.graph.input}
    known = {o.name for o in model.graph.output}
    info = {v.name: v for v in model.graph.value_info}
    for name in names:
        if name not in known and name not in graph_inputs:
            model.graph.output.append(info[name] if name in info else onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as it is named
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    out_names = [o.name for o in session.get_outputs()]

    def tensors():
        for x in batches():
            yield {input_name: x, **dict(zip(out_names, session.run(None, {input_name: x}), strict=True))}

    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for values in tensors():
        for name in names:
            v = values[name]
            if v.size:
                lo[name] = min(lo[name], float(np.nanmin(v)))
                hi[name] = max(hi[name], float(np.nanmax(v)))
    ranges = {n: (lo[n], hi[n]) if lo[n] <= hi[n] else (0.0, 0.0) for n in names}
    if method == "minmax":
        return ranges
    absmax = {n: max(abs(a), abs(b)) for n, (a, b) in ranges.items()}
    wide = [n for n in names if np.isfinite(absmax[n]) and absmax[n] >= DEGENERATE_ABSMAX]
    hist = {n: np.zeros(HISTOGRAM_BINS, np.int64) for n in wide}
    for values in tensors():
        for n in wide:
            h, _ = np.histogram(np.abs(values[n].astype(np.float64)), bins=HISTOGRAM_BINS, range=(0.0, absmax[n]))
            hist[n] += h
    for n in wide:
        cdf = np.cumsum(hist[n]) / max(1, hist[n].sum())
        cut = (int(np.searchsorted(cdf, PERCENTILE / 100)) + 1) * absmax[n] / HISTOGRAM_BINS
        ranges[n] = (max(ranges[n][0], -cut), min(ranges[n][1], cut))
    return ranges


def write_ranges(ranges: dict[str, tuple[float, float]], method: str, path: Path) -> Path:
    """Ranges as ONNX Runtime's calibration cache, which `quantize_static` reads instead of calibrating."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    kind = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    data = {n: TensorData(lowest=np.float32(a), highest=np.float32(b)) for n, (a, b) in ranges.items()}
    save_tensors_data(TensorsData(kind, data), path)
    return path


class _Int8Files:
    """Quantized files of one prepared fp32 model, each (boundary, method) made once; one calibration
    per method serves every boundary."""

    def __init__(self, pre_path: Path, names: list[str], session, pre: Preprocess, images: list, tmp: Path,
                 threads: int):
        self.pre_path, self.names, self.session, self.pre = pre_path, names, session, pre
        self.images, self.tmp, self.threads = images, tmp, threads
        self.done: dict[tuple[int, str, frozenset[str]], Path] = {}

    def cache(self, how: str) -> tuple[Path, object | None]:
        """(ORT calibration cache, a data reader when ORT must still calibrate itself)."""
        cache = self.tmp / f"calibration-{how}.json"
        if cache.exists():
            return cache, None
        if how == "entropy":  # ORT's own histogram calibrator
            return cache, _reader(self.session, self.pre, self.images)
        ranges = activation_ranges(self.pre_path, lambda: _inputs(self.session, self.pre, self.images), how,
                                   self.threads)
        return write_ranges(ranges, how, cache), None

    def __call__(self, start: int, how: str, keep_float: frozenset[str] = frozenset()) -> Path:
        """The file quantized from node `start` on, but for the nodes in `keep_float`."""
        key = (start, how, frozenset(keep_float))
        if key in self.done:
            return self.done[key]
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        planned = f"_{len(self.done)}" if keep_float else ""  # a precision plan's trial: one file per set
        path = self.tmp / f"int8_{how}_{start}{planned}.onnx"
        quantized = [n for n in self.names[start:] if n not in keep_float]
        cache, reader = self.cache(how)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print progress
                quantize_static(str(self.pre_path), str(path), reader, nodes_to_quantize=quantized,
                                calibrate_method=methods[how], calibration_cache_path=str(cache),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
                                extra_options={"WeightSymmetric": True})
        except (ValueError, RuntimeError) as e:
            raise CalibrationError(f"{how} calibration failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                                   "; try --calib-method minmax or percentile") from None
        model = onnx.load(str(path))
        float_outputs(model.graph)
        onnx.save(model, str(path))
        self.done[key] = path
        return path


def _reader(session, pre: Preprocess, images: list):
    from onnxruntime.quantization import CalibrationDataReader

    name = session.get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = _inputs(session, pre, images)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {name: x}

    return Reader()


class Agreement:
    """Top-1 agreement of quantized files with the fp32 file on selection images, each file measured once."""

    def __init__(self, fp32_path: Path, images: list | None, threads: int):
        self.images, self.threads = images or [], threads
        self.reference = predictions(fp32_path, self.images, threads) if self.images else None
        self.seen: dict[Path, float] = {}

    def __bool__(self) -> bool:
        return bool(self.images)

    def __call__(self, path: Path) -> float:
        if path not in self.seen:
            self.seen[path] = float((predictions(path, self.images, self.threads) == self.reference).mean())
        return self.seen[path]


def choose_calibration(method: str, quantize: Callable[[str], Path], agreement: Agreement,
                       log=print) -> tuple[str, dict[str, float]]:
    """The calibration method: the one asked for, or ("auto") whichever of MinMax and Percentile agrees
    better with fp32 on the selection images (MinMax on a tie, or with nothing to measure on).

    Percentile clipping helps where a few images drive activations far out (briefly trained models),
    MinMax where the tails carry signal: measure, on the most-quantized candidate (`quantize(method)`).
    """
    if method != "auto":
        return method, {}
    if not agreement:
        return "minmax", {}
    measured = {how: agreement(quantize(how)) for how in ("minmax", "percentile")}
    chosen = max(measured, key=lambda k: (measured[k], k == "minmax"))
    log("int8 calibration: " + ", ".join(f"{k} {v:.1%}" for k, v in measured.items())
        + f" top-1 agreement with fp32 -> {chosen}")
    return chosen, measured


def time_files(paths: dict[str, Path], x: np.ndarray, threads: int, rounds: int = TUNE_ROUNDS) -> dict[str, float]:
    """Median latency in ms of each ONNX file on input `x`, timed interleaved (`rubik.timing`)."""
    sessions = {k: open_session(p, threads) for k, p in paths.items()}
    fns = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}
    return median_ms(fns, runs=rounds, warmup=5)


def choose_boundary(paths: dict[str, Path], agreement: Agreement, timing: Callable[[dict[str, Path]], dict],
                    slack: float = SELECTION_SLACK, log=print) -> tuple[int, dict[str, float], dict[str, float]]:
    """(boundary, median ms per timed candidate, agreement per candidate): accuracy first (candidates more
    than `slack` below the best agreement drop out), then the fastest; within SAME_SPEED of the fastest,
    the one that keeps more layers float."""
    if len(paths) == 1:
        return int(next(iter(paths))), {}, {}
    agreed: dict[str, float] = {}
    if agreement:
        agreed = {k: agreement(p) for k, p in paths.items()}
        paths = {k: p for k, p in paths.items() if agreed[k] >= max(agreed.values()) - slack}
    tuned = timing(paths)
    best = min(tuned.values())
    start = max(int(k) for k, v in tuned.items() if v <= best * SAME_SPEED)
    cells = [f"{k}: " + (f"{tuned[k]:.2f} ms" if k in tuned else "not timed")
             + (f", {agreed[k]:.1%} agree" if agreed else "") for k in agreed or tuned]
    against = f"; top-1 agreement with fp32 on {len(agreement.images)} images not used for calibration" \
        if agreed else ""
    log(f"int8 precision boundary by first quantized node (median ms{against}): " + "; ".join(cells)
        + f" -> {start}")
    return start, tuned, agreed


PLAN_OPS = ("Conv", "Gemm")  # what the precision plan probes: the convolutions and the classifier
PASS_THROUGH = ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "QuickGelu", "Reshape",
                "Flatten", "GlobalAveragePool", "MaxPool", "AveragePool")  # one-input ops a unit reaches back over


def plan_units(graph, start: int) -> dict[str, list[str]]:
    """The units the precision plan may keep float: each convolution (and the classifier) from the boundary on,
    with the nodes that make its input, back to the previous convolution.

    Why not the convolution alone: ONNX Runtime quantizes, when it loads a file, the float weights of any
    Conv or Gemm whose input comes from a per-tensor DequantizeLinear (its WeightBiasQuantization transformer:
    symmetric *per-tensor* int8), so a convolution left out of `nodes_to_quantize` whose input is still
    quantized runs with coarser weights than before. Keeping the operators in front of it float (its
    activation, the residual Add or squeeze-excite Mul that feeds it) gives it a float input: walked back over
    one-input operators (`PASS_THROUGH`), stopping at a Conv/Gemm, the boundary, or after a many-input one.
    """
    producer = {out: (i, node) for i, node in enumerate(graph.node) for out in node.output}
    units = {}
    for node in graph.node[start:]:
        if node.op_type not in PLAN_OPS:
            continue
        unit, tensor = [node.name], node.input[0]
        while tensor in producer:
            i, up = producer[tensor]
            if i < start or up.op_type in PLAN_OPS or up.name in unit:
                break
            unit.append(up.name)
            if up.op_type not in PASS_THROUGH:
                break
            tensor = up.input[0]
        units[node.name] = unit
    return units


def quantized_weights(model, names: Collection[str]) -> list[str]:
    """Of the nodes `names`, the Conv/Gemm ONNX Runtime will give int8 weights when it loads `model` although
    they are float in the file (input from a per-tensor DequantizeLinear: see `plan_units`)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.name in names and node.op_type in PLAN_OPS and node.input[1] in inits:
            up = producer.get(node.input[0])
            if up is not None and up.op_type == "DequantizeLinear":
                found.append(node.name)
    return found


def module_names(graph) -> dict[str, str]:
    """Node name -> the dotted PyTorch module it came from (`torch.onnx`'s name scopes), where recorded."""
    import ast

    names = {}
    for node in graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        with contextlib.suppress(ValueError, SyntaxError):
            scopes = ast.literal_eval(scopes) if scopes else []
            if len(scopes) >= 2 and scopes[-2]:
                names[node.name] = scopes[-2]
    return names


def _no_selection(path: Path) -> float:
    raise CalibrationError("the int8 file fails its gate, and the precision plan needs selection images to rank "
                           "layers on (select_images=, images not used for calibration)")


def plan_onnx(quantize: Callable[[frozenset[str]], Path], graph, start: int, agreement: Agreement,
              gate: Callable[[Path], bool], timing: Callable[[dict[str, Path]], dict[str, float]],
              config: QuantConfig, fp32_path: Path | None = None, log=print) -> Path:
    """The precision plan (`precision_plan.find_plan`) over the `plan_units` of the file quantized from `start`:
    recorded in `config.plan` when the all-int8 file fails `gate`; returns the file to write (the planned one
    when it passes, else the all-int8 one). A passing plan is timed against the all-int8 file and fp32. When
    `fp32_path` fails the gate too, no plan is searched for."""
    from .precision_plan import find_plan

    units = plan_units(graph, start)
    plan = find_plan(lambda keep: quantize(frozenset(n for k in keep for n in units[k])),
                     agreement if agreement else _no_selection, gate, list(units), reference=fp32_path, log=log)
    if not plan.ran:
        return plan.file
    modules = module_names(graph)
    ms = timing({"int8": quantize(frozenset()), "plan": plan.file}) if plan.passed else {}
    summary = plan.as_dict()
    # modules: the layers kept float (`keep_float`), or when the plan failed, tried and left int8 (`tried`)
    config.plan = {**summary, "modules": [modules.get(n, n) for n in plan.keep_float],
                   "float_nodes": [n for k in summary["keep_float"] for n in units[k]],
                   "sensitivity": {modules.get(k, k): v for k, v in summary["sensitivity"].items()},
                   "ms": {k: round(v, 4) for k, v in ms.items()}}
    cost = (f"; median ms fp32 {ms['fp32']:.3f}, all-int8 {ms['int8']:.3f}, planned {ms['plan']:.3f}"
            if ms else "")
    log(plan.describe(lambda n: modules.get(n, n)) + cost)
    return plan.file


def write_int8(quantized: Path, fp32_path: Path, config: QuantConfig, out_path: Path) -> None:
    """The chosen file at `out_path`, with the fp32 file's metadata, precision int8 and how it was made."""
    import onnx

    model = onnx.load(str(quantized))
    del model.metadata_props[:]
    set_onnx_metadata(model, {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props})
    set_onnx_metadata(model, {META_PRECISION: "int8", META_INT8: json.dumps(asdict(config))})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out_path, lambda p: onnx.save(model, str(p)))


def quantize_int8(fp32_path: str | Path, calib_images: list, out_path: str | Path, *, calib_n: int = 256,
                  boundary: int | str = "auto", method: str = "auto", threads: int = 1,
                  tune_rounds: int = TUNE_ROUNDS, select_images: list | None = None, slack: float = SELECTION_SLACK,
                  gate: Callable[[Path], bool] | None = None, log=print) -> QuantConfig:
    """Quantize an exported fp32 ONNX file to int8 with real calibration images; returns what it did.

    `calib_images`: paths, PIL images or HxWx3 uint8 arrays (the first `calib_n` are used);
    `boundary`: "auto" (time candidates here), "all" (everything but the stem), or a node index;
    `method`: "minmax", "percentile", "entropy", or "auto": with `select_images`, whichever of MinMax and
    Percentile agrees better with fp32 (MinMax without);
    `select_images`: images (not the calibration ones) on which "auto" measures each candidate's top-1
    agreement with fp32; candidates more than `slack` below the best agreement are not considered;
    `gate`: a check of a quantized file (`Int8Gate`); when the chosen file fails it, the precision plan
    (`plan_onnx`) keeps the most sensitive layers after the boundary float, ranked on `select_images`.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    images = list(calib_images[:calib_n])
    if not images:
        raise CalibrationError("no calibration images: pass a folder of images from the training distribution "
                               "(--calib DIR) or 'digits'")
    if method not in CALIBRATION_METHODS and method != "auto":
        raise RubikError(f"unknown calibration method {method!r}; choose auto or one of {sorted(CALIBRATION_METHODS)}")
    ort.set_default_logger_severity(3)  # the quantizer's own sessions warn about every unused initializer
    session = open_session(fp32_path, threads)
    meta = session.get_modelmeta().custom_metadata_map
    if META_PREPROCESS not in meta:
        raise RubikError(f"{fp32_path} has no rubik preprocessing metadata; export it with `rubik export` first")
    pre = Preprocess.from_json(meta[META_PREPROCESS])
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and len(images) < fixed:
        raise CalibrationError(f"{len(images)} calibration image(s) for a model with a fixed batch of {fixed}")

    with tempfile.TemporaryDirectory(prefix="rubik-int8-") as tmp:
        tmp = Path(tmp)
        pre_path = tmp / "pre.onnx"
        # Shape inference plus ORT's basic graph optimisation, as ORT recommends before quantizing.
        quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=False)
        graph = onnx.load(str(pre_path)).graph
        names = [n.name for n in graph.node]
        files = _Int8Files(pre_path, names, session, pre, images, tmp, threads)
        starts = boundary_candidates(graph, boundary)
        agreement = Agreement(fp32_path, select_images, threads)
        method, method_agreement = choose_calibration(method, lambda how: files(starts[0], how), agreement, log)
        x = next(_inputs(session, pre, images[:1] * TUNE_BATCH))
        start, tuned, agreed = choose_boundary({str(s): files(s, method) for s in starts}, agreement,
                                               lambda paths: time_files(paths, x, threads, tune_rounds), slack, log)
        config = QuantConfig(calibration=method, calibration_agreement=method_agreement, calib_images=len(images),
                             boundary=start, float_nodes=start, nodes=len(names), tuned=tuned, agreement=agreed,
                             selection_images=len(select_images) if agreed else 0)
        chosen = files(start, method)
        if gate is not None:
            chosen = plan_onnx(lambda keep: files(start, method, keep), graph, start, agreement, gate,
                               lambda paths: time_files({"fp32": fp32_path, **paths}, x, threads, tune_rounds),
                               config, fp32_path, log)
        write_int8(chosen, fp32_path, config, out_path)
    return config


@dataclass
class Int8Check:
    """The int8 file against the fp32 file on held-out images."""

    n: int
    top1_agreement: float
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None

    @property
    def accuracy_delta(self) -> float | None:
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return self.int8_accuracy - self.fp32_accuracy

    @property
    def drop(self) -> float:
        """Accuracy points int8 lost (0 on unlabelled images): what `--max-drop` bounds."""
        return 0.0 if self.accuracy_delta is None else -100 * self.accuracy_delta

    def __str__(self) -> str:
        text = f"int8 vs fp32 on {self.n} held-out images: top-1 agreement {self.top1_agreement:.1%}"
        if self.accuracy_delta is not None:
            text += (f", accuracy {self.fp32_accuracy:.2%} -> {self.int8_accuracy:.2%} "
                     f"({100 * self.accuracy_delta:+.2f} points)")
        return text


def predictions(path: str | Path, images: list, threads: int = 1) -> np.ndarray:
    """Arg-max class of each image under a file's own preprocessing (.onnx or .pte)."""
    try:
        return Classifier(path, threads).predict(images)
    except RuntimeModelError as e:
        from .export import ModelFileError

        raise ModelFileError(str(e)) from None


class Int8GateError(RubikError):
    """An int8 file that loses more accuracy than `--max-drop` allows, even with the precision plan."""


def _labels(heldout: LabelledImages, model_classes: list[str] | None) -> np.ndarray | None:
    """The held-out labels as the model's class indices (mapped by class name when both know their names);
    None when unlabelled or labelled with other classes than the model's (agreement is all we can say)."""
    if heldout.labels is None:
        return None
    labels = np.asarray(heldout.labels)
    if model_classes and heldout.classes:
        index = {c: i for i, c in enumerate(model_classes)}
        if not set(heldout.classes) <= set(index):
            return None
        labels = np.asarray([index[heldout.classes[t]] for t in heldout.labels])
    return labels


class Int8Gate:
    """The held-out check as a gate: an int8 file passes unless it loses more than `max_drop` accuracy points
    against fp32 (always, on unlabelled images). fp32 runs once; each int8 file is checked once."""

    def __init__(self, fp32_path: str | Path, heldout: LabelledImages, model_classes: list[str] | None = None,
                 max_drop: float = float("inf"), threads: int = 1):
        if not len(heldout):
            raise CalibrationError("no held-out images to check the int8 model on")
        self.images, self.max_drop, self.threads = heldout.images, max_drop, threads
        self.labels = _labels(heldout, model_classes)
        self.reference = predictions(fp32_path, self.images, threads)
        self.checks: dict[Path, Int8Check] = {}

    def check(self, path: str | Path) -> Int8Check:
        path = Path(path)
        if path not in self.checks:
            b = predictions(path, self.images, self.threads)
            check = Int8Check(len(b), float((self.reference == b).mean()))
            if self.labels is not None:
                check.fp32_accuracy = float((self.reference == self.labels).mean())
                check.int8_accuracy = float((b == self.labels).mean())
            self.checks[path] = check
        return self.checks[path]

    def drop(self, path: str | Path) -> float:
        """Accuracy points lost (0 when unlabelled)."""
        return self.check(path).drop

    def __call__(self, path: str | Path) -> bool:
        return self.drop(path) <= self.max_drop


def check_int8(fp32_path: str | Path, int8_path: str | Path, heldout: LabelledImages,
               model_classes: list[str] | None = None, threads: int = 1) -> Int8Check:
    """Top-1 agreement of int8 with fp32, and both accuracies when the held-out images are labelled with
    the model's classes (labels are mapped by class name when the model knows its class names)."""
    return Int8Gate(fp32_path, heldout, model_classes, threads=threads).check(int8_path)


def export_int8(fp32_path: str | Path, calib_images: list, out_path: str | Path, gate: Int8Gate, *,
                select_images: list | None = None, **options) -> tuple[QuantConfig, Int8Check]:
    """`quantize_int8` with `gate` (the held-out check, which decides whether a precision plan is needed),
    then the held-out check of the written file. Raises nothing on a failed gate: see `enforce_gate`."""
    config = quantize_int8(fp32_path, calib_images, out_path, select_images=select_images, gate=gate, **options)
    return config, gate.check(out_path)


def enforce_gate(gate: Int8Gate, path: str | Path, plan: dict | None = None) -> None:
    """Raise Int8GateError (one line) when the file at `path` fails `gate`, naming the layers the precision
    plan kept float without saving it and the most sensitive ones."""
    if gate(path):
        return
    text = f"int8 loses {gate.drop(path):.2f} accuracy points (> --max-drop {gate.max_drop})"
    if plan and plan.get("reachable") is False:
        text += "; no precision plan can pass it: the fp32 file itself does not"
    elif plan and plan.get("probed"):
        kept = ", ".join(plan.get("modules") or plan["tried"]) or "none that helped"
        worst = ", ".join(f"{k} +{v:.1%}" for k, v in list(plan["sensitivity"].items())[:5]) or "none"
        text += (f"; the precision plan could not save it: float layers tried {kept} (cap {plan['cap']} of "
                 f"{plan['probed']} probed; agreement gained kept alone float: {worst})")
    raise Int8GateError(text + "; keep more early layers in float (--boundary N), train longer (a briefly trained "
                        "model's small margins flip under int8 rounding), or fine-tune with the rounding simulated: "
                        "rubik train --model M --data D --init RUN_DIR --qat --epochs 2 --lr 2e-4")


def ort_activation_note(model) -> str | None:
    """For a model with SiLU or sigmoid gates, why its ONNX Runtime int8 saves only the convolutions' share
    and what to do about it (a line ending in a newline); None for other models."""
    import torch

    if not any(isinstance(m, torch.nn.SiLU | torch.nn.Sigmoid) for m in model.modules()):
        return None
    return ("note: ONNX Runtime runs an int8 SiLU or sigmoid gate as QLinearSigmoid + QLinearMul, slower than "
            "float's fused SiLU, so int8 here starts where the timed boundary puts it; for the int8 speed of "
            "this model, export --format executorch (XNNPACK runs SiLU and gates in int8), or for ONNX Runtime "
            "choose a ReLU6 model without squeeze-excite: efficientnet_lite0, or rubik twist --base "
            "efficientnet_lite0 (tinynet_lite_a..e)\n")

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
- MinMax calibration on real images, `calib_n` of them (default 256).
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RubikError
from .export import open_session
from .images import LabelledImages
from .runtime import META_PRECISION, META_PREPROCESS, Preprocess

META_INT8 = "rubik.int8"  # JSON: how the file was quantized (QuantConfig)


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


class CalibrationError(RubikError):
    """Calibration that cannot run: no images, or images the model cannot take."""


def _inputs(session, pre: Preprocess, images: list, batch: int = 16):
    """Preprocessed batches sized for the session's (static or dynamic) batch dimension."""
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else batch
    for i in range(0, len(images) - (len(images) % step if isinstance(fixed, int) else 0), step):
        yield pre(images[i:i + step])


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


def _split_join(graph) -> int | None:
    """Index of the node after the Concat that joins a split GhostNet's parts (`layout.SplitGhostNet`:
    a Concat of Slices), or None. Int8 starting there leaves every split block in float, where the split
    pays; starting inside, each part's sum becomes a QLinearAdd in plain NCHW with transposes around it."""
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    for i, node in enumerate(graph.node):
        if node.op_type == "Concat" and len(node.input) > 1 and all(made_by.get(t) == "Slice" for t in node.input):
            return i + 1
    return None


def candidate_boundaries(graph, max_candidates: int = 8) -> list[int]:
    """Where int8 may start: after the stem, at one of the depthwise convs in the first half of the network,
    or (a split GhostNet) where its float-layout parts are joined.

    Starting at a depthwise conv keeps each block's expansion and depthwise in the same precision.
    """
    kinds = _node_kinds(graph)
    stem = max((i for i, k in enumerate(kinds) if k == "stem"), default=-1)
    dws = [i for i, k in enumerate(kinds) if k == "dw"]
    picks = [stem + 1]
    for j in (1, 2, 4, 6, 9, 12, 16, 20):  # denser early, where the thin high-resolution layers are
        if j < 0.6 * len(dws) and len(picks) < max_candidates:
            # back up to the block's expansion conv so the whole block switches precision together
            start = dws[j]
            while start > stem + 1 and kinds[start - 1] not in ("Add", "Concat", "dw"):
                start -= 1
            picks.append(start)
    join = _split_join(graph)
    if join is not None and max_candidates > 1:
        picks.append(join)
    return sorted(set(picks))


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


def _time_sessions(paths: dict[str, Path], x: np.ndarray, threads: int, rounds: int) -> dict[str, float]:
    """Median latency in ms of each file, runs interleaved so a busy machine slows all of them alike."""
    sessions = {k: open_session(p, threads) for k, p in paths.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(5):
            s.run(None, {name: x})
    for _ in range(rounds):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {name: x})
            times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def quantize_int8(fp32_path: str | Path, calib_images: list, out_path: str | Path, *, calib_n: int = 256,
                  boundary: int | str = "auto", method: str = "auto", threads: int = 1,
                  tune_rounds: int = 30, select_images: list | None = None, slack: float = 0.005,
                  log=print) -> QuantConfig:
    """Quantize an exported fp32 ONNX file to int8 with real calibration images; returns what it did.

    `calib_images`: paths, PIL images or HxWx3 uint8 arrays (the first `calib_n` are used);
    `boundary`: "auto" (time candidates here), "all" (everything but the stem), or a node index;
    `method`: "minmax", "percentile", "entropy", or "auto": with `select_images`, whichever of MinMax and
    Percentile agrees better with fp32 (MinMax without);
    `select_images`: images (not the calibration ones) on which "auto" measures each candidate's top-1
    agreement with fp32; candidates more than `slack` below the best agreement are not considered.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    images = list(calib_images[:calib_n])
    if not images:
        raise CalibrationError("no calibration images: pass a folder of images from the training distribution "
                               "(--calib DIR) or 'digits'")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods and method != "auto":
        raise RubikError(f"unknown calibration method {method!r}; choose auto or one of {sorted(methods)}")
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
        common = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                      per_channel=True, reduce_range=False, extra_options={"WeightSymmetric": True})

        done: dict[tuple[int, str], Path] = {}

        def quantize(start: int, how: str) -> Path:
            if (start, how) in done:
                return done[start, how]
            path = tmp / f"int8_{how}_{start}.onnx"
            cache = tmp / f"calibration-{how}.json"  # one calibration pass per method serves every boundary
            reader = None if cache.exists() else _reader(session, pre, images)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                    quantize_static(str(pre_path), str(path), reader, nodes_to_quantize=names[start:],
                                    calibrate_method=methods[how], calibration_cache_path=str(cache), **common)
            except (ValueError, RuntimeError) as e:
                raise CalibrationError(f"calibration failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                                       "check that the images are readable RGB pictures") from None
            model = onnx.load(str(path))
            float_outputs(model.graph)
            onnx.save(model, str(path))
            done[start, how] = path
            return path

        if boundary == "auto":
            starts = candidate_boundaries(graph)
        elif boundary == "all":
            starts = candidate_boundaries(graph, max_candidates=1)
        else:
            starts = [int(boundary)]
        reference = predictions(fp32_path, select_images, threads) if select_images else None
        agreed: dict[Path, float] = {}

        def agreement_of(path: Path) -> float:
            if path not in agreed:
                agreed[path] = float((predictions(path, select_images, threads) == reference).mean())
            return agreed[path]

        method_agreement: dict[str, float] = {}
        if method == "auto":
            # Percentile clipping helps where a few images drive activations far out (briefly trained
            # models), MinMax where the tails carry signal: measure, on the most-quantized candidate.
            method = "minmax"
            if select_images:
                method_agreement = {how: agreement_of(quantize(starts[0], how)) for how in ("minmax", "percentile")}
                method = max(method_agreement, key=lambda k: (method_agreement[k], k == "minmax"))
                log("int8 calibration: " + ", ".join(f"{k} {v:.1%}" for k, v in method_agreement.items())
                    + f" top-1 agreement with fp32 -> {method}")
        paths = {str(s): quantize(s, method) for s in starts}
        tuned: dict[str, float] = {}
        agreement: dict[str, float] = {}
        if len(paths) > 1:
            if select_images:
                agreement = {k: agreement_of(p) for k, p in paths.items()}
                paths = {k: p for k, p in paths.items() if agreement[k] >= max(agreement.values()) - slack}
            tuned = _time_sessions(paths, next(_inputs(session, pre, images[:1] * 16)), threads, tune_rounds)
            best = min(tuned.values())
            # Within 3% of the fastest, keep more layers in float: same speed, less rounding.
            start = max(int(k) for k, v in tuned.items() if v <= best * 1.03)
            cells = [f"{k}: " + (f"{tuned[k]:.2f} ms" if k in tuned else "not timed")
                     + (f", {agreement[k]:.1%} agree" if agreement else "") for k in agreement or tuned]
            against = f"; top-1 agreement with fp32 on {len(select_images)} images not used for calibration" \
                if agreement else ""
            log(f"int8 precision boundary by first quantized node (median ms{against}): " + "; ".join(cells)
                + f" -> {start}")
        else:
            start = starts[0]
        model = onnx.load(paths[str(start)])

    config = QuantConfig(calibration=method, calibration_agreement=method_agreement, calib_images=len(images),
                         boundary=start, float_nodes=start, nodes=len(names), tuned=tuned, agreement=agreement,
                         selection_images=len(select_images) if agreement else 0)
    props = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    props.update({META_PRECISION: "int8", META_INT8: json.dumps(asdict(config))})
    del model.metadata_props[:]
    for k, v in props.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
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

    def __str__(self) -> str:
        text = f"int8 vs fp32 on {self.n} held-out images: top-1 agreement {self.top1_agreement:.1%}"
        if self.accuracy_delta is not None:
            text += (f", accuracy {self.fp32_accuracy:.2%} -> {self.int8_accuracy:.2%} "
                     f"({100 * self.accuracy_delta:+.2f} points)")
        return text


def predictions(path: str | Path, images: list, threads: int = 1) -> np.ndarray:
    """Arg-max class of each image under a file's own preprocessing."""
    session = open_session(path, threads)
    pre = Preprocess.from_json(session.get_modelmeta().custom_metadata_map[META_PREPROCESS])
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else 32
    out = [session.run(None, {name: pre(images[i:i + step])})[0].argmax(1) for i in range(0, len(images), step)]
    return np.concatenate(out)


def check_int8(fp32_path: str | Path, int8_path: str | Path, heldout: LabelledImages,
               model_classes: list[str] | None = None, threads: int = 1) -> Int8Check:
    """Top-1 agreement of int8 with fp32, and both accuracies when the held-out images are labelled with
    the model's classes (labels are mapped by class name when the model knows its class names)."""
    if not len(heldout):
        raise CalibrationError("no held-out images to check the int8 model on")
    a = predictions(fp32_path, heldout.images, threads)
    b = predictions(int8_path, heldout.images, threads)
    check = Int8Check(len(a), float((a == b).mean()))
    if heldout.labels is not None:
        labels = np.asarray(heldout.labels)
        if model_classes and heldout.classes:
            index = {c: i for i, c in enumerate(model_classes)}
            if not set(heldout.classes) <= set(index):
                return check  # other classes than the model's: agreement is all we can say
            labels = np.asarray([index[heldout.classes[t]] for t in heldout.labels])
        check.fp32_accuracy = float((a == labels).mean())
        check.int8_accuracy = float((b == labels).mean())
    return check

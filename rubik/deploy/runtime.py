"""Run an exported model with numpy and its runtime only (Pillow to decode image files).

This file never imports the rest of rubik: copy it beside the model onto a device and
`from runtime import Classifier`. An `.onnx` file needs only onnxruntime (no torch); an ExecuTorch
`.pte` file needs the `executorch` package, whose Python runtime itself loads torch (its bindings
link against torch's libraries) but none of rubik's training dependencies. The preprocessing (input
size, resize, crop, mean/std) and the class names travel in the ONNX file's metadata, or for a .pte
in `model.pte.json` beside it, both written by `rubik export`:

    clf = Classifier("model.int8.onnx")   # or Classifier("model.int8.pte")
    clf.topk("cat.jpg", k=3)   # [("cat", 0.91), ("dog", 0.05), ("deer", 0.01)]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Keys of the ONNX metadata_props that `rubik export` writes.
META_PREPROCESS = "rubik.preprocess"  # JSON: resolution, crop_pct, interpolation, mean, std, layout
META_CLASSES = "rubik.classes"  # JSON list of class names (absent when unknown)
META_MODEL = "rubik.model"  # JSON model spec, for the record
META_PRECISION = "rubik.precision"  # "fp32" or "int8"
META_MACS = "rubik.macs"  # multiply-accumulates of one image through the model (absent in files before 2026-12)
SIDECAR_SUFFIX = ".json"  # model.pte -> model.pte.json: the same entries, for formats with no metadata of their own


def sidecar_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


class RuntimeModelError(ValueError):
    """A model file that cannot be loaded or lacks rubik's metadata (a one-line, user-facing message)."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: resize the short side to resolution / crop_pct, centre-crop,
    scale to [0, 1], subtract mean and divide by std, channels first."""

    resolution: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_json(self) -> str:
        return json.dumps({"resolution": self.resolution, "crop_pct": self.crop_pct,
                           "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std),
                           "layout": "NCHW", "scale": "1/255"})

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        d = json.loads(text)
        return cls(int(d["resolution"]), float(d["crop_pct"]), d["interpolation"], tuple(d["mean"]), tuple(d["std"]))

    def crop(self, image: Any) -> np.ndarray:
        """A PIL image, a file path or an HxWx3 uint8 array -> the resized, centre-cropped HxWx3 uint8 array."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            with Image.open(image) as f:
                image = f.convert("RGB")
        elif isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an HxWx3 uint8 image array, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        else:
            image = image.convert("RGB")
        # Same arithmetic as torchvision's Resize(floor(r / crop_pct)) + CenterCrop(r) used in evaluation.
        short = math.floor(self.resolution / self.crop_pct)
        w, h = image.size
        if w <= h:
            size = (short, int(short * h / w))
        else:
            size = (int(short * w / h), short)
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        image = image.resize(size, resample)
        left = int(round((size[0] - self.resolution) / 2.0))
        top = int(round((size[1] - self.resolution) / 2.0))
        return np.asarray(image.crop((left, top, left + self.resolution, top + self.resolution)))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """NxHxWx3 (or HxWx3) uint8 -> Nx3xHxW float32, normalised."""
        x = pixels.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3) if x.ndim == 4 else np.moveaxis(x, -1, 0)[None])

    def __call__(self, images: Any) -> np.ndarray:
        """One image or a list of them -> a batch Nx3xRxR float32."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.normalise(np.stack([self.crop(im) for im in images]))


def session_options(threads: int = 1, optimized_path: str | None = None):
    """ORT settings for small-model CPU latency: every graph optimisation (BN folding, Conv+activation
    fusion, NCHWc / NHWC int8 layouts), `threads` intra-op threads, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # ORT's own warnings (unused initialisers, ...) are not the user's business
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def open_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session, or a one-line error naming the file and what is wrong with it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RuntimeModelError(f"model file {path} does not exist; export one with `rubik export`")
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...) for a bad file
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise RuntimeModelError(f"model file {path} is not a valid ONNX model ({first}); it may be truncated or "
                                "corrupt: export it again") from None


def run_batched(run, x: np.ndarray, fixed_batch: int | None, step: int = 32) -> np.ndarray:
    """The one batched runner: `run` on Nx... input in slices a static-batch model accepts (its fixed
    batch) or of `step` rows, outputs concatenated."""
    size = fixed_batch or step
    if x.shape[0] == size or (fixed_batch is None and x.shape[0] <= step):
        return run(x)
    if fixed_batch is not None and x.shape[0] % fixed_batch:
        raise ValueError(f"a batch of {x.shape[0]} does not split into the model's fixed batch of {fixed_batch}")
    return np.concatenate([run(x[i:i + size]) for i in range(0, x.shape[0], size)])


class OnnxModel:
    """An .onnx file in ONNX Runtime: `run(x)` -> first output, `metadata`, `fixed_batch`."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.session = open_session(path, threads)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_name = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output (a detector has several)."""
        return self.session.run(None, {self.input_name: x})

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]


def _pin_xnnpack_threads(threads: int) -> bool:
    """Set ExecuTorch's process-wide XNNPACK thread pool to `threads` (like ORT's intra-op threads); True when it
    changed. Only after a program has been loaded (a reset before crashed the process), and only once per thread
    count: a program loaded before a reset must be loaded again (its delegate holds the old pool)."""
    try:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool
    except ImportError:
        return False
    if _threadpool_get_thread_count() == threads:
        return False
    _unsafe_reset_threadpool(threads)
    return True


class ExecuTorchModel:
    """A .pte file in ExecuTorch's Python runtime (XNNPACK kernels where the file delegates to them);
    metadata from the JSON file beside it. The file's input shape is static."""

    def __init__(self, path: str | Path, threads: int = 1):
        path = Path(path)
        if not path.is_file():
            raise RuntimeModelError(f"model file {path} does not exist; export one with `rubik export --format "
                                    "executorch`")
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise RuntimeModelError(f"{path} is an ExecuTorch file: pip install executorch (the `phone` extra) "
                                    "to run it") from None
        meta = sidecar_path(path)
        self.metadata = json.loads(meta.read_text()) if meta.is_file() else {}
        try:
            self.method = Runtime.get().load_program(path).load_method("forward")
        except Exception as e:  # ExecuTorch raises RuntimeError/ValueError with a code for a bad file
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise RuntimeModelError(f"model file {path} is not a valid ExecuTorch program ({first}); it may be "
                                    "truncated or corrupt: export it again") from None
        self.threads = threads
        if _pin_xnnpack_threads(threads):  # programs loaded before a reset keep the old pool: load again
            self.method = Runtime.get().load_program(path).load_method("forward")
        shape = self.metadata.get("rubik.input_shape")
        self.fixed_batch = json.loads(shape)[0] if shape else 1

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output (a detector has several)."""
        import torch  # ExecuTorch's bindings take torch tensors (the package depends on torch)

        return [t.numpy() for t in self.method.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]


def open_model(path: str | Path, threads: int = 1):
    """The runtime adapter for a file: OnnxModel for .onnx, ExecuTorchModel for .pte."""
    kinds = {".onnx": OnnxModel, ".pte": ExecuTorchModel}
    kind = kinds.get(Path(path).suffix)
    if kind is None:
        raise RuntimeModelError(f"{path}: unknown model file type {Path(path).suffix!r}; rubik runs "
                                f"{' and '.join(kinds)} files")
    return kind(path, threads)


class Classifier:
    """An exported image classifier (.onnx or .pte): preprocessing from the file's metadata, logits, top-k."""

    def __init__(self, path: str | Path, threads: int = 1):
        self.path = Path(path)
        self.model = open_model(self.path, threads)
        meta = self.model.metadata
        if META_PREPROCESS not in meta:
            raise RuntimeModelError(f"model file {self.path} has no rubik preprocessing metadata; export it with "
                                    "`rubik export` (or pass preprocess=Preprocess(...) yourself)")
        self.preprocess = Preprocess.from_json(meta[META_PREPROCESS])
        self.classes: list[str] | None = json.loads(meta[META_CLASSES]) if META_CLASSES in meta else None
        self.precision = meta.get(META_PRECISION, "fp32")
        self.fixed_batch = self.model.fixed_batch

    @property
    def session(self):
        """The ONNX Runtime session of an .onnx file."""
        return self.model.session

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Nx3xRxR float32 (already preprocessed) -> NxK logits; runs a static-batch file slice by slice."""
        return run_batched(self.model.run, np.ascontiguousarray(batch, dtype=np.float32), self.fixed_batch)

    def predict(self, images: list, chunk: int = 64) -> np.ndarray:
        """Arg-max class of each image (preprocessed `chunk` at a time, so memory stays flat)."""
        if not len(images):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.logits(self.preprocess(list(images[i:i + chunk]))).argmax(1)
                               for i in range(0, len(images), chunk)])

    def probabilities(self, images: Any) -> np.ndarray:
        z = self.logits(self.preprocess(images))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def topk(self, image: Any, k: int = 5) -> list[tuple[str, float]]:
        """The k most likely classes of one image (a path, a PIL image or an HxWx3 uint8 array)."""
        p = self.probabilities(image)[0]
        order = np.argsort(-p)[:k]
        names = self.classes or [str(i) for i in range(len(p))]
        return [(names[i], float(p[i])) for i in order]


META_DETECTOR = "rubik.detector"  # JSON: SSD decoding and NMS settings, default boxes (rubik.detect.export)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision.ops.nms's rule: drop boxes with IoU > iou); kept indices."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter + 1e-12) <= iou]
    return np.asarray(keep, dtype=np.int64)


class Detector:
    """An exported SSDLite detector (`rubik export` of a detector run, .onnx or .pte): numpy + its runtime (+ Pillow
    for files).

    The graph computes the backbone and head (raw box offsets and class logits per default box); decoding
    and per-class NMS run here in numpy, with torchvision SSD's rules and the settings in the file's metadata:

        det = Detector("det.onnx")   # or Detector("det.pte")
        det.detect("street.jpg")   # [{"box": [x1, y1, x2, y2], "score": 0.91, "label": 3, "class": "car"}, ...]

    Boxes are in the pixels of the image passed in (it is resized to the model's square input, as in training).
    """

    def __init__(self, path: str | Path, threads: int = 1):
        import base64

        self.path = Path(path)
        self.model = open_model(self.path, threads)
        meta = self.model.metadata
        if META_DETECTOR not in meta or META_PREPROCESS not in meta:
            raise RuntimeModelError(f"model file {self.path} is not a rubik detector (no {META_DETECTOR} metadata); "
                                    "export a detector run with `rubik export --weights RUN -o det.onnx`")
        self.preprocess = Preprocess.from_json(meta[META_PREPROCESS])
        d = json.loads(meta[META_DETECTOR])
        self.settings = d
        self.anchors = np.frombuffer(base64.b64decode(d["anchors"]), dtype="<f4").reshape(-1, 4).astype(np.float32)
        self.classes: list[str] | None = json.loads(meta[META_CLASSES]) if META_CLASSES in meta else None
        self.precision = meta.get(META_PRECISION, "fp32")

    def resize(self, image: Any) -> tuple[np.ndarray, tuple[int, int]]:
        """Image -> (RxRx3 uint8, original (width, height)): a plain resize (no crop), Pillow bilinear."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            with Image.open(image) as f:
                image = f.convert("RGB")
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2))
        else:
            image = image.convert("RGB")
        r = self.preprocess.resolution
        return np.asarray(image.resize((r, r), Image.Resampling.BILINEAR)), image.size

    def raw(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """1x3xRxR preprocessed input -> (box offsets A x 4, class logits A x (K + 1)) of its one image."""
        regression, logits = self.model.run_all(np.ascontiguousarray(x, dtype=np.float32))
        return regression[0], logits[0]

    def decode(self, regression: np.ndarray, logits: np.ndarray, size: tuple[int, int],
               min_score: float | None = None) -> list[dict[str, Any]]:
        """torchvision SSD's postprocess in numpy: decode, softmax, per-class threshold and top-k, NMS, scale."""
        s = self.settings
        wx, wy, ww, wh = s["box_weights"]
        a = self.anchors
        aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        ax, ay = a[:, 0] + 0.5 * aw, a[:, 1] + 0.5 * ah
        dw = np.minimum(regression[:, 2] / ww, s["bbox_xform_clip"])
        dh = np.minimum(regression[:, 3] / wh, s["bbox_xform_clip"])
        cx, cy = regression[:, 0] / wx * aw + ax, regression[:, 1] / wy * ah + ay
        w, h = np.exp(dw) * aw, np.exp(dh) * ah
        r = float(self.preprocess.resolution)
        boxes = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 1).clip(0, r)
        z = np.exp(logits - logits.max(1, keepdims=True))
        scores = z / z.sum(1, keepdims=True)
        threshold = s["score_thresh"] if min_score is None else max(min_score, s["score_thresh"])
        all_boxes, all_scores, all_labels = [], [], []
        for label in range(1, scores.shape[1]):
            sc = scores[:, label]
            idx = np.nonzero(sc > threshold)[0]
            idx = idx[np.argsort(-sc[idx], kind="stable")[: s["topk_candidates"]]]
            all_boxes.append(boxes[idx])
            all_scores.append(sc[idx])
            all_labels.append(np.full(len(idx), label))
        boxes, scores, labels = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_labels)
        # Per-class NMS as torchvision's batched_nms: offset each class's boxes so classes never overlap.
        offset = labels[:, None] * (r + 1.0)
        keep = _nms(boxes + offset, scores, s["nms_thresh"])[: s["detections_per_img"]]
        sx, sy = size[0] / r, size[1] / r
        out = []
        for i in keep:
            x1, y1, x2, y2 = boxes[i]
            label = int(labels[i])
            out.append({"box": [float(x1 * sx), float(y1 * sy), float(x2 * sx), float(y2 * sy)],
                        "score": float(scores[i]), "label": label,
                        "class": self.classes[label - 1] if self.classes else str(label)})
        return out

    def detect(self, image: Any, min_score: float | None = None) -> list[dict[str, Any]]:
        """Boxes of one image (a path, a PIL image or an HxWx3 uint8 array), best first, in its own pixels."""
        pixels, size = self.resize(image)
        return self.decode(*self.raw(self.preprocess.normalise(pixels)), size, min_score)
